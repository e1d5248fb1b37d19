//! A web service with the job runtime embedded: the whole integration.
//!
//! - `POST /signup` (`{"email": "...", "name": "..."}`) inserts a user and
//!   enqueues their welcome email **in the same transaction**: the user and
//!   the email exist together or not at all.
//! - `send_welcome` sends it through a (fake) mailer that sometimes answers
//!   "try later": the job is retried with backoff; an address the mailer
//!   refuses for good makes the job dead at once (`TaskError::permanent`).
//! - `daily_digest`, a cron task, writes a digest of the day's signups at
//!   08:00 UTC, once per day across every process running this service.
//! - SIGTERM or Ctrl-C (or `--for SECONDS`) stops the HTTP server (it
//!   finishes the requests in flight) and then the runtime (running jobs get
//!   `--drain SECONDS` to finish, the rest are handed back at once).
//! - Logs go to stderr through `tracing-subscriber`, filtered by `RUST_LOG`
//!   (default `info`), coloured only on a terminal.
//!
//! ```text
//! cargo run --example web_service -- [--port 3000] [--for SECONDS] [--drain SECONDS]
//! curl -X POST localhost:3000/signup -H 'content-type: application/json' \
//!      -d '{"email":"ann@example.com","name":"Ann"}'
//! ```
//!
//! It works in its own database, `queue_web_demo`, recreated on each run
//! (on `DATABASE_URL`, or the private MariaDB that `scripts/db.sh` starts).
//! Its tests, at the end of this file, use `queue_runtime::testing`; they
//! run with the workspace's tests (`scripts/test`), or alone with
//! `cargo test -p queue-examples --example web_service`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use queue_runtime::{Client, Runtime, TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

/// What `POST /signup` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Signup {
    email: String,
    name: String,
}

/// The welcome email's payload: what the job needs, not the whole user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WelcomeEmail {
    user_id: u64,
    to: String,
    name: String,
}

/// Sends the welcome email. The mailer's "try later" is retried (up to 5
/// times, 1 s, 2 s, 4 s … apart); an address it refuses is not.
///
/// At-least-once: a job whose process dies mid-send runs again, so a real
/// mailer call should carry an idempotency key (here the user id).
#[task(
    queue = "mail",
    priority = 1,
    retries = 5,
    backoff = "exponential(1s, 5m)",
    deadline = "30s",
    name = "web.send_welcome"
)]
async fn send_welcome(ctx: TaskContext, email: WelcomeEmail) -> Result<(), TaskError> {
    let body = format!("Welcome, {}!", email.name);
    match mailer::send(&email.to, &body, &format!("welcome-{}", email.user_id)).await {
        Ok(()) => {
            tracing::info!(to = %email.to, attempt = ctx.attempt(), "welcome email sent");
            Ok(())
        }
        Err(e @ mailer::Error::Rejected(_)) => Err(TaskError::permanent(e)),
        Err(e) => Err(e.into()),
    }
}

/// Writes a digest of the signups since the previous one, at 08:00 UTC
/// every day (once per day cluster-wide, however many processes run).
#[task(cron = "0 0 8 * * *", queue = "reports", name = "web.daily_digest")]
async fn daily_digest(ctx: TaskContext) -> Result<(), TaskError> {
    let now = ctx.client().now();
    let since: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT MAX(sent_at) FROM digests")
            .fetch_one(ctx.db())
            .await?;
    let since = since.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let users: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE created_at > ? AND created_at <= ?")
            .bind(since)
            .bind(now)
            .fetch_one(ctx.db())
            .await?;
    sqlx::query("INSERT INTO digests (sent_at, new_users) VALUES (?, ?)")
        .bind(now)
        .bind(users)
        .execute(ctx.db())
        .await?;
    tracing::info!(new_users = users, "daily digest written");
    Ok(())
}

/// A stand-in for an email provider's API.
mod mailer {
    use super::*;

    /// What the provider answers when it does not take a message.
    #[derive(Debug, thiserror::Error)]
    pub(crate) enum Error {
        /// Busy: try again later (retried).
        #[error("mailer unavailable, try again later")]
        Unavailable,
        /// The address will never take mail (not retried).
        #[error("address rejected: {0}")]
        Rejected(String),
    }

    /// Sent messages' recipients, and the "try later" answers still to give
    /// per recipient (for the tests; `example.invalid` addresses are refused).
    pub(crate) static OUTBOX: Mutex<Vec<String>> = Mutex::new(Vec::new());
    pub(crate) static BUSY_FOR: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

