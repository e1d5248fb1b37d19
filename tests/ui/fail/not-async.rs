use queue_runtime::{TaskError, task};

#[task]
fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
