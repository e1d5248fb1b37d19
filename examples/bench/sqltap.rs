//! Watches the SQL the runtime sends, from inside the process.
//!
//! sqlx reports every statement it runs as a `tracing` event (target
//! `sqlx::query`, level DEBUG) with its text and elapsed time. This layer
//! listens to those events only while asked to (so the throughput scenarios
//! pay nothing: the filter below is re-evaluated on every statement and
//! sqlx skips its logging work when it is off), and does two things:
//!
//! - counts statements by kind (the idle-polling scenario);
//! - records how long the claim's locking `SELECT` took (the churn
//!   scenario's per-window "pick" latency, which the runtime itself does
//!   not expose per window).
//!
//! COM_PING (sqlx's check before handing out a pooled connection) is not a
//! statement and is not seen here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Count statements by kind while set.
pub(crate) static COUNT: AtomicBool = AtomicBool::new(false);
/// Record the claim's locking SELECT while set.
pub(crate) static PICKS: AtomicBool = AtomicBool::new(false);

static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static PICK_MS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// Installs the global subscriber: runtime warnings to stderr (`RUST_LOG`
/// overrides), plus this tap.
pub(crate) fn install() {
    let fmt_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,sqlx=error".into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(fmt_filter);
    let tap = Tap.with_filter(dynamic_filter_fn(|meta, _| {
        meta.target() == "sqlx::query"
            && (COUNT.load(Ordering::Relaxed) || PICKS.load(Ordering::Relaxed))
    }));
    tracing_subscriber::registry().with(fmt).with(tap).init();
}

/// Takes the statement counts gathered so far.
pub(crate) fn take_counts() -> BTreeMap<String, u64> {
    std::mem::take(&mut *COUNTS.lock().unwrap())
}

/// Takes the pick latencies (ms) gathered so far.
pub(crate) fn take_picks() -> Vec<f64> {
    std::mem::take(&mut *PICK_MS.lock().unwrap())
}

struct Tap;

#[derive(Default)]
struct Fields {
    summary: String,
    statement: String,
    elapsed_secs: f64,
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.statement = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "summary" => self.summary = format!("{value:?}").trim_matches('"').to_owned(),
            "db.statement" => self.statement = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Tap {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        let sql = if f.statement.trim().is_empty() {
            f.summary.as_str()
        } else {
            f.statement.trim()
        };
        if PICKS.load(Ordering::Relaxed) && is_claim_select(sql) {
            PICK_MS.lock().unwrap().push(f.elapsed_secs * 1e3);
        }
        if COUNT.load(Ordering::Relaxed) {
            *COUNTS.lock().unwrap().entry(classify(sql)).or_default() += 1;
        }
    }
}

/// The runtime's claim: `SELECT priority, seq, job_id, limited FROM queue_ready …
/// FOR UPDATE SKIP LOCKED`.
fn is_claim_select(sql: &str) -> bool {
    sql.contains("SELECT priority, seq, job_id, limited FROM queue_ready")
        && sql.contains("FOR UPDATE")
}

/// A short name for a statement: verb and table, without MariaDB's
/// `SET STATEMENT max_statement_time=… FOR` prefix.
pub(crate) fn classify(sql: &str) -> String {
    let mut s = sql.trim();
    if s.starts_with("SET STATEMENT")
        && let Some(i) = s.find(" FOR ")
    {
        s = s[i + 5..].trim();
    }
    if s.starts_with("SET TRANSACTION") && s.contains("START TRANSACTION") {
        return "BEGIN (SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION)".into();
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    let verb = words.first().map_or("", |w| w).to_ascii_uppercase();
    let after = |kw: &str| {
        words
            .iter()
            .position(|w| w.eq_ignore_ascii_case(kw))
            .and_then(|i| words.get(i + 1))
            .map(|t| t.trim_matches(|c| c == '`' || c == '(' || c == ','))
    };
    let table = match verb.as_str() {
        "SELECT" | "DELETE" => after("FROM"),
        "INSERT" => after("INTO"),
        "UPDATE" => words.get(1).copied(),
        _ => None,
    };
    let mut out = match table {
        Some(t) => format!("{verb} {t}"),
        None => words.iter().take(3).copied().collect::<Vec<_>>().join(" "),
    };
    if s.contains("FOR UPDATE SKIP LOCKED") {
        out.push_str(" … FOR UPDATE SKIP LOCKED");
    }
    out
}
