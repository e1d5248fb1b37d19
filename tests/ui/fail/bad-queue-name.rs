use queue_runtime::{TaskError, task};

#[task(queue = "mail queue")]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
