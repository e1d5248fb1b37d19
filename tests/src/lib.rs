//! Test-support library for the queue runtime's integration tests.
//!
//! Every test that needs a database gets a fresh one from [`TestDb::new`],
//! on the server named by `DATABASE_URL`, or — when that is not set — on a
//! private MariaDB server that `scripts/db.sh` starts under `target/mariadb`
//! (and installs with apt-get when it can). Tests never skip silently for
//! lack of a database: they panic with a message that says what to do.
//!
//! Tests wait on conditions with [`wait_until`], never with fixed sleeps.
//!
//! This crate depends only on sqlx and tokio (not on the runtime's API), so
//! it stays usable while the runtime changes.

pub mod forward;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection};

/// How long [`TestDb::new`] keeps trying to reach the server before it panics.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum number of connections in the pool of a [`TestDb`].
pub const POOL_MAX_CONNECTIONS: u32 = 20;

/// Prefix of the names of the databases made by [`TestDb::new`].
pub const TEST_DB_PREFIX: &str = "qt_";

/// Test databases whose tables were last touched longer ago than this are
/// dropped by [`cleanup_stale`].
pub const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// The workspace's root directory (the parent of the `tests` crate).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Path of the `scripts/db.sh` script that manages the private server.
pub fn db_script() -> PathBuf {
    repo_root().join("scripts").join("db.sh")
}

