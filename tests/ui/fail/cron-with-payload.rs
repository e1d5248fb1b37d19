use queue_runtime::{TaskContext, TaskError, task};

#[task(cron = "0 0 * * * *")]
async fn tick(_ctx: TaskContext, n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

fn main() {}
