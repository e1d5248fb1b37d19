use queue_runtime::{TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Email {
    to: String,
}

#[task]
async fn send(ctx: &TaskContext, email: Email) -> Result<(), TaskError> {
    let _ = (ctx.attempt(), email.to);
    Ok(())
}

fn main() {}