/// Runs `scripts/db.sh <cmd>` from the repository root and returns its
/// trimmed stdout, or a message with its exit status and stderr.
fn run_db_script(cmd: &str) -> Result<String, String> {
    let script = db_script();
    let output = Command::new("bash")
        .arg(&script)
        .arg(cmd)
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{} {cmd}` failed ({}): {stderr}",
            script.display(),
            output.status
        ))
    }
}

/// URL of the MariaDB/MySQL server the tests use, with credentials that may
/// create and drop databases.
///
/// This is `DATABASE_URL` if set; otherwise `scripts/db.sh ensure` is run
/// (once per process) to start the private server, and the URL it prints is
/// used. Panics if no server can be had: tests never skip silently.
pub fn admin_url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    let url = URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.trim().is_empty()
        {
            return Ok(url.trim().to_owned());
        }
        match run_db_script("ensure") {
            Ok(url) if !url.is_empty() => Ok(url),
            Ok(_) => Err("scripts/db.sh ensure printed no URL".to_owned()),
            Err(e) => Err(e),
        }
    });
    match url {
        Ok(url) => url.clone(),
        Err(e) => panic!(
            "cannot reach a MariaDB server: set DATABASE_URL or let scripts/db.sh start one: {e}"
        ),
    }
}

/// Whether the tests run on the private server of `scripts/db.sh` (rather
/// than on some other server named by `DATABASE_URL`), so that a test may
/// stop and restart it with [`stop_server`] and [`start_server`].
pub fn is_private_server() -> bool {
    let admin = admin_url();
    // `status` prints "running (pid N): URL" or "not running: URL" (and
    // exits 1 then), URL being the private server's.
    let output = Command::new("bash")
        .arg(db_script())
        .arg("status")
        .current_dir(repo_root())
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .trim()
            .rsplit(": ")
            .next()
            .is_some_and(|url| url == admin),
        Err(_) => false,
    }
}

/// Stops the private server (`scripts/db.sh stop`) and waits until it is
/// gone. For fault-injection tests; check [`is_private_server`] first.
///
/// Panics if the script fails.
pub async fn stop_server() {
    let private = tokio::task::spawn_blocking(is_private_server)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        private,
        "stop_server: the tests do not run on the private server of scripts/db.sh \
         (DATABASE_URL names another server), so it cannot be stopped"
    );
    db_script_async("stop").await;
}

/// Starts the private server again (`scripts/db.sh start`) on the same port
/// and data, and waits until it answers. Panics if the script fails.
pub async fn start_server() {
    db_script_async("start").await;
}

async fn db_script_async(cmd: &'static str) {
    let result = tokio::task::spawn_blocking(move || run_db_script(cmd))
        .await
        .expect("the scripts/db.sh task panicked");
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `url` with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `url` with its database (the path) replaced by `database`, keeping the
/// credentials, host and query parameters. An empty `database` names none.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{database}{query}")
}

/// Connects to `url`, retrying until [`CONNECT_TIMEOUT`] has passed (the
/// server may be starting or restarting). Panics with the redacted URL and
/// the last error if it cannot.
async fn connect_admin(url: &str) -> MySqlConnection {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, MySqlConnection::connect(url)).await {
            Ok(Ok(conn)) => return conn,
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + Duration::from_millis(250) >= deadline {
            let error = last_error.unwrap_or_else(|| "the connection attempt hung".to_owned());
            panic!(
                "cannot connect to the MariaDB server at {} within {CONNECT_TIMEOUT:?}: {error} \
                 (set DATABASE_URL, or run scripts/db.sh ensure and look at target/mariadb/mariadbd.log)",
                redact_url(url)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether `name` is one of ours: `qt_` and 8 lower-case hex digits. Only
/// such names are ever put into SQL text, so they need no quoting beyond
/// backticks.
fn is_test_db_name(name: &str) -> bool {
    name.strip_prefix(TEST_DB_PREFIX).is_some_and(|hex| {
        hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A fresh, empty database for one test, on the server of [`admin_url`].
///
/// Call [`TestDb::drop_db`] at the end of a passing test; a failing test
/// leaves its database behind for inspection ([`cleanup_stale`] removes it
/// an hour later).
#[derive(Debug)]
pub struct TestDb {
    /// The database's name: `qt_` and 8 random hex digits.
    pub name: String,
    /// URL of the database, with the credentials of [`admin_url`].
    pub url: String,
    /// A pool of up to [`POOL_MAX_CONNECTIONS`] connections to the database.
    pub pool: MySqlPool,
}

impl TestDb {
    /// Creates a fresh database (utf8mb4, utf8mb4_unicode_ci) and a pool on it.
    ///
    /// Panics with a clear message if no server can be reached within
    /// [`CONNECT_TIMEOUT`].
    pub async fn new() -> TestDb {
        let admin = tokio::task::spawn_blocking(admin_url)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let server_url = url_with_database(&admin, "");
        let mut conn = connect_admin(&server_url).await;

        static CLEANED: AtomicBool = AtomicBool::new(false);
        if !CLEANED.swap(true, Ordering::SeqCst)
            && let Err(e) = cleanup_stale_on(&mut conn).await
        {
            tracing::warn!("could not drop stale test databases: {e}");
        }

        let mut attempt = 0;
        let name = loop {
            let name = format!("{TEST_DB_PREFIX}{:08x}", fastrand::u32(..));
            debug_assert!(is_test_db_name(&name));
            let sql = format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            );
            // Safe: `name` is `qt_` and 8 hex digits that we made ourselves.
            match sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await {
                Ok(_) => break name,
                // A name clash (1007, database exists) is retried with another name.
                Err(e) if attempt < 5 && is_db_exists_error(&e) => attempt += 1,
                Err(e) => panic!(
                    "cannot create test database {name} on {}: {e}",
                    redact_url(&server_url)
                ),
            }
        };
        let _ = conn.close().await;

        let url = url_with_database(&admin, &name);
        let pool = Self::connect_pool(&url, POOL_MAX_CONNECTIONS).await;
        // Captured by the test harness: shown when the test fails, so the
        // database left behind can be found.
        eprintln!("test database: {name} at {}", redact_url(&url));
        TestDb { name, url, pool }
    }

    async fn connect_pool(url: &str, max_connections: u32) -> MySqlPool {
        let connect = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .connect(url);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(pool)) => pool,
            Ok(Err(e)) => panic!("cannot open a pool on {}: {e}", redact_url(url)),
            Err(_) => panic!(
                "cannot open a pool on {} within {CONNECT_TIMEOUT:?}",
                redact_url(url)
            ),
        }
    }

    /// Another, independent pool of up to `max_connections` connections on
    /// this database (for example one per simulated worker process).
    pub async fn new_pool(&self, max_connections: u32) -> MySqlPool {
        Self::connect_pool(&self.url, max_connections).await
    }

    /// Closes the pool and drops the database. Call it at the end of a
    /// passing test.
    pub async fn drop_db(self) {
        self.pool.close().await;
        let server_url = url_with_database(&self.url, "");
        let mut conn = connect_admin(&server_url).await;
        assert!(
            is_test_db_name(&self.name),
            "not a test database: {}",
            self.name
        );
        // Safe: checked just above to be `qt_` and 8 hex digits.
        let sql = format!("DROP DATABASE IF EXISTS `{}`", self.name);
        if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await {
            panic!("cannot drop test database {}: {e}", self.name);
        }
        let _ = conn.close().await;
    }
}

fn is_db_exists_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.message().contains("database exists"),
        _ => false,
    }
}

/// Drops the test databases (`qt_` and 8 hex digits) whose tables were all
/// created or changed more than [`STALE_AFTER`] ago, such as those left
/// behind by failing tests. Databases without tables are left alone.
///
/// [`TestDb::new`] runs this once per process, ignoring errors.
pub async fn cleanup_stale() -> Result<(), sqlx::Error> {
    let admin = tokio::task::spawn_blocking(admin_url)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let mut conn = connect_admin(&url_with_database(&admin, "")).await;
    let result = cleanup_stale_on(&mut conn).await;
    let _ = conn.close().await;
    result
}

async fn cleanup_stale_on(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    let stale_secs = i64::try_from(STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_SCHEMA AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA LIKE 'qt\\_%' \
         GROUP BY TABLE_SCHEMA \
         HAVING MAX(COALESCE(UPDATE_TIME, CREATE_TIME)) < NOW() - INTERVAL ? SECOND",
    )
    .bind(stale_secs)
    .fetch_all(&mut *conn)
    .await?;
    for name in names.into_iter().filter(|n| is_test_db_name(n)) {
        // Safe: filtered to `qt_` and 8 hex digits.
        let sql = format!("DROP DATABASE IF EXISTS `{name}`");
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
        tracing::info!(database = %name, "dropped stale test database");
    }
    Ok(())
}

/// Polls `f` every 20 ms until it returns `true`.
///
/// Panics with "timed out after {timeout:?} waiting for {what}" if it has
/// not within `timeout` (a call of `f` that hangs past it counts as well).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(true) => return,
            Ok(false) if tokio::time::Instant::now() < deadline => {}
            _ => panic!("timed out after {timeout:?} waiting for {what}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a `tracing` subscriber that writes through the test harness
/// (so output is captured per test), filtered by `RUST_LOG` (default
/// `warn`). Safe to call from every test: only the first call installs it.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

/// Tees a spawned child's stdout and stderr, line by line, to this test's
/// stderr (each line prefixed `[label]`) and into the returned log, which
/// the test reads to wait for or count what the child printed.
pub fn capture_output(
    child: &mut tokio::process::Child,
    label: String,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    use tokio::io::AsyncBufReadExt;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let streams: [Box<dyn tokio::io::AsyncRead + Unpin + Send>; 2] = [
        Box::new(child.stdout.take().expect("the child's stdout piped")),
        Box::new(child.stderr.take().expect("the child's stderr piped")),
    ];
    for stream in streams {
        let log = log.clone();
        let label = label.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{label}] {line}");
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    log
}

/// The concurrency limits' books, in one statement (so one consistent
/// read): jobs left (not dead), jobs recorded as holding a slot (ready or
/// running, `slot = 1`), the semaphores' count, and spares (running keyed
/// jobs without a slot). The first two of the last three must agree in
/// every committed state.
pub async fn slot_books(pool: &MySqlPool) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM queue_jobs WHERE state <> 3), \
         (SELECT COUNT(*) FROM queue_jobs WHERE slot = 1 AND state IN (0, 2)), \
         (SELECT CAST(COALESCE(SUM(running), 0) AS SIGNED) FROM queue_semaphores), \
         (SELECT COUNT(*) FROM queue_jobs WHERE slot = 0 AND state = 2 \
          AND concurrency_key IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .expect("read the slot books")
}

/// Reads the books once ([`slot_books`]) and checks them: the jobs recorded
/// as holding a slot number what the semaphores count, and that is at most
/// `limit`. Returns the jobs left and the spares.
pub async fn check_slot_books(pool: &MySqlPool, limit: i64) -> (i64, i64) {
    let (left, holders, counted, spares) = slot_books(pool).await;
    assert_eq!(
        holders, counted,
        "slot holders and the semaphore's count agree ({left} jobs left)"
    );
    assert!(
        counted <= limit,
        "{counted} slots counted for a limit of {limit}"
    );
    (left, spares)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn urls() {
        let url = "mysql://queue:queue@127.0.0.1:3366/queue";
        assert_eq!(
            url_with_database(url, "qt_0000abcd"),
            "mysql://queue:queue@127.0.0.1:3366/qt_0000abcd"
        );
        assert_eq!(
            url_with_database(url, ""),
            "mysql://queue:queue@127.0.0.1:3366/"
        );
        assert_eq!(
            url_with_database("mysql://u:p@h?ssl-mode=disabled", "x"),
            "mysql://u:p@h/x?ssl-mode=disabled"
        );
        assert_eq!(
            url_with_database("mysql://u:p@h/db?ssl-mode=disabled", "x"),
            "mysql://u:p@h/x?ssl-mode=disabled"
        );
        assert_eq!(redact_url(url), "mysql://queue:***@127.0.0.1:3366/queue");
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact_url("mysql://u:p%40ss@h/db"), "mysql://u:***@h/db");
    }

    #[test]
    fn test_db_names() {
        assert!(is_test_db_name("qt_0123abcd"));
        assert!(!is_test_db_name("qt_0123ABCD"));
        assert!(!is_test_db_name("qt_0123abc"));
        assert!(!is_test_db_name("qt_0123abcd`; DROP"));
        assert!(!is_test_db_name("queue"));
    }
}
