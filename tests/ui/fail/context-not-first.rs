use queue_runtime::{TaskContext, TaskError, task};

#[task]
async fn send(n: u32, ctx: TaskContext) -> Result<(), TaskError> {
    let _ = (n, ctx);
    Ok(())
}

fn main() {}
