use queue_runtime::{TaskError, task};

#[task(concurrency = 0, rate = "100")]
async fn zero(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[task(concurrency_key = |n: &u32| *n, rate = "5/1s", rate_key = "domain")]
async fn keys_without_limits(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[task(concurrency = 2, concurrency_key = |n: &u32| *n)]
async fn key_without_payload() -> Result<(), TaskError> {
    Ok(())
}

#[task(cron = "0 * * * * *", rate = "1/1m", rate_key = |n: &u32| *n)]
async fn key_on_cron() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