    pub(crate) async fn send(to: &str, _body: &str, _idempotency_key: &str) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if to.ends_with("@example.invalid") {
            return Err(Error::Rejected(to.to_owned()));
        }
        if let Some(left) = BUSY_FOR
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new)
            .get_mut(to)
            .filter(|n| **n > 0)
        {
            *left -= 1;
            return Err(Error::Unavailable);
        }
        OUTBOX
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(to.to_owned());
        Ok(())
    }
}

/// The service's own tables.
async fn migrate_app(pool: &sqlx::MySqlPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            email VARCHAR(255) NOT NULL UNIQUE,
            name VARCHAR(255) NOT NULL,
            created_at DATETIME(6) NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS digests (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            sent_at DATETIME(6) NOT NULL,
            new_users BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    client: Client,
}

/// An error answer: a status and a message.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (self.0, self.1).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "database error".into())
    }
}

impl From<queue_runtime::Error> for ApiError {
    fn from(e: queue_runtime::Error) -> Self {
        tracing::error!(error = %e, "could not enqueue");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not enqueue".into(),
        )
    }
}

/// What `POST /signup` answers.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Created {
    id: u64,
}

/// Inserts the user and enqueues their welcome email in `tx`: both happen
/// when the caller commits, neither if it rolls back.
async fn create_user(
    client: &Client,
    tx: &mut sqlx::MySqlConnection,
    signup: &Signup,
) -> Result<u64, ApiError> {
    let inserted = sqlx::query("INSERT INTO users (email, name, created_at) VALUES (?, ?, ?)")
        .bind(&signup.email)
        .bind(&signup.name)
        .bind(client.now())
        .execute(&mut *tx)
        .await;
    let id = match inserted {
        Ok(done) => done.last_insert_id(),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "email already signed up".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let email = WelcomeEmail {
        user_id: id,
        to: signup.email.clone(),
        name: signup.name.clone(),
    };
    send_welcome::with(email).enqueue_in(client, tx).await?;
    Ok(id)
}

/// `POST /signup`.
async fn signup(
    State(app): State<App>,
    Json(signup): Json<Signup>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    if !signup.email.contains('@') || signup.name.trim().is_empty() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "an email address and a name are needed".into(),
        ));
    }
    let mut tx = app.client.pool().begin().await?;
    let id = create_user(&app.client, &mut tx, &signup).await?;
    tx.commit().await?;
    tracing::info!(user.id = id, "signed up");
    Ok((StatusCode::CREATED, Json(Created { id })))
}

fn router(app: App) -> Router {
    Router::new().route("/signup", post(signup)).with_state(app)
}

/// Command-line options.
struct Options {
    port: u16,
    run_for: Option<Duration>,
    drain: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        port: 3000,
        run_for: None,
        drain: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let secs = || {
            value
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| format!("{flag} {value}: expected seconds"))
        };
        match flag.as_str() {
            "--port" => o.port = value.parse().map_err(|e| format!("--port {value}: {e}"))?,
            "--for" => o.run_for = Some(secs()?),
            "--drain" => o.drain = secs()?,
            _ => {
                return Err(format!(
                    "unknown argument {flag} (use --port N, --for SECONDS, --drain SECONDS)"
                ));
            }
        }
    }
    Ok(o)
}

