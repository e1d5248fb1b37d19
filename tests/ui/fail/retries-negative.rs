use queue_runtime::{TaskError, task};

#[task(retries = -1)]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
