//! Unique keys compare byte for byte: no padding, case or Unicode folding.

use std::collections::HashSet;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use queue_runtime::{Client, Error, JobId, TaskError, task};

use crate::setup;

#[task(queue = "keys", name = "tests.keys.echo")]
async fn echo(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

/// A task whose name is as long as names go (255 characters) and four bytes
/// a character, so that its stored keys are as long as they get.
#[task(
    queue = "keys",
    name = "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀"
)]
async fn longest(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

const ECHO: &str = "tests.keys.echo";

/// The stored bytes of a job's unique key.
async fn stored_key(client: &Client, id: JobId) -> Vec<u8> {
    sqlx::query_scalar("SELECT CAST(unique_key AS BINARY) FROM queue_jobs WHERE id = ?")
        .bind(id.0)
        .fetch_one(client.pool())
        .await
        .unwrap()
}

fn expected_key(task: &str, key: &str) -> Vec<u8> {
    format!("{task}\u{1f}{key}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_differ_in_any_byte_are_different_jobs() {
    let (db, client) = setup().await;
    let keys = [
        "k",
        "k ",
        "k  ",
        "k\t",
        " k",
        "K",
        "k\u{0}",
        "k\u{a0}",
        "\u{e9}",
        "e\u{301}",
        "\u{1f600}",
        "\u{1f601}",
    ];
    let mut ids = Vec::new();
    for (n, key) in (0_u32..).zip(keys) {
        let id = echo::with(n)
            .unique_key(key)
            .enqueue(&client)
            .await
            .unwrap();
        let job = client.job(id).await.unwrap().expect("the job");
        assert_eq!(
            job.payload,
            n.to_string(),
            "key {key:?} got another key's job"
        );
        assert_eq!(stored_key(&client, id).await, expected_key(ECHO, key));
        ids.push(id);
    }
    let distinct: HashSet<JobId> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:?} -> {ids:?}");
    assert_eq!(
        client.stats().await.unwrap().total.total(),
        keys.len() as u64
    );
    // The same key again: the pending job, not a new one.
    for ((n, key), id) in (100_u32..).zip(keys).zip(&ids) {
        let again = echo::with(n)
            .unique_key(key)
            .enqueue(&client)
            .await
            .unwrap();
        assert_eq!(again, *id, "key {key:?}");
    }
    assert_eq!(
        client.stats().await.unwrap().total.total(),
        keys.len() as u64
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lengths_are_checked_in_characters() {
    let (db, client) = setup().await;
    let task = "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀";
    // 191 four-byte characters after a 255-character, four-byte task name:
    // the longest stored key there is (1,785 bytes).
    for key in [
        "x".repeat(191),
        "\u{1f600}".repeat(191),
        "\u{e9}".repeat(191),
    ] {
        let id = longest::with(1)
            .unique_key(key.clone())
            .enqueue(&client)
            .await
            .unwrap();
        assert_eq!(stored_key(&client, id).await, expected_key(task, &key));
        let again = longest::with(2)
            .unique_key(key.clone())
            .enqueue(&client)
            .await
            .unwrap();
        assert_eq!(again, id);
    }
    for key in [String::new(), "x".repeat(192), "\u{1f600}".repeat(192)] {
        let err = echo::with(1)
            .unique_key(key.clone())
            .enqueue(&client)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{key:?}: {err}");
    }
    assert_eq!(client.stats().await.unwrap().total.total(), 3);
    db.drop_db().await;
}

#[test]
fn any_key_is_stored_and_matched_exactly() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, client) = rt.block_on(setup());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let keys = proptest::collection::vec(any::<char>(), 1..=191)
        .prop_map(|chars| chars.into_iter().collect::<String>());
    let result = runner.run(&keys, |key| {
        rt.block_on(async {
            let id = echo::with(1)
                .unique_key(key.clone())
                .enqueue(&client)
                .await
                .unwrap();
            prop_assert_eq!(stored_key(&client, id).await, expected_key(ECHO, &key));
            let again = echo::with(2)
                .unique_key(key.clone())
                .enqueue(&client)
                .await
                .unwrap();
            prop_assert_eq!(again, id);
            if key.chars().count() < 191 {
                let padded = format!("{key} ");
                let other = echo::with(3)
                    .unique_key(padded.clone())
                    .enqueue(&client)
                    .await
                    .unwrap();
                prop_assert_ne!(other, id, "{:?} and {:?} share a job", key, padded);
                prop_assert_eq!(
                    stored_key(&client, other).await,
                    expected_key(ECHO, &padded)
                );
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(db.drop_db());
}
