//! The client: a pool, the server's flavour, a clock, migrations, inserts
//! and the wake-ups of this process's runtimes. Its admin methods are in
//! `admin`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use queue_core::JobId;
use sqlx::mysql::MySqlPool;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::connect::ClientOptions;
use crate::error::Result;
use crate::flavor::Flavor;
use crate::store::{NewJob, Store};

/// A handle on the job database. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) clock: Arc<dyn Clock>,
    /// Bumped when this process makes a job ready (wakes local runtimes).
    pub(crate) ready_gen: watch::Sender<u64>,
    /// Bumped when this process schedules a job for later (wakes dispatchers).
    pub(crate) scheduled_gen: watch::Sender<u64>,
    /// Bumped when this process pauses or resumes a queue (its runtimes
    /// read the paused queues again at once).
    pub(crate) paused_gen: watch::Sender<u64>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Set once the schema was found to be this build's (a failure is not
    /// remembered: the next call checks again).
    pub(crate) schema_checked: tokio::sync::OnceCell<()>,
    /// Concurrent single enqueues, batched (`coalesce`).
    pub(crate) coalescer: crate::coalesce::Coalescer,
    /// Wake-ups of other processes' runtimes (`wakeup`).
    pub(crate) wakeups: crate::wakeup::Wakeups,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("flavor", &self.inner.store.flavor)
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects a new pool to `url` (`mysql://user:password@host:port/database`,
    /// or `mariadb://…`), with [`ClientOptions`]' defaults: up to 20
    /// connections, a 10-s acquire timeout.
    ///
    /// TLS is asked for with URL parameters (`ssl-mode=REQUIRED`,
    /// `VERIFY_CA` or `VERIFY_IDENTITY`, `ssl-ca=<file>`) and needs the `tls`
    /// feature.
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`](crate::Error::InvalidArgument) for another database's URL (`postgres://`),
    ///   a URL that does not parse, or one requiring TLS without the `tls` feature.
    /// - [`Error::Database`](crate::Error::Database) at once if the server refuses the connection or
    ///   its host does not resolve (the message names `host:port`), after
    ///   the acquire timeout if it accepts but does not answer, or if it
    ///   rejects the credentials.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, ClientOptions::new()).await
    }

    /// [`connect`](Self::connect) with the pool's size and acquire timeout
    /// of `options`.
    ///
    /// ```rust,no_run
    /// # async fn example() -> queue_runtime::Result<()> {
    /// use std::time::Duration;
    /// use queue_runtime::{Client, ClientOptions};
    ///
    /// let options = ClientOptions::new().acquire_timeout(Duration::from_secs(30));
    /// let client = Client::connect_with("mysql://queue:queue@127.0.0.1:3366/queue", options).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        let pool = crate::connect::connect_pool(url, &options).await?;
        Self::from_pool(pool).await
    }

    /// Uses the host application's pool. The runtime's statements name all
    /// their tables and set their own isolation level per transaction, so
    /// the pool's session settings do not matter.
    ///
    /// # Errors
    /// If the server cannot be reached to detect its flavour.
    pub async fn from_pool(pool: MySqlPool) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner {
                store: Store::detect(pool).await?,
                clock: Arc::new(SystemClock),
                ready_gen: watch::channel(0).0,
                scheduled_gen: watch::channel(0).0,
                paused_gen: watch::channel(0).0,
                metrics: crate::metrics::Metrics::default(),
                schema_checked: tokio::sync::OnceCell::new(),
                coalescer: Default::default(),
                wakeups: Default::default(),
            }),
        })
    }

    /// This client reading time from `clock` (for tests: a [`ManualClock`](crate::ManualClock)).
    /// Returns a new client on the same pool; clones of the old one keep their clock.
    pub fn with_clock(&self, clock: impl Clock) -> Client {
        self.derived(self.inner.store.clone(), Arc::new(clock))
    }

    /// A new client on this one's pool with `store` and `clock`: its own
    /// wake-ups and metrics, this one's schema check.
    fn derived(&self, store: Store, clock: Arc<dyn Clock>) -> Client {
        Client {
            inner: Arc::new(Inner {
                store,
                clock,
                ready_gen: watch::channel(0).0,
                scheduled_gen: watch::channel(0).0,
                paused_gen: watch::channel(0).0,
                metrics: crate::metrics::Metrics::default(),
                schema_checked: tokio::sync::OnceCell::new_with(
                    self.inner.schema_checked.get().copied(),
                ),
                coalescer: Default::default(),
                wakeups: Default::default(),
            }),
        }
    }

    /// This client as if its server were of `flavor`: for tests that run
    /// the MySQL statements against a MariaDB server (MariaDB ignores
    /// MySQL's optimizer hints). Not public API.
    #[doc(hidden)]
    pub fn with_flavor(&self, flavor: Flavor) -> Client {
        self.derived(
            Store::new(self.inner.store.pool.clone(), flavor).with_galera(self.inner.store.galera),
            self.inner.clock.clone(),
        )
    }

    /// This client with its transactions guarded as on a Galera node (or
    /// not), whatever the server: for tests that run the guarded
    /// transactions (docs/scaling.md) on a single server, where the guard's
    /// SQL runs as it does on Galera. Not public API.
    #[doc(hidden)]
    pub fn __with_galera_guard(&self, on: bool) -> Client {
        self.derived(
            self.inner.store.clone().with_galera(on),
            self.inner.clock.clone(),
        )
    }

    /// The largest payload, in bytes of JSON, the server takes: its
    /// `max_allowed_packet` less 128 KiB for the rest of the row. A bigger
    /// one is refused at enqueue with [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) before
    /// anything is sent. Read from the server once per client.
    ///
    /// # Errors
    /// If the server cannot be asked.
    pub async fn payload_limit(&self) -> Result<u64> {
        Ok(crate::store::payload_limit(
            self.store().max_packet().await?,
        ))
    }

    /// The pool.
    ///
    /// Its [`connect_options()`](sqlx::Pool::connect_options) are sqlx's
    /// `MySqlConnectOptions`, whose `Debug` output includes the password:
    /// do not log them. Nothing of this crate prints them (nor the URL).
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.store.pool
    }

    /// The server's flavour, detected at connect.
    pub fn flavor(&self) -> Flavor {
        self.inner.store.flavor
    }

    /// The current time of this client's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Applies the bundled schema migrations. Idempotent, and safe to call
    /// from many processes at once.
    ///
    /// # Errors
    /// If a statement fails, [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) if the schema is newer
    /// than this build, [`Error::InvalidArgument`](crate::Error::InvalidArgument) if the URL (or pool)
    /// names no database.
    pub async fn migrate(&self) -> Result<()> {
        crate::store::migrate::run(self.pool()).await?;
        let _ = self.inner.schema_checked.set(());
        Ok(())
    }

    /// Checks, once per client, that the database's schema is this build's
    /// ([`Error::SchemaTooNew`](crate::Error::SchemaTooNew), [`Error::SchemaTooOld`](crate::Error::SchemaTooOld)), on `executor`:
    /// the pool, or the caller's connection when enqueueing inside its
    /// transaction (a read of `queue_schema_migrations`, no locks).
    pub(crate) async fn check_schema<'e>(
        &self,
        executor: impl sqlx::MySqlExecutor<'e>,
    ) -> Result<()> {
        self.inner
            .schema_checked
            .get_or_try_init(|| crate::store::migrate::check(executor))
            .await?;
        Ok(())
    }

    /// Inserts jobs built at `now` (the instant that decides which are due)
    /// in one transaction on the prepared path, and wakes this process's
    /// runtimes and (after a read of the sleeper registry, in a task of its
    /// own) other processes' idle ones.
    pub(crate) async fn insert_and_wake(
        &self,
        jobs: Vec<NewJob>,
        now: DateTime<Utc>,
    ) -> Result<Vec<JobId>> {
        let any_scheduled = jobs.iter().any(|j| j.run_at > now);
        self.check_schema(self.pool()).await?;
        let ids = self.store().insert_jobs(&jobs, now).await?;
        let mut queues: Vec<String> = jobs
            .iter()
            .filter(|j| j.run_at <= now)
            .map(|j| j.queue.clone())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        if !queues.is_empty() {
            self.wake_ready();
            let client = self.clone();
            tokio::spawn(async move {
                let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
                match client.store().sleepers(&queues, now).await {
                    Ok(sleepers) => client.wake_sleepers(&sleepers),
                    Err(e) => tracing::debug!(error = %e, "reading the sleeper registry failed"),
                }
            });
        }
        if any_scheduled {
            self.inner.scheduled_gen.send_modify(|g| *g += 1);
        }
        Ok(ids)
    }

    /// Wakes this process's runtimes: a job was made ready.
    pub(crate) fn wake_ready(&self) {
        self.inner.ready_gen.send_modify(|g| *g += 1);
    }
}
