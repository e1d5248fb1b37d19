use queue_runtime::{TaskError, task};

#[task(tz = "Europe/Berlin")]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
