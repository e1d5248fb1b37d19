//! `cluster`: no-op jobs drained on a MariaDB Galera cluster, by one runtime
//! per node (multi-primary) and by the same runtimes all through one node;
//! jobs/s and the certification conflicts they cost.
//!
//! The nodes' URLs come from `CLUSTER_URLS` (comma-separated, as
//! `scripts/cluster.sh urls` prints them; their database part is replaced
//! by the bench's own, `bench_cluster`). The scenario starts no server and
//! fails at once, saying so, without them. Not part of `all`.

use std::time::Duration;

use queue_runtime::Client;
use serde_json::json;
use sqlx::{Connection, MySqlConnection};

use crate::report::{Report, num, table};
use crate::tasks;
use crate::{Opts, Res};

/// The bench's database on the cluster.
const DB: &str = "bench_cluster";

/// The cluster's node URLs from `CLUSTER_URLS`, or an error that says how
/// to set it.
pub(crate) fn node_urls() -> Res<Vec<String>> {
    let urls: Vec<String> = std::env::var("CLUSTER_URLS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.len() < 2 {
        return Err(
            "the cluster scenario needs CLUSTER_URLS: the Galera nodes' URLs, \
                    comma-separated (for the cluster of scripts/cluster.sh: \
                    CLUSTER_URLS=$(scripts/cluster.sh urls | paste -sd,)); it starts nothing itself"
                .into(),
        );
    }
    Ok(urls)
}

/// `url` with database `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{db}")
}

/// Galera's lost races on one node: local certification failures and
/// brute-force aborts.
async fn conflicts(url: &str) -> Res<(u64, u64)> {
    let mut c = MySqlConnection::connect(url).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')",
    )
    .fetch_all(&mut c)
    .await?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    let _ = c.close().await;
    Ok((
        get("wsrep_local_cert_failures"),
        get("wsrep_local_bf_aborts"),
    ))
}

/// The sum of every node's counters.
async fn all_conflicts(urls: &[String]) -> Res<(u64, u64)> {
    let mut sum = (0, 0);
    for u in urls {
        let (c, b) = conflicts(u).await?;
        sum.0 += c;
        sum.1 += b;
    }
    Ok(sum)
}

