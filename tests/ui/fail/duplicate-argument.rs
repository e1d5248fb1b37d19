use queue_runtime::{TaskError, task};

#[task(priority = 1, retries = 2, priority = 3)]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
