//! Measures whether transactions sent as one multi-statement batch commit
//! whole on a Galera cluster (docs/scaling.md, "A BF abort inside a
//! multi-statement batch"):
//!
//! ```text
//! CLUSTER_URLS=mysql://…:3371/queue,mysql://…:3372/queue,mysql://…:3373/queue \
//!     galera-batch-stress [plain|autocommit0|guarded|single] [CLIENTS_PER_NODE] [BATCHES_PER_CLIENT]
//! ```
//!
//! Each client (default 4 per node) runs its batches (default 400) on one
//! connection: in one transaction, `UPDATE` its own row `a`, the row shared
//! by every client (a certification conflict or brute-force abort with the
//! other nodes' clients), then its own row `b`. The modes:
//!
//! - `plain`: `START TRANSACTION; …; COMMIT` (as the runtime sent them before
//!   the guard);
//! - `autocommit0`: the same with `SET autocommit = 0` around it;
//! - `guarded`: the runtime's guarded begin and commit on Galera
//!   (`store::galera`), `ROLLBACK; SET autocommit = 1` after a failure;
//! - `single`: the three rows in one autocommit `UPDATE`.
//!
//! A failed batch is not retried (it counts as failed). At the end, a
//! client whose rows `a` and `b` do not both equal its count of batches
//! that returned OK saw a batch reported committed but rolled back (`a` and
//! `b` below the count), or a failed batch that committed part of itself
//! (`a` and `b` apart, or above the count). Prints the failures by the
//! statement that failed and every such client; exits with 1 if there was
//! one. It makes (and empties) the table `batch_stress` in the URLs'
//! database.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use queue_runtime::__private::galera as guard;
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let urls: Vec<String> = match std::env::var("CLUSTER_URLS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|u| u.trim().to_owned()).collect(),
        _ => {
            eprintln!(
                "set CLUSTER_URLS to the nodes' URLs, comma-separated (scripts/cluster.sh urls)"
            );
            return ExitCode::from(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("guarded", String::as_str).to_owned();
    let per_node: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(4);
    let batches: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(400);
    let (begin, commit, after_error) = match mode.as_str() {
        "plain" => ("START TRANSACTION", "COMMIT", "ROLLBACK"),
        "autocommit0" => (
            "SET autocommit = 0; START TRANSACTION",
            "COMMIT; SET autocommit = 1",
            "ROLLBACK; SET autocommit = 1",
        ),
        "guarded" => (
            guard::GUARDED_BEGIN_RC,
            guard::GUARDED_COMMIT,
            guard::GUARDED_ROLLBACK,
        ),
        "single" => ("", "", ""),
        other => {
            eprintln!("unknown mode {other:?}: plain, autocommit0, guarded or single");
            return ExitCode::from(2);
        }
    };
    let clients = urls.len() * per_node;
    let mut setup = MySqlConnection::connect(&urls[0]).await.expect("connect");
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS batch_stress (id INT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB; \
         DELETE FROM batch_stress",
    )
    .execute(&mut setup)
    .await
    .expect("make batch_stress");
    let rows: Vec<String> = (0..=2 * clients).map(|i| format!("({i}, 0)")).collect();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO batch_stress VALUES {}",
        rows.join(", ")
    )))
    .execute(&mut setup)
    .await
    .expect("fill batch_stress");
    // The rows reach every node before the clients start.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let failed_at: Arc<std::sync::Mutex<std::collections::BTreeMap<(usize, String), u64>>> =
        Arc::default();
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for k in 0..clients {
        let url = urls[k % urls.len()].clone();
        let (ok, failed_at) = (ok.clone(), failed_at.clone());
        let (a, b) = (1 + 2 * k, 2 + 2 * k);
        let sql = if mode == "single" {
            format!("UPDATE batch_stress SET v = v + 1 WHERE id IN ({a}, 0, {b})")
        } else {
            format!(
                "{begin}; UPDATE batch_stress SET v = v + 1 WHERE id = {a}; \
                 UPDATE batch_stress SET v = v + 1 WHERE id = 0; \
                 UPDATE batch_stress SET v = v + 1 WHERE id = {b}; {commit}"
            )
        };
        handles.push(tokio::spawn(async move {
            let mut c = MySqlConnection::connect(&url).await.expect("connect");
            for _ in 0..batches {
                let mut done = 0usize;
                let result = async {
                    let mut results = sqlx::raw_sql(AssertSqlSafe(sql.clone())).fetch_many(&mut c);
                    while let Some(item) = results.try_next().await? {
                        if let sqlx::Either::Left(_) = item {
                            done += 1;
                        }
                    }
                    Ok::<_, sqlx::Error>(())
                }
                .await;
                match result {
                    Ok(()) => {
                        ok[k].fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        let number = match &e {
                            sqlx::Error::Database(d) => d
                                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                                .map_or_else(
                                    || d.message().to_owned(),
                                    |m| {
                                        // The guard's own SIGNAL, or the
                                        // server's (deferred) error.
                                        let by = if m.message().contains("Galera guard") {
                                            " (the guard's SIGNAL)"
                                        } else {
                                            ""
                                        };
                                        format!("{}{by}", m.number())
                                    },
                                ),
                            other => other.to_string(),
                        };
                        *failed_at.lock().unwrap().entry((done, number)).or_default() += 1;
                        if !after_error.is_empty() {
                            sqlx::raw_sql(after_error)
                                .execute(&mut c)
                                .await
                                .expect("roll back");
                        }
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    let took = started.elapsed();
    // Every node applied the last write sets.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let values: Vec<(i32, i64)> = sqlx::query_as("SELECT id, v FROM batch_stress ORDER BY id")
        .fetch_all(&mut setup)
        .await
        .expect("read batch_stress");
    let total_ok: u64 = ok.iter().map(|o| o.load(Ordering::SeqCst)).sum();
    let failed: u64 = failed_at.lock().unwrap().values().sum();
    println!(
        "mode {mode}: {clients} clients on {} nodes, {batches} batches each, in {took:.1?}: \
         {total_ok} OK, {failed} failed; shared row {} (the OK batches: {total_ok})",
        urls.len(),
        values[0].1
    );
    for ((statement, error), n) in failed_at.lock().unwrap().iter() {
        println!("  {n} failed with {error} at statement {statement} (0-based) of the batch");
    }
    let mut wrong = 0;
    for k in 0..clients {
        let n = i64::try_from(ok[k].load(Ordering::SeqCst)).unwrap_or(i64::MAX);
        let (a, b) = (values[1 + 2 * k].1, values[2 + 2 * k].1);
        if a != n || b != n {
            wrong += 1;
            println!("  client {k}: {n} batches OK, but a = {a}, b = {b}");
        }
    }
    println!("clients whose rows disagree with their OK batches: {wrong}");
    if wrong > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
