use queue_runtime::{TaskError, task};

#[task]
async fn send<T: serde::Serialize>(payload: T) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
