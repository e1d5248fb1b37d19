use queue_runtime::{TaskError, task};

#[task(cron = "0 0 * * * *", tz = "Mars/Olympus_Mons")]
async fn tick() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
