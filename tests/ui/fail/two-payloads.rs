use queue_runtime::{TaskContext, TaskError, task};

#[task]
async fn send(_ctx: TaskContext, to: String, subject: String) -> Result<(), TaskError> {
    let _ = (to, subject);
    Ok(())
}

fn main() {}
