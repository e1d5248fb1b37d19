// `Err("...".into())` works for a task error; a number does not convert.
use queue_runtime::{TaskError, task};

#[task]
async fn fine(n: u32) -> Result<(), TaskError> {
    if n == 0 {
        return Err("zero".into());
    }
    Err(format!("{n} is not zero").into())
}

#[task]
async fn not_an_error(n: u32) -> Result<(), TaskError> {
    Err(n.into())
}

fn main() {}
