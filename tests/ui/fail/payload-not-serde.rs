use queue_runtime::{TaskError, task};

struct Email {
    to: String,
}

#[task]
async fn send(email: Email) -> Result<(), TaskError> {
    let _ = email.to;
    Ok(())
}

fn main() {}
