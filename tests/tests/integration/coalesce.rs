//! Coalesced single enqueues: concurrent `enqueue` calls share statements
//! and commits, and each caller still gets its own id and its own error.

use std::collections::HashSet;
use std::time::Duration;

use queue_runtime::{Client, Error, JobId, JobState, TaskError, task};
use serde::{Deserialize, Serialize, Serializer};

use crate::setup;

#[task(queue = "coalesce", name = "tests.coalesce.echo")]
async fn echo(text: String) -> Result<(), TaskError> {
    let _ = text;
    Ok(())
}

/// A payload whose encoding fails when `fail` is set.
#[derive(Deserialize, Debug, Clone)]
struct Picky {
    text: String,
    fail: bool,
}

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.fail {
            return Err(serde::ser::Error::custom("this payload refuses to encode"));
        }
        s.serialize_str(&self.text)
    }
}

#[task(queue = "coalesce", name = "tests.coalesce.picky")]
async fn picky(p: Picky) -> Result<(), TaskError> {
    let _ = p;
    Ok(())
}

/// Payloads that would break naive inlining, and plain ones.
fn tricky(i: usize) -> String {
    match i % 5 {
        0 => format!("plain {i}"),
        1 => format!("quote ' and \" {i}"),
        2 => format!("backslash \\ and \\' {i}"),
        3 => format!("unicode é 日本 🎉 {i}"),
        _ => format!("sql '); DROP TABLE queue_jobs; -- {i}"),
    }
}

async fn claim_rows(client: &Client, ids: &[JobId]) -> usize {
    let list = ids
        .iter()
        .map(|id| id.0.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM queue_ready WHERE job_id IN ({list})"
    )))
    .fetch_one(client.pool())
    .await
    .unwrap();
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_share_commits_and_each_gets_its_own_id() {
    let (db, client) = setup().await;
    let n = 300;
    let mut handles = Vec::new();
    for i in 0..n {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            let text = tricky(i);
            // Every seventh job runs later: it is scheduled, not ready.
            let id = if i % 7 == 0 {
                echo::with(text.clone())
                    .delay(Duration::from_secs(3600))
                    .enqueue(&c)
                    .await
            } else {
                echo::enqueue(&c, text.clone()).await
            };
            (i, text, id.expect("enqueue"))
        }));
    }
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap());
    }
    let ids: HashSet<JobId> = got.iter().map(|g| g.2).collect();
    assert_eq!(ids.len(), n, "every caller got its own id");
    let mut ready = Vec::new();
    for (i, text, id) in &got {
        let job = client.job(*id).await.unwrap().expect("the job exists");
        assert_eq!(
            job.payload,
            serde_json::to_string(text).unwrap(),
            "job {i} holds its payload"
        );
        assert_eq!(job.task, "tests.coalesce.echo");
        if i % 7 == 0 {
            assert_eq!(job.state, JobState::Scheduled, "job {i}");
        } else {
            assert_eq!(job.state, JobState::Ready, "job {i}");
            ready.push(*id);
        }
    }
    assert_eq!(
        claim_rows(&client, &ready).await,
        ready.len(),
        "each ready job has its claim-index row, and only those"
    );
    let all: Vec<JobId> = ids.into_iter().collect();
    assert_eq!(claim_rows(&client, &all).await, ready.len());
    let counts = client.coalesce_counts();
    assert_eq!(counts.jobs, n as u64);
    assert!(
        counts.batches < counts.jobs,
        "300 concurrent calls shared commits: {counts:?}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_callers_bad_payload_fails_only_that_caller() {
    let (db, client) = setup().await;
    // A payload that cannot be encoded fails before it joins a batch.
    let mut handles = Vec::new();
    for i in 0..40 {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            let p = Picky {
                text: format!("p{i}"),
                fail: i == 17,
            };
            (i, picky::enqueue(&c, p).await)
        }));
    }
    for h in handles {
        let (i, r) = h.await.unwrap();
        match (i, r) {
            (17, Err(Error::Encode { task, .. })) => assert_eq!(task, "tests.coalesce.picky"),
            (17, other) => panic!("the bad payload: {other:?}"),
            (i, Ok(id)) => {
                let job = client.job(id).await.unwrap().unwrap();
                assert_eq!(job.payload, format!("\"p{i}\""));
            }
            (i, Err(e)) => panic!("caller {i} failed: {e}"),
        }
    }

    // A payload the server itself rejects (a trigger refuses it) fails the
    // batch it rode in; the batch is inserted again one job at a time, so
    // that only its caller fails.
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON queue_jobs FOR EACH ROW \
         IF NEW.payload = '\"poison\"' THEN \
           SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poison payload'; \
         END IF",
    )
    .execute(client.pool())
    .await
    .unwrap();
    let before = client.coalesce_counts();
    let mut handles = Vec::new();
    for i in 0..60 {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            let text = if i == 33 {
                "poison".to_owned()
            } else {
                tricky(i)
            };
            (i, text.clone(), echo::enqueue(&c, text).await)
        }));
    }
    let mut ids = HashSet::new();
    for h in handles {
        let (i, text, r) = h.await.unwrap();
        match r {
            Err(e) if i == 33 => assert_eq!(e.db_code(), Some(1644), "{e}"),
            Ok(id) if i != 33 => {
                assert!(ids.insert(id), "ids are distinct");
                let job = client.job(id).await.unwrap().unwrap();
                assert_eq!(job.payload, serde_json::to_string(&text).unwrap());
            }
            other => panic!("caller {i}: {other:?}"),
        }
    }
    assert_eq!(ids.len(), 59);
    let after = client.coalesce_counts();
    assert!(
        after.batches - before.batches < 60,
        "the calls were coalesced: {before:?} → {after:?}"
    );
    let poisoned: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM queue_jobs WHERE payload = '\"poison\"'")
            .fetch_one(client.pool())
            .await
            .unwrap();
    assert_eq!(poisoned, 0);
    // A lone poison fails alone too.
    let lone = echo::enqueue(&client, "poison".to_owned()).await;
    let lone = lone.unwrap_err();
    assert_eq!(lone.db_code(), Some(1644), "{lone:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unique_keys_keep_their_meaning_among_coalesced_calls() {
    let (db, client) = setup().await;
    let mut handles = Vec::new();
    for i in 0..40 {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            let r = if i % 2 == 0 {
                echo::with("same".to_owned())
                    .unique_key("k")
                    .enqueue(&c)
                    .await
            } else {
                echo::enqueue(&c, format!("plain {i}")).await
            };
            (i, r.expect("enqueue"))
        }));
    }
    let mut unique = HashSet::new();
    let mut plain = HashSet::new();
    for h in handles {
        let (i, id) = h.await.unwrap();
        if i % 2 == 0 {
            unique.insert(id);
        } else {
            assert!(plain.insert(id));
        }
    }
    assert_eq!(unique.len(), 1, "one pending job for the key: {unique:?}");
    assert_eq!(plain.len(), 20);
    assert!(unique.is_disjoint(&plain));
    // A payload too big to inline takes the prepared path, whole.
    let big = "x".repeat(200_000);
    let id = echo::enqueue(&client, big.clone()).await.unwrap();
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(job.payload.len(), big.len() + 2);
    assert_eq!(claim_rows(&client, &[id]).await, 1);
    db.drop_db().await;
}
