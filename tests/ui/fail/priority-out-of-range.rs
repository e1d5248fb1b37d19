use queue_runtime::{TaskError, task};

#[task(priority = 7)]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
