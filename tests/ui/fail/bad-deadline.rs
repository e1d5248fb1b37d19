use queue_runtime::{TaskError, task};

#[task(deadline = "30 seconds")]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
