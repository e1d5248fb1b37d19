use queue_runtime::{TaskError, task};

#[task(priority = 9, deadline = "soon", queue = "mail")]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
