//! The web dashboard (`queue_runtime::web`, feature `web`), served on its
//! own, beside the demo.
//!
//! ```text
//! scripts/demo                                   # fills `queue_demo`: sent, retried and dead emails
//! cargo run --example dashboard --features web   # then open the URL it prints
//! cargo run --example dashboard --features web -- --port 8080 --prefix /admin/queue --read-only
//! ```
//!
//! It reads the demo's database, `queue_demo` (`--database NAME` for
//! another), on `DATABASE_URL` or the private MariaDB of `scripts/db.sh`,
//! without recreating it; run the demo again while the dashboard is up and
//! watch it move. It serves on 127.0.0.1, port `--port` or `PORT` (default
//! 3030), the dashboard at `--prefix` (default the root), and Prometheus
//! text at `/metrics` (`metrics-exporter-prometheus`): the job counts per
//! queue and state, read at each scrape, and whatever the runtime records
//! through the `metrics` facade in this process.
//!
//! There is no authentication here: it listens on 127.0.0.1 only. See
//! docs/dashboard.md for mounting the dashboard behind a host's auth.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use queue_runtime::{Client, web};

struct Args {
    port: u16,
    prefix: Option<String>,
    database: String,
    read_only: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: dashboard [--port N] [--prefix /PATH] [--database NAME] [--read-only]\n\
         (PORT sets the port too; the default is 3030, the database queue_demo)"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        port: std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(3030),
        prefix: None,
        database: "queue_demo".to_owned(),
        read_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                a.port = it
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--prefix" => {
                let p = it.next().unwrap_or_else(|| usage());
                if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
                    eprintln!(
                        "--prefix must start with `/` and not end with one, e.g. /admin/queue"
                    );
                    usage();
                }
                a.prefix = Some(p);
            }
            "--database" => {
                let d = it.next().unwrap_or_else(|| usage());
                if d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    eprintln!("--database takes a plain name (letters, digits, _)");
                    usage();
                }
                a.database = d;
            }
            "--read-only" => a.read_only = true,
            _ => usage(),
        }
    }
    a
}

/// `/metrics`: the job counts as gauges, read now, then every metric the
/// recorder holds, in Prometheus' text format.
async fn metrics(State((client, handle)): State<(Client, PrometheusHandle)>) -> String {
    match client.stats().await {
        Ok(stats) => {
            for (queue, c) in &stats.queues {
                for (state, n) in [
                    ("ready", c.ready),
                    ("scheduled", c.scheduled),
                    ("running", c.running),
                    ("blocked", c.blocked),
                    ("dead", c.dead),
                ] {
                    #[allow(clippy::cast_precision_loss)] // a gauge is an f64
                    metrics::gauge!("queue_jobs", "queue" => queue.clone(), "state" => state)
                        .set(n as f64);
                }
            }
            if let Some(h) = stats.history_list_length {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("queue_innodb_history_list_length").set(h as f64);
            }
        }
        Err(e) => eprintln!("dashboard: /metrics could not read the counts: {e}"),
    }
    handle.render()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    let handle = PrometheusBuilder::new().install_recorder()?;

    let url = queue_examples::existing_database(&args.database).await?;
    let client = Client::connect(&url).await?;
    client.migrate().await?;

    let dashboard = web::Dashboard::new(client.clone())
        .read_only(args.read_only)
        .router();
    let app = match &args.prefix {
        Some(prefix) => Router::new().nest(prefix, dashboard),
        None => dashboard,
    };
    let app = app.route("/metrics", get(metrics).with_state((client, handle)));

    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!(
        "dashboard of database `{}`: http://{addr}{}  (metrics: http://{addr}/metrics; Ctrl-C stops)",
        args.database,
        args.prefix.as_deref().unwrap_or("/")
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
