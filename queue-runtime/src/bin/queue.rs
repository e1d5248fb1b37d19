//! `queue`: the operator's command line over a queue-runtime database.
//!
//! Reads `DATABASE_URL` (or `--database-url`). Prints tables by default and
//! one JSON document with `--json`; exits non-zero, with the cause on
//! stderr, on any error (and when a command named jobs it could not act
//! on). docs/operations.md has the whole reference.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use queue_runtime::{Client, Error, JobFilter, JobId, JobState};
use serde_json::{Value, json};

/// Inspect and steer the jobs of a queue-runtime database.
#[derive(Debug, Parser)]
#[command(name = "queue", version, about)]
struct Cli {
    /// The database (mysql://user:password@host:port/database); default:
    /// the DATABASE_URL environment variable.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Job counts per queue and state, paused queues, limits.
    Stats,
    /// A page of jobs, newest first.
    Jobs {
        /// Only jobs in this state: ready, scheduled, running, dead, blocked.
        #[arg(long)]
        state: Option<JobState>,
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs of this task (its stored name).
        #[arg(long)]
        task: Option<String>,
        /// Only jobs with a smaller id (the `next` of the page before).
        #[arg(long)]
        after: Option<JobId>,
        /// Jobs per page (default 50, at most 1,000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job: its state, payload and error history.
    Job {
        /// The job's id.
        id: JobId,
    },
    /// Puts dead jobs back to run.
    Retry {
        /// The dead jobs' ids.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        ids: Vec<JobId>,
        /// Every dead job (of `--task`, if given).
        #[arg(long)]
        all_dead: bool,
        /// With --all-dead: only this task's dead jobs.
        #[arg(long, requires = "all_dead")]
        task: Option<String>,
    },
    /// Deletes jobs that have not started (ready, scheduled, blocked).
    Cancel {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Deletes jobs that are not running (ready, scheduled, blocked, dead).
    Delete {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Makes a scheduled job due now.
    RunNow {
        /// The job's id.
        id: JobId,
    },
    /// Deletes dead jobs that died more than a given time ago.
    PurgeDead {
        /// An age such as 7d, 12h, 30m.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
    /// Pauses a queue on every runtime.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resumes a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Recurring (cron) tasks with their next fire time.
    Recurring,
    /// Live runtimes.
    Runtimes,
    /// Attempts per minute, cluster-wide (or of one queue).
    Throughput {
        /// How far back (default 15m, at most 24h).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        last: Duration,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Applies the bundled schema migrations.
    Migrate,
}

/// What a command produced: its JSON, its text, and whether it did all it
/// was asked.
struct Output {
    json: Value,
    text: String,
    ok: bool,
}

impl Output {
    fn ok(json: Value, text: String) -> Output {
        Output {
            json,
            text,
            ok: true,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queue: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            if json {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            if out.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("queue: {e}");
            if e.contains("1146 (42S02)") {
                // A database the runtime's tables are not in yet.
                eprintln!(
                    "queue: hint: is this the right database? `queue migrate` creates the tables"
                );
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<Output, String> {
    let Some(url) = cli.database_url.filter(|u| !u.trim().is_empty()) else {
        return Err("no database: set DATABASE_URL or pass --database-url".into());
    };
    let client = Client::connect(url.trim())
        .await
        .map_err(|e| e.to_string())?;
    command(&client, cli.command)
        .await
        .map_err(|e| e.to_string())
}

async fn command(client: &Client, command: Command) -> Result<Output, Error> {
    Ok(match command {
        Command::Stats => stats(client).await?,
        Command::Jobs {
            state,
            queue,
            task,
            after,
            limit,
        } => {
            let page = client
                .jobs(&JobFilter {
                    state,
                    queue,
                    task,
                    after,
                    limit,
                })
                .await?;
            let mut rows = vec![row([
                "ID",
                "STATE",
                "QUEUE",
                "TASK",
                "PRI",
                "ATTEMPTS",
                "RUN AT",
                "LAST ERROR",
            ])];
            for j in &page.jobs {
                rows.push(vec![
                    j.id.to_string(),
                    j.state.to_string(),
                    j.queue.clone(),
                    j.task.clone(),
                    j.priority.to_string(),
                    format!("{}/{}", j.attempts, j.max_attempts),
                    time(j.run_at),
                    cut(j.last_error.as_deref().unwrap_or(""), 60),
                ]);
            }
            let mut text = table(&rows);
            match page.next {
                Some(next) => text.push_str(&format!("more: --after {next}\n")),
                None => text.push_str(&format!("{} jobs\n", page.jobs.len())),
            }
            Output::ok(json!(page), text)
        }
        Command::Job { id } => match client.job(id).await? {
            Some(job) => {
                let mut text = String::new();
                let mut line = |k: &str, v: String| text.push_str(&format!("{k:<13}{v}\n"));
                line("id", job.id.to_string());
                line("task", job.task.clone());
                line("queue", job.queue.clone());
                line("state", job.state.to_string());
                line("priority", job.priority.to_string());
                line("attempts", format!("{}/{}", job.attempts, job.max_attempts));
                line("run at", time(job.run_at));
                line("created at", time(job.created_at));
                line("updated at", time(job.updated_at));
                if let Some(owner) = &job.lease_owner {
                    line("running on", owner.clone());
                }
                if let Some(w) = &job.waiting {
                    line("waiting for", format!("{w:?}"));
                }
                line("payload", job.payload.clone());
                if let Some(e) = &job.last_error {
                    line("last error", e.clone());
                }
                if !job.errors.is_empty() {
                    text.push_str("errors (last 20 attempts, oldest first):\n");
                    for e in &job.errors {
                        text.push_str(&format!(
                            "  #{:<3} {}  {}\n",
                            e.attempt,
                            time(e.at),
                            cut(&e.error, 200)
                        ));
                    }
                }
                Output::ok(json!(job), text)
            }
            None => Output {
                json: json!({ "id": id, "found": false }),
                text: String::new(),
                ok: false,
            }
            .with_error(format!("no job {id} (a job that succeeded is deleted)")),
        },
        Command::Retry {
            all_dead: true,
            task,
            ..
        } => {
            let n = client.retry_dead_all(task.as_deref()).await?;
            Output::ok(
                json!({ "retried": n }),
                format!("{n} dead jobs put back to run\n"),
            )
        }
        Command::Retry { ids, .. } => {
            let mut results = Vec::new();
            for id in ids {
                let done = match client.retry_dead(id).await {
                    Ok(()) => true,
                    Err(Error::NotDead(_)) => false,
                    Err(e) => return Err(e),
                };
                results.push((id, done));
            }
            per_id(results, "retried", "put back to run", "not dead")
        }
        Command::Cancel { ids } => {
            let mut results = Vec::new();
            for id in ids {
                results.push((id, client.cancel(id).await?));
            }
            per_id(
                results,
                "cancelled",
                "cancelled",
                "not cancelled (running, dead, finished or unknown)",
            )
        }
        Command::Delete { ids } => {
            let mut results = Vec::new();
            for id in ids {
                results.push((id, client.delete_job(id).await?));
            }
            per_id(
                results,
                "deleted",
                "deleted",
                "not deleted (running, finished or unknown)",
            )
        }
        Command::RunNow { id } => per_id(
            vec![(id, client.run_now(id).await?)],
            "run_now",
            "due now",
            "not scheduled (ready, running, blocked, dead, finished or unknown)",
        ),
        Command::PurgeDead { older_than } => {
            let n = client.purge_dead(older_than).await?;
            Output::ok(
                json!({ "purged": n }),
                format!(
                    "{n} dead jobs purged (died more than {} ago)\n",
                    humantime::format_duration(older_than)
                ),
            )
        }
        Command::Pause { queue } => {
            client.pause_queue(&queue).await?;
            Output::ok(
                json!({ "paused": queue }),
                format!("queue {queue} paused\n"),
            )
        }
        Command::Resume { queue } => {
            client.resume_queue(&queue).await?;
            Output::ok(
                json!({ "resumed": queue }),
                format!("queue {queue} resumed\n"),
            )
        }
        Command::Recurring => {
            let tasks = client.recurring().await?;
            let mut rows = vec![row([
                "TASK",
                "EXPRESSION",
                "TIME ZONE",
                "LAST TICK",
                "NEXT TICK",
            ])];
            for t in &tasks {
                rows.push(vec![
                    t.task.clone(),
                    t.expression.clone(),
                    t.timezone.clone(),
                    time(t.last_tick),
                    t.next_tick.map(time).unwrap_or_else(|| "-".into()),
                ]);
            }
            Output::ok(json!(tasks), table(&rows))
        }
        Command::Runtimes => {
            let runtimes = client.runtimes().await?;
            let mut rows = vec![row([
                "OWNER",
                "HOST",
                "PID",
                "QUEUES",
                "CONCURRENCY",
                "IN FLIGHT",
                "STARTED",
                "HEARTBEAT",
            ])];
            for r in &runtimes {
                rows.push(vec![
                    r.owner.clone(),
                    r.host.clone(),
                    r.pid.to_string(),
                    r.queues.join(","),
                    r.concurrency.to_string(),
                    r.in_flight.to_string(),
                    time(r.started_at),
                    time(r.heartbeat_at),
                ]);
            }
            let mut text = table(&rows);
            text.push_str(&format!("{} live runtimes\n", runtimes.len()));
            Output::ok(json!(runtimes), text)
        }
        Command::Throughput { last, queue } => {
            let minutes = match &queue {
                Some(q) => client.throughput_of(q, last).await?,
                None => client.throughput(last).await?,
            };
            let mut rows = vec![row(["MINUTE", "STARTED", "SUCCEEDED", "FAILED", "DEAD"])];
            for m in &minutes {
                rows.push(vec![
                    time(m.minute),
                    m.started.to_string(),
                    m.succeeded.to_string(),
                    m.failed.to_string(),
                    m.dead.to_string(),
                ]);
            }
            Output::ok(json!(minutes), table(&rows))
        }
        Command::Migrate => {
            client.migrate().await?;
            Output::ok(
                json!({ "migrated": true }),
                "the schema is up to date\n".into(),
            )
        }
    })
}

impl Output {
    /// This output, failed, with `message` on stderr.
    fn with_error(self, message: String) -> Output {
        eprintln!("queue: {message}");
        Output { ok: false, ..self }
    }
}

/// The output of a command over ids: one line (and JSON entry) per id; it
/// fails if any id was not acted on.
fn per_id(results: Vec<(JobId, bool)>, key: &str, yes: &str, no: &str) -> Output {
    let mut text = String::new();
    let mut ok = true;
    for (id, done) in &results {
        if *done {
            text.push_str(&format!("job {id}: {yes}\n"));
        } else {
            eprintln!("queue: job {id}: {no}");
            ok = false;
        }
    }
    let json = Value::Array(
        results
            .iter()
            .map(|(id, done)| json!({ "id": id, key: done }))
            .collect(),
    );
    Output { json, text, ok }
}

async fn stats(client: &Client) -> Result<Output, Error> {
    let stats = client.stats().await?;
    let mut json = json!(stats);
    // This process declares no #[task]: every task would be "unknown".
    if let Some(map) = json.as_object_mut() {
        map.remove("unknown_tasks");
    }
    let count = |n: u64, at_least: bool| {
        if at_least {
            format!("{n}+")
        } else {
            n.to_string()
        }
    };
    let mut rows = vec![row([
        "QUEUE",
        "READY",
        "SCHEDULED",
        "RUNNING",
        "BLOCKED",
        "DEAD",
        "PAUSED",
    ])];
    let mut add = |name: &str, q: &queue_runtime::QueueCounts, paused: bool| {
        rows.push(vec![
            name.to_owned(),
            count(q.ready, q.at_least.ready),
            count(q.scheduled, q.at_least.scheduled),
            count(q.running, q.at_least.running),
            count(q.blocked, q.at_least.blocked),
            count(q.dead, q.at_least.dead),
            if paused { "yes" } else { "" }.to_owned(),
        ]);
    };
    for (name, q) in &stats.queues {
        add(name, q, stats.paused_queues.contains(name));
    }
    add("(all)", &stats.total, false);
    let mut text = table(&rows);
    if !stats.exact {
        text.push_str("n+: at least n (more than stats() counts one by one)");
        if let Some(e) = stats.estimated_jobs {
            text.push_str(&format!("; about {e} jobs in all (InnoDB's estimate)"));
        }
        text.push('\n');
    }
    let paused_elsewhere: Vec<&String> = stats
        .paused_queues
        .iter()
        .filter(|q| !stats.queues.contains_key(*q))
        .collect();
    if !paused_elsewhere.is_empty() {
        text.push_str(&format!(
            "paused (no jobs): {}\n",
            paused_elsewhere
                .iter()
                .map(|q| q.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(h) = stats.history_list_length {
        text.push_str(&format!("InnoDB history list length: {h}\n"));
    }
    for l in &stats.limits {
        text.push_str(&format!(
            "limit {} {}{:?}: {}/{} active, {} waiting\n",
            l.task,
            l.key
                .as_deref()
                .map(|k| format!("[{k}] "))
                .unwrap_or_default(),
            l.kind,
            l.active,
            l.limit,
            l.waiting
        ));
    }
    Ok(Output::ok(json, text))
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The first `n` characters of `s` on one line, with "…" when cut.
fn cut(s: &str, n: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > n {
        let mut t: String = one_line.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        one_line
    }
}
