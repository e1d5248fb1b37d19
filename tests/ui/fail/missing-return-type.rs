use queue_runtime::task;

#[task]
async fn send(n: u32) {
    let _ = n;
}

fn main() {}
