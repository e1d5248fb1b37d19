//! A fresh, migrated database per test.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use crate::{Client, ClientOptions, Error, Result};

/// Prefix of the names of the databases [`TestDatabase`] makes.
pub const TEST_DATABASE_PREFIX: &str = "queue_test_";

/// A database of its own for one test, made on the server that
/// `DATABASE_URL` names, with the runtime's schema migrated, and dropped
/// when the value is dropped (or by [`TestDatabase::close`], which reports
/// errors), as `#[sqlx::test]` does.
///
/// ```rust,no_run
/// use queue_runtime::testing::TestDatabase;
///
/// #[tokio::test]
/// async fn signup_enqueues_a_welcome_email() -> Result<(), Box<dyn std::error::Error>> {
///     let db = TestDatabase::new().await?; // reads DATABASE_URL
///     let client = db.client();
///     // ... your code, then queue_runtime::testing's helpers on `client`
///     db.close().await?; // or let it drop
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The user in the URL must be allowed to create and drop databases. The
/// database is named `queue_test_` and 12 random hex digits, with
/// `utf8mb4`. Your own tables go in the same database: create them with
/// `sqlx::query(...).execute(client.pool())`, or run your migrations on
/// `client.pool()`.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    /// Connect options of the server, without the test database.
    server: MySqlConnectOptions,
    client: Client,
    dropped: bool,
}

impl TestDatabase {
    /// Makes a database on the server of the `DATABASE_URL` environment
    /// variable, migrates it and connects a [`Client`] to it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `DATABASE_URL` is unset or not a
    /// MySQL/MariaDB URL; the server's error if it cannot be reached or
    /// refuses `CREATE DATABASE`.
    pub async fn new() -> Result<TestDatabase> {
        let url = std::env::var("DATABASE_URL").map_err(|_| {
            Error::InvalidArgument(
                "DATABASE_URL is not set: queue_runtime::testing needs a MySQL or MariaDB \
                 server whose user may create databases (e.g. \
                 DATABASE_URL=mysql://root:password@127.0.0.1:3306/mysql)"
                    .to_owned(),
            )
        })?;
        Self::on_server(&url).await
    }

    /// Like [`TestDatabase::new`], on the server of `url` (its database
    /// part is not used).
    ///
    /// # Errors
    /// As [`TestDatabase::new`].
    pub async fn on_server(url: &str) -> Result<TestDatabase> {
        let server = crate::connect::parse_url(url)?
            .database("information_schema")
            .disable_statement_logging();
        let mut conn = MySqlConnection::connect_with(&server).await?;
        let name = format!(
            "{TEST_DATABASE_PREFIX}{:012x}",
            fastrand::u64(..) & 0xffff_ffff_ffff
        );
        // Safe: `name` is our prefix and hex digits.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )))
        .execute(&mut conn)
        .await?;
        let _ = conn.close().await;
        let made = async {
            let pool = crate::connect::connect_pool_with(
                server.clone().database(&name),
                &ClientOptions::new().max_connections(10),
            )
            .await?;
            let client = Client::from_pool(pool).await?;
            client.migrate().await?;
            Ok::<_, Error>(client)
        }
        .await;
        let db = |client| TestDatabase {
            name: name.clone(),
            server: server.clone(),
            client,
            dropped: false,
        };
        match made {
            Ok(client) => Ok(db(client)),
            Err(e) => {
                let _ = drop_database(&server, &name).await;
                Err(e)
            }
        }
    }

    /// The client on the test database (clone it freely).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The pool on the test database, for your own tables.
    pub fn pool(&self) -> &MySqlPool {
        self.client.pool()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the pool and drops the database now.
    ///
    /// # Errors
    /// The server's error if the database cannot be dropped.
    pub async fn close(mut self) -> Result<()> {
        self.dropped = true;
        // A connection still out (a `Performed` kept alive, say) would make
        // `close` wait for it: the DROP below then fails on its lock wait
        // and says so, rather than hang.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.pool().close()).await;
        drop_database(&self.server, &self.name).await
    }
}

impl Drop for TestDatabase {
    /// Drops the database, on a thread of its own (a test's runtime may be
    /// single-threaded, and `drop` cannot wait on it): within 10 s, or it
    /// is left behind with a warning.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), drop_database(&server, &name))
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))?
                    .map_err(std::io::Error::other)
            })
        });
        if let Ok(Err(e)) = dropper.join() {
            tracing::warn!(database = %self.name, error = %e, "could not drop the test database");
        }
    }
}

async fn drop_database(server: &MySqlConnectOptions, name: &str) -> Result<()> {
    let mut conn = MySqlConnection::connect_with(server).await?;
    // A transaction still open on the database (a `Performed` kept alive)
    // holds a metadata lock that DROP waits for: fail after 10 s instead
    // of the server's default of a year.
    sqlx::query("SET SESSION lock_wait_timeout = 10")
        .execute(&mut conn)
        .await?;
    // Safe: only names this module made reach here.
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

/// A [`Client`] on a pool that `#[sqlx::test]` made, with the runtime's
/// schema migrated into its database: the way to use this module's helpers
/// in a test that sqlx sets up (and drops).
///
/// ```rust,ignore
/// #[sqlx::test]
/// async fn signup(pool: sqlx::MySqlPool) -> Result<(), Box<dyn std::error::Error>> {
///     let client = queue_runtime::testing::client_for(pool).await?;
///     // ...
///     Ok(())
/// }
/// ```
///
/// # Errors
/// If the server cannot be reached or a migration fails.
pub async fn client_for(pool: MySqlPool) -> Result<Client> {
    let client = Client::from_pool(pool).await?;
    client.migrate().await?;
    Ok(client)
}
