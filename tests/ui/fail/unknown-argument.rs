use queue_runtime::{TaskError, task};

#[task(prio = 1)]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
