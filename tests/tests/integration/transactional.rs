//! Enqueue inside the caller's transaction: the job exists only if the
//! transaction commits.

use std::sync::Mutex;
use std::time::Duration;

use queue_runtime::{TaskError, task};
use queue_tests::wait_until;

use crate::{setup, start_runtime};

static RAN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task(queue = "txq", name = "tests.tx.confirm")]
async fn confirm_order(order: u32) -> Result<(), TaskError> {
    RAN.lock().unwrap().push(order);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_in_a_transaction_exists_only_if_it_commits() {
    let (db, client) = setup().await;
    sqlx::query("CREATE TABLE orders (id INT UNSIGNED PRIMARY KEY)")
        .execute(client.pool())
        .await
        .unwrap();
    let runtime = start_runtime(&client, "txq").await;

    // Committed: the order and its jobs appear together.
    let mut tx = client.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let committed = confirm_order::with(1)
        .enqueue_in(&client, &mut tx)
        .await
        .unwrap();
    let many = confirm_order::enqueue_many_in(&client, &mut tx, [10, 11])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in [committed, many[0], many[1]] {
        assert!(
            client.job(id).await.unwrap().is_none(),
            "job {id} is not visible before the commit"
        );
    }
    assert!(
        RAN.lock().unwrap().is_empty(),
        "nothing ran before the commit"
    );
    tx.commit().await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the committed jobs ran",
        || async { RAN.lock().unwrap().len() == 3 },
    )
    .await;

    // Rolled back: neither the order nor the job exists, and nothing runs.
    let mut tx = client.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled_back = confirm_order::with(2)
        .enqueue_in(&client, &mut tx)
        .await
        .unwrap();
    let many_rolled_back = confirm_order::enqueue_many_in(&client, &mut tx, [20, 21])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // A later committed job runs, so the runtime has looked past the
    // rolled-back one.
    let mut tx = client.pool().begin().await.unwrap();
    confirm_order::with(3)
        .enqueue_in(&client, &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_until(Duration::from_secs(10), "the later job ran", || async {
        RAN.lock().unwrap().contains(&3)
    })
    .await;
    for id in [rolled_back, many_rolled_back[0], many_rolled_back[1]] {
        assert!(client.job(id).await.unwrap().is_none());
    }
    let orders: Vec<u32> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(client.pool())
        .await
        .unwrap();
    assert_eq!(orders, [1]);
    let mut ran = RAN.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, [1, 3, 10, 11], "the rolled-back jobs never ran");
    // The handler pushes before the runtime records the outcome: wait for
    // the acks, so no job is left behind.
    wait_until(Duration::from_secs(10), "every job was acked", || async {
        client.stats().await.unwrap().total.total() == 0
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}
