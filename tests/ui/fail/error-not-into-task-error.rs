use queue_runtime::{TaskError, task};

struct NotAnError;

#[task]
async fn send() -> Result<(), NotAnError> {
    Err(NotAnError)
}

fn main() {
    let _: Option<TaskError> = None;
}
