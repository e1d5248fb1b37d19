use queue_runtime::{TaskError, task};

struct Opaque;

#[derive(serde::Serialize, serde::Deserialize)]
struct Mail {
    domain: String,
}

// The key closure takes the wrong type, and another returns a value that
// cannot be shown as text: both reported at the closure.
#[task(concurrency = 1, concurrency_key = |m: &String| m.len())]
async fn wrong_input(m: Mail) -> Result<(), TaskError> {
    let _ = m.domain;
    Ok(())
}

#[task(rate = "10/1s", rate_key = |m: &Mail| { let _ = m; Opaque })]
async fn not_display(m: Mail) -> Result<(), TaskError> {
    let _ = m.domain;
    Ok(())
}

fn main() {}