/// Resolves on SIGTERM, Ctrl-C, or after `run_for`.
async fn stop_signal(run_for: Option<Duration>) {
    let timer = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = term => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        () = timer => tracing::info!("--for elapsed: shutting down"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let opts = options()?;

    let url = queue_examples::demo_database("queue_web_demo").await?;
    let client = Client::connect(&url).await?;
    client.migrate().await?;
    migrate_app(client.pool()).await?;

    // The runtime runs beside the HTTP server, in this process, on the
    // same pool: every queue a task names ("mail", "reports").
    let runtime = Runtime::builder(client.clone())
        .concurrency(8)
        .start()
        .await?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening; POST /signup");
    // The server stops taking connections on the signal and finishes the
    // requests in flight; then the runtime drains and hands back the rest.
    let served = axum::serve(listener, router(App { client }))
        .with_graceful_shutdown(stop_signal(opts.run_for))
        .await;
    let stopped = runtime.shutdown(opts.drain).await;
    tracing::info!("stopped");
    served?;
    stopped?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The service's tests, written with `queue_runtime::testing`, as an
    //! application's would be.

    use super::*;
    use chrono::{TimeZone, Utc};
    use queue_runtime::testing::{self, Outcome, TestClock, TestDatabase};

    async fn app() -> (TestDatabase, App) {
        let db = TestDatabase::new()
            .await
            .expect("DATABASE_URL must name a server");
        migrate_app(db.pool()).await.unwrap();
        let app = App {
            client: db.client().clone(),
        };
        (db, app)
    }

    fn ann(email: &str) -> Signup {
        Signup {
            email: email.into(),
            name: "Ann".into(),
        }
    }

    #[tokio::test]
    async fn signup_enqueues_exactly_one_welcome_email() {
        let (db, app) = app().await;
        let (status, Json(created)) = signup(State(app.clone()), Json(ann("ann@example.com")))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        let job = testing::assert_enqueued_once(
            &app.client,
            send_welcome::TASK,
            &WelcomeEmail {
                user_id: created.id,
                to: "ann@example.com".into(),
                name: "Ann".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!((job.queue.as_str(), job.priority), ("mail", 1));
        assert_eq!(job.deadline, Some(Duration::from_secs(30)));

        // The same address again: refused, and still one email.
        let e = signup(State(app.clone()), Json(ann("ann@example.com")))
            .await
            .unwrap_err();
        assert_eq!(e.0, StatusCode::CONFLICT);
        assert_eq!(
            testing::enqueued(&app.client, send_welcome::TASK)
                .await
                .unwrap()
                .len(),
            1
        );
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_rolled_back_signup_enqueues_nothing() {
        let (db, app) = app().await;
        let mut tx = app.client.pool().begin().await.unwrap();
        create_user(&app.client, &mut tx, &ann("bob@example.com"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        testing::assert_not_enqueued(&app.client, send_welcome::TASK)
            .await
            .unwrap();
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(users, 0);
        // A request refused before its transaction enqueues nothing either.
        let e = signup(State(app.clone()), Json(ann("not-an-address")))
            .await
            .unwrap_err();
        assert_eq!(e.0, StatusCode::UNPROCESSABLE_ENTITY);
        testing::assert_not_enqueued(&app.client, send_welcome::TASK)
            .await
            .unwrap();
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_welcome_email_is_retried_on_a_transient_error() {
        let (db, app) = app().await;
        let clock = TestClock::new(&app.client, Utc::now()).await.unwrap();
        let to = "carol@example.com";
        mailer::BUSY_FOR
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(to.into(), 2);
        let email = WelcomeEmail {
            user_id: 7,
            to: to.into(),
            name: "Carol".into(),
        };
        send_welcome::enqueue(clock.client(), email).await.unwrap();
        let drained = testing::drain(clock.client())
            .advancing(&clock)
            .await
            .unwrap();
        let outcomes: Vec<&Outcome> = drained.attempts().iter().map(|a| &a.outcome).collect();
        assert_eq!(outcomes.len(), 3, "{drained}");
        assert!(
            matches!(outcomes[0], Outcome::Failed { error, .. } if error == "mailer unavailable, try again later"),
            "{drained}"
        );
        assert!(matches!(outcomes[1], Outcome::Failed { .. }), "{drained}");
        assert_eq!(outcomes[2], &Outcome::Succeeded);
        assert!(mailer::OUTBOX.lock().unwrap().iter().any(|t| t == to));

        // An address the mailer refuses is not retried.
        let refused = WelcomeEmail {
            user_id: 8,
            to: "dan@example.invalid".into(),
            name: "Dan".into(),
        };
        let performed = testing::perform(&app.client, send_welcome::TASK, refused)
            .await
            .unwrap();
        assert!(performed.error().is_some_and(|e| e.is_permanent()));
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_digest_runs_on_its_tick() {
        let (db, app) = app().await;
        let start = Utc.with_ymd_and_hms(2030, 3, 1, 7, 0, 0).unwrap();
        let clock = TestClock::new(&app.client, start).await.unwrap();
        let app = App {
            client: clock.client().clone(),
        };
        for email in ["e@example.com", "f@example.com"] {
            let (status, _) = signup(State(app.clone()), Json(ann(email))).await.unwrap();
            assert_eq!(status, StatusCode::CREATED);
        }
        // Not yet 08:00: no tick.
        assert!(
            clock
                .advance(Duration::from_secs(1800))
                .await
                .unwrap()
                .is_empty()
        );
        let ticks = clock.advance(Duration::from_secs(1800)).await.unwrap();
        assert_eq!(ticks.len(), 1);
        assert_eq!(ticks[0].task, daily_digest::NAME);
        assert_eq!(
            ticks[0].tick,
            Utc.with_ymd_and_hms(2030, 3, 1, 8, 0, 0).unwrap()
        );
        let drained = testing::drain(clock.client())
            .queues(["reports"])
            .await
            .unwrap();
        assert_eq!(drained.of(daily_digest::NAME).len(), 1, "{drained}");
        assert_eq!(drained.succeeded(), 1, "{drained}");
        let digests: Vec<(chrono::DateTime<Utc>, i64)> =
            sqlx::query_as("SELECT sent_at, new_users FROM digests")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert_eq!(digests, [(ticks[0].tick, 2)]);
        db.close().await.unwrap();
    }
}
