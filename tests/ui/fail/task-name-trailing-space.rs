use queue_runtime::{TaskError, task};

// The database compares names ignoring trailing spaces: this task would
// share the schedule row of "mail.send".
#[task(name = "mail.send ")]
async fn send() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
