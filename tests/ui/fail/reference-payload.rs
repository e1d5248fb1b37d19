use queue_runtime::{TaskError, task};

#[task]
async fn send(to: &str) -> Result<(), TaskError> {
    let _ = to;
    Ok(())
}

fn main() {}