/// Makes `bench_cluster` again through the first node (DDL replicates) and
/// migrates it; returns the nodes' URLs of that database.
async fn fresh_on_cluster(nodes: &[String]) -> Res<Vec<String>> {
    let mut c = MySqlConnection::connect(&with_db(&nodes[0], "")).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{DB}`; CREATE DATABASE `{DB}`"
    )))
    .execute(&mut c)
    .await?;
    let _ = c.close().await;
    let urls: Vec<String> = nodes.iter().map(|u| with_db(u, DB)).collect();
    Client::connect(&urls[0]).await?.migrate().await?;
    Ok(urls)
}

/// One way of placing the runtimes.
struct Variant {
    name: &'static str,
    /// The node (index into the URLs) of each runtime.
    runtimes: Vec<usize>,
    /// On the bench's own single server (`DATABASE_URL`, not Galera)
    /// instead: the baseline the cluster is weighed against.
    plain: bool,
}

/// `cluster`: for each variant, `--cluster-jobs` no-op jobs enqueued
/// through node 1, then drained by `--cluster-runtimes` runtimes (separate
/// processes, concurrency `--cluster-concurrency` each) from the first
/// job's start to an empty queue; the conflicts are the nodes' counter
/// deltas over the drain (the enqueue excluded).
pub(crate) async fn cluster(report: &mut Report, opts: &Opts) -> Res<()> {
    let nodes = node_urls()?;
    let n = opts.cluster_jobs;
    let conc = opts.cluster_concurrency;
    let k = nodes.len();
    let variants = [
        Variant {
            name: "multi-primary: one runtime per node",
            runtimes: (0..k).collect(),
            plain: false,
        },
        Variant {
            name: "one node: the same runtimes all through node 1",
            runtimes: vec![0; k],
            plain: false,
        },
        Variant {
            name: "one runtime on node 1",
            runtimes: vec![0],
            plain: false,
        },
        Variant {
            name: "a single server (not Galera): the same runtimes",
            runtimes: vec![0; k],
            plain: true,
        },
    ];
    let mut rows = Vec::new();
    for v in &variants {
        let urls = if v.plain {
            vec![crate::fresh("bench_cluster_plain").await?.0]
        } else {
            fresh_on_cluster(&nodes).await?
        };
        let client = Client::connect(&urls[0]).await?;
        let mut left = n;
        while left > 0 {
            let chunk = left.min(5_000);
            tasks::noop::enqueue_many(&client, std::iter::repeat_n((), chunk as usize)).await?;
            left -= chunk;
        }
        // Every node has applied the enqueue before the drain starts.
        for u in urls.iter().filter(|_| !v.plain) {
            let mut c = MySqlConnection::connect(u).await?;
            sqlx::query("SET SESSION wsrep_sync_wait = 1")
                .execute(&mut c)
                .await?;
            let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_jobs")
                .fetch_one(&mut c)
                .await?;
            let _ = c.close().await;
        }
        let before = all_conflicts(&nodes).await?;
        let targets: Vec<String> = v.runtimes.iter().map(|&node| urls[node].clone()).collect();
        let (first, end, done) = crate::scenarios::drain_in_processes(
            &client,
            &targets,
            conc,
            n,
            Duration::from_secs(120),
        )
        .await?;
        let after = all_conflicts(&nodes).await?;
        let secs = end.saturating_sub(first) as f64 / 1e6;
        let rate = n as f64 / secs;
        let cert = after.0.saturating_sub(before.0);
        let bf = after.1.saturating_sub(before.1);
        let per_1000 = (cert + bf) as f64 * 1000.0 / n as f64;
        let runs_per_job = done as f64 / n as f64;
        // A single server has no certification to fail.
        let (cert_cell, bf_cell, per_1000_cell) = if v.plain {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            (cert.to_string(), bf.to_string(), num(per_1000))
        };
        rows.push(vec![
            v.name.to_owned(),
            num(n as f64),
            format!("{} x {conc}", v.runtimes.len()),
            num(secs),
            num(rate),
            cert_cell,
            bf_cell,
            per_1000_cell,
            format!("{runs_per_job:.3}"),
        ]);
        let s = json!({"jobs": n, "nodes": k, "runtimes": v.runtimes.len(),
                       "runtime_nodes": v.runtimes.iter().map(|i| i + 1).collect::<Vec<_>>(),
                       "concurrency": conc, "enqueued_with": "enqueue_many through node 1, chunks of 5,000"});
        report.emit("cluster", v.name, "throughput", rate, "jobs/s", s.clone());
        report.emit(
            "cluster",
            v.name,
            "cert_failures",
            cert as f64,
            "1",
            s.clone(),
        );
        report.emit("cluster", v.name, "bf_aborts", bf as f64, "1", s.clone());
        report.emit(
            "cluster",
            v.name,
            "conflicts_per_1000_jobs",
            per_1000,
            "1",
            s.clone(),
        );
        report.emit(
            "cluster",
            v.name,
            "executions_per_job",
            runs_per_job,
            "1",
            s,
        );
        client.pool().close().await;
        if v.plain {
            crate::drop_db("bench_cluster_plain").await;
        }
    }
    let mut c = MySqlConnection::connect(&with_db(&nodes[0], "")).await?;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{DB}`"
    )))
    .execute(&mut c)
    .await;
    table(
        "### cluster: no-op jobs on a Galera cluster, from the first job's start to an empty queue (conflicts: wsrep_local_cert_failures and wsrep_local_bf_aborts, summed over the nodes, deltas over the drain)",
        &[
            "variant",
            "jobs",
            "runtimes x concurrency",
            "s",
            "jobs/s",
            "cert failures",
            "BF aborts",
            "conflicts / 1,000 jobs",
            "executions / job",
        ],
        &rows,
    );
    Ok(())
}
