use queue_runtime::{TaskError, task};

#[task(cron = "61 * * * * *")]
async fn tick() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
