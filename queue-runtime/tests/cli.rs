//! The `queue` binary, run as a process against a database of its own:
//! every subcommand, its JSON, and its exit codes.

use std::process::{Command, Output};
use std::time::Duration;

use queue_runtime::{Client, Runtime, TaskError, task};
use serde_json::Value;

mod support;
use support::{database, drop_database};

#[task(queue = "cli", name = "tests.cli.job")]
async fn cli_job(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[task(queue = "cli_served", name = "tests.cli.served")]
async fn served(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

/// Runs `queue args…` with `DATABASE_URL` set to `url` (or unset).
fn queue(url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_queue"));
    cmd.args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run the queue binary")
}

/// Runs `queue --json args…`, expects success and returns its JSON.
fn json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = queue(Some(url), &all);
    assert!(
        out.status.success(),
        "queue {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one JSON document: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("queue {args:?}: {e}: {text}"))
}

/// Runs `queue args…` and expects it to fail with `code`, saying `why` on stderr.
fn fails(url: Option<&str>, args: &[&str], code: i32, why: &str) {
    let out = queue(url, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "queue {args:?}: {stderr}");
    assert!(stderr.contains(why), "queue {args:?}: {stderr}");
}

fn text(url: &str, args: &[&str]) -> String {
    let out = queue(Some(url), args);
    assert!(
        out.status.success(),
        "queue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works_and_speaks_json() {
    let (name, url) = database().await;
    assert_eq!(json(&url, &["migrate"])["migrated"], true);
    let client = Client::connect(&url).await.unwrap();
    let ids = cli_job::enqueue_many(&client, 0..5).await.unwrap();
    let later = cli_job::with(9)
        .delay(Duration::from_secs(3600))
        .enqueue(&client)
        .await
        .unwrap();
    for id in &ids[..2] {
        sqlx::query("UPDATE queue_jobs SET state = 3, dead_at = UTC_TIMESTAMP(6), last_error = 'boom' WHERE id = ?")
            .bind(id.0)
            .execute(client.pool())
            .await
            .unwrap();
    }

    let stats = json(&url, &["stats"]);
    let cli = &stats["queues"]["cli"];
    assert_eq!(
        (&cli["ready"], &cli["scheduled"], &cli["dead"]),
        (&Value::from(3), &Value::from(1), &Value::from(2))
    );
    assert_eq!(stats["exact"], true);
    assert!(
        stats.get("unknown_tasks").is_none(),
        "the CLI declares no task"
    );
    let table = text(&url, &["stats"]);
    assert!(table.starts_with("QUEUE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("cli ")), "{table}");

    let dead = json(&url, &["jobs", "--state", "dead"]);
    let listed: Vec<u64> = dead["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].0, ids[0].0]);
    assert_eq!(dead["jobs"][0]["state"], "dead");
    assert_eq!(dead["next"], Value::Null);
    let page = text(&url, &["jobs", "--queue", "cli", "--limit", "2"]);
    assert!(
        page.contains(&format!("more: --after {}", ids[4])),
        "{page}"
    );
    let after = json(
        &url,
        &[
            "jobs",
            "--after",
            &ids[4].to_string(),
            "--task",
            "tests.cli.job",
        ],
    );
    assert_eq!(after["jobs"].as_array().unwrap().len(), 4);

    let job = json(&url, &["job", &ids[0].to_string()]);
    assert_eq!(job["id"], ids[0].0);
    assert_eq!(job["last_error"], "boom");
    assert_eq!(job["payload"], "0");
    assert!(text(&url, &["job", &later.to_string()]).contains("scheduled"));
    fails(Some(&url), &["job", "999999"], 1, "no job 999999");

    let retried = json(&url, &["retry", &ids[0].to_string()]);
    assert_eq!(retried[0]["retried"], true);
    fails(Some(&url), &["retry", &ids[0].to_string()], 1, "not dead");
    assert_eq!(
        json(&url, &["retry", "--all-dead", "--task", "nobody"])["retried"],
        0
    );
    assert_eq!(json(&url, &["retry", "--all-dead"])["retried"], 1);

    assert_eq!(
        json(&url, &["run-now", &later.to_string()])[0]["run_now"],
        true
    );
    fails(
        Some(&url),
        &["run-now", &later.to_string()],
        1,
        "not scheduled",
    );
    assert_eq!(
        json(&url, &["cancel", &ids[2].to_string()])[0]["cancelled"],
        true
    );
    let deleted = json(&url, &["delete", &ids[3].to_string(), &ids[4].to_string()]);
    assert_eq!(deleted.as_array().unwrap().len(), 2);
    fails(
        Some(&url),
        &["delete", &ids[3].to_string()],
        1,
        "not deleted",
    );
    assert_eq!(
        json(&url, &["purge-dead", "--older-than", "7d"])["purged"],
        0
    );

    assert_eq!(json(&url, &["pause", "cli"])["paused"], "cli");
    assert_eq!(
        json(&url, &["stats"])["paused_queues"],
        serde_json::json!(["cli"])
    );
    assert_eq!(json(&url, &["resume", "cli"])["resumed"], "cli");
    assert_eq!(json(&url, &["recurring"]), serde_json::json!([]));
    assert!(text(&url, &["recurring"]).starts_with("TASK"));

    let runtime = Runtime::builder(client.clone())
        .queues(["cli_served"])
        .cron(false)
        .start()
        .await
        .unwrap();
    served::enqueue(&client, 1).await.unwrap();
    let runtimes = json(&url, &["runtimes"]);
    assert_eq!(runtimes.as_array().unwrap().len(), 1);
    assert_eq!(runtimes[0]["owner"], runtime.owner());
    assert_eq!(runtimes[0]["queues"], serde_json::json!(["cli_served"]));
    assert!(text(&url, &["runtimes"]).contains("1 live runtimes"));
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    let minutes = json(&url, &["throughput", "--last", "5m"]);
    assert_eq!(minutes.as_array().unwrap().len(), 5);
    let started: u64 = minutes
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["started"].as_u64().unwrap())
        .sum();
    assert_eq!(
        started, 1,
        "the served job, written by its runtime's shutdown at the latest"
    );
    assert_eq!(
        json(&url, &["throughput", "--queue", "cli", "--last", "2m"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    client.pool().close().await;
    drop_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_non_zero_with_their_cause() {
    let (name, url) = database().await;
    // Usage errors: clap's code 2.
    fails(
        Some(&url),
        &["jobs", "--state", "bogus"],
        2,
        "unknown job state `bogus`",
    );
    fails(Some(&url), &["job", "abc"], 2, "invalid job id `abc`");
    fails(
        Some(&url),
        &["purge-dead", "--older-than", "7x"],
        2,
        "--older-than",
    );
    fails(Some(&url), &["retry"], 2, "required");
    fails(Some(&url), &["frobnicate"], 2, "unrecognized subcommand");
    // Runtime errors: 1.
    fails(None, &["stats"], 1, "no database: set DATABASE_URL");
    fails(
        Some(&url),
        &[
            "--database-url",
            "mysql://queue:queue@127.0.0.1:1/nothing",
            "stats",
        ],
        1,
        "127.0.0.1:1",
    );
    fails(
        Some(&url),
        &["--database-url", "postgres://x/y", "stats"],
        1,
        "postgres",
    );
    // Not migrated yet.
    fails(Some(&url), &["stats"], 1, "queue_jobs");
    assert_eq!(json(&url, &["migrate"])["migrated"], true);
    fails(Some(&url), &["pause", "no spaces"], 1, "invalid queue name");
    fails(
        Some(&url),
        &["jobs", "--queue", "no spaces"],
        1,
        "invalid queue name",
    );
    drop_database(&name).await;
}
