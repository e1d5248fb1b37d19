use queue_runtime::{Client, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Email {
    to: String,
}

#[task]
async fn send(email: Email) -> Result<(), TaskError> {
    let _ = email.to;
    Ok(())
}

async fn enqueue(client: &Client) -> Result<(), queue_runtime::Error> {
    send::enqueue(client, 5u32).await?;
    Ok(())
}

fn main() {
    let _ = enqueue;
}
