use queue_runtime::{TaskError, task};

struct Mailer;

impl Mailer {
    #[task]
    async fn send(&self) -> Result<(), TaskError> {
        Ok(())
    }
}

fn main() {
    let _ = Mailer;
}
