use queue_runtime::{TaskError, task};

#[task(backoff = "exponential(10m, 1s)")]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
