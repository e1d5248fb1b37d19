use queue_runtime::{TaskError, task};

#[task(retries = "3")]
async fn quoted() -> Result<(), TaskError> {
    Ok(())
}

#[task(retries = 3.5)]
async fn fractional() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
