use queue_runtime::{TaskError, task};

#[task(cron = "0 * * * * *", overlap = "no")]
async fn tick() -> Result<(), TaskError> {
    Ok(())
}

#[task(overlap = false)]
async fn not_periodic() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
