//! The runtime: claims jobs, runs them, records outcomes, keeps leases alive,
//! rescues jobs whose worker was lost, moves due jobs into the claim index.
//!
//! One process runs these tokio tasks:
//! - the **producer** claims at most as many jobs as there are free slots
//!   (`concurrency`) and spawns one task per job;
//! - the **acker** writes outcomes, successes in batches;
//! - the **heartbeat** extends the leases of jobs in flight, in one
//!   statement per beat;
//! - the **rescuer** takes back jobs whose lease expired (any runtime's);
//! - the **dispatcher** moves scheduled jobs that came due into the claim index;
//! - the **prober** looks behind the claim cursors (see `store::claim`);
//! - the **cron scheduler** fires recurring tasks (see `runtime::cron`).

use crate::client::Client;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::settings::Settings;
use queue_core::JobId;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

mod completer;
mod cron;
mod cursors;
mod dispatcher;
mod executor;
mod galera;
mod heartbeat;
#[cfg(feature = "testing")]
pub(crate) mod inline;
pub(crate) mod monitor;
mod outage;
mod outcome;
mod parker;
mod producer;
mod rescuer;
mod spares;

pub(crate) use outage::Outage;
use outcome::Ack;

/// Configures and starts a [`Runtime`].
///
/// The setters store their argument as given and never fail; [`start`]
/// checks every setting and names each rule broken in one
/// [`Error::InvalidArgument`]. The rules are on each setter.
///
/// [`start`]: RuntimeBuilder::start
#[derive(Debug)]
#[must_use = "a runtime runs only after `.start().await`"]
pub struct RuntimeBuilder {
    client: Client,
    settings: Settings,
    cron: bool,
    wakeups: bool,
}

impl RuntimeBuilder {
    /// Tasks in flight at once in this process (default 10). From 1 to
    /// 10,000: `start` rejects `0` (a runtime that runs nothing) and more.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.settings.concurrency = n;
        self
    }

    /// At most `n` jobs of `queue` in flight in this runtime at once (the
    /// runtime-wide [`concurrency`](Self::concurrency) still holds), so a
    /// slow queue cannot take every slot from the others, as Oban's
    /// `queues: [mail: 5]`. Call it once per queue. `start` rejects a queue
    /// this runtime does not serve, `0` (use
    /// [`Client::pause_queue`](crate::Client::pause_queue)) and a queue set
    /// twice, and warns about a limit not below `concurrency`.
    ///
    /// The limit is kept at claim time: the runtime never claims more of the
    /// queue's jobs than its free share, so no claimed job waits for it.
    pub fn queue_concurrency(mut self, queue: impl Into<String>, n: usize) -> Self {
        self.settings.queue_limits.push((queue.into(), n));
        self
    }

    /// The queues this runtime claims from, in the order it serves them
    /// (default: every queue a task of the program names). `start` rejects
    /// an empty list (a runtime that runs nothing), an invalid name (1 to 64
    /// ASCII letters, digits, `_`, `.`, `:`, `-`) and a name listed twice.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.queues = Some(queues.into_iter().map(Into::into).collect());
        self
    }

    /// How often an idle runtime looks for jobs that other processes
    /// enqueued (default 500 ms). Jobs enqueued by this process wake it at
    /// once. From 10 ms (shorter is a busy loop on the database) to 1 h.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.settings.poll_interval = d;
        self
    }

    /// How long a claim holds a job before another runtime may take it back
    /// (default 15 s). Renewed every `heartbeat` while the job runs. From
    /// 1 s (a shorter lease expires during an ordinary slow statement) to
    /// 1 h (the jobs of a lost worker wait their lease before they run again).
    pub fn lease(mut self, d: Duration) -> Self {
        self.settings.lease = d;
        self
    }

    /// How often leases of running jobs are renewed (default: 5 s, or a
    /// third of the lease if that is shorter). At least 50 ms, and shorter
    /// than the lease: `start` rejects a heartbeat at or above the lease,
    /// whose jobs would be taken back and run twice while they run. More
    /// than half the lease starts with a warning: one late beat (a slow
    /// statement, a busy pool) lets a lease expire; a third or less is safer.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.settings.heartbeat = Some(d);
        self
    }

    /// Jobs claimed beyond the free slots, so that a claim brings back a
    /// batch big enough to hide its round trips and the next jobs are
    /// already at hand when slots free up. Prefetched jobs are leased (and
    /// heartbeated) while they wait for a slot, and take free slots in
    /// priority order: a job of a higher priority claimed meanwhile starts
    /// before them. `0` claims only for free slots; at most 10,000.
    ///
    /// Unset, the prefetch adapts to the jobs' pace: about as many jobs as
    /// the runtime finished in the last 25 ms, between 1 and 16 ×
    /// `concurrency` (it starts at `concurrency`). Fast jobs are then
    /// claimed in batches of up to 17 × `concurrency` (fewer statements and
    /// commits per job), while slow jobs are not held here, out of other
    /// runtimes' reach, waiting for a slot. Set, it is fixed.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.settings.prefetch = Some(n);
        self
    }

    /// Whether this runtime fires cron tasks (default true).
    pub fn cron(mut self, enabled: bool) -> Self {
        self.cron = enabled;
        self
    }

    /// Whether jobs enqueued by other processes wake this runtime at once
    /// while it is idle (default true). An idle runtime then parks one
    /// connection of its own (beside the pool) in `SELECT SLEEP(5)`,
    /// registered in `queue_sleepers`; an enqueue that commits a job for
    /// one of its queues ends that sleep with `KILL QUERY`. That needs no
    /// privilege when both processes connect as the same database user,
    /// and CONNECTION ADMIN (or SUPER) otherwise; without it, or through a
    /// proxy that does not keep server connection ids (ProxySQL), the
    /// runtime finds such jobs by polling, as with `false`. Jobs enqueued
    /// in this process wake it either way. On a MariaDB Galera node they
    /// are off whatever this says: connection ids are per node, so a
    /// `KILL QUERY` from an enqueuer on another node would hit an
    /// unrelated statement there.
    pub fn cross_process_wakeups(mut self, enabled: bool) -> Self {
        self.wakeups = enabled;
        self
    }

    /// Checks the settings, collects the program's tasks and starts the
    /// runtime.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming every rule of the setters broken
    /// (e.g. "heartbeat must be shorter than the lease"),
    /// [`Error::DuplicateTask`] when two tasks share a name,
    /// [`Error::SchemaTooOld`] or [`Error::SchemaTooNew`] if the database's
    /// schema is not this build's.
    pub async fn start(self) -> Result<Runtime> {
        let registry = Registry::collect()?;
        let settings = self.settings.check(|| {
            let q = registry.queues();
            if q.is_empty() {
                vec![queue_core::TaskOptions::DEFAULT_QUEUE.to_owned()]
            } else {
                q
            }
        })?;
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        let queues = settings.queues;
        let n_queues = queues.len();
        // On a Galera cluster the sentinels' INSERT can lose a
        // certification race with another node's runtime starting (error
        // 1213 at COMMIT): retried like a deadlock, never a failed start.
        crate::store::retry_deadlocks(|| self.client.check_schema(self.client.pool())).await?;
        crate::store::retry_deadlocks(|| self.client.store().ensure_sentinels(&queues)).await?;
        let galera = self.client.store().galera_status().await;
        let owner = format!("rt-{}", uuid::Uuid::new_v4().simple());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            limits: registry.limits(),
            blocked_cursors: Default::default(),
            registry,
            owner,
            queues,
            semaphore: Arc::new(Semaphore::new(settings.concurrency)),
            waiters: Default::default(),
            spares: Default::default(),
            in_flight: Mutex::new(HashMap::new()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            queue_in_flight: (0..settings.queue_limits.len())
                .map(|_| AtomicUsize::new(0))
                .collect(),
            queue_limits: settings.queue_limits,
            pending_done: Mutex::new(Vec::new()),
            paused: (0..n_queues)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            slot_freed: tokio::sync::Notify::new(),
            ack_tx,
            stop: stop_rx,
            hand_back: watch::channel(false).0,
            poll_interval: settings.poll_interval,
            park: watch::channel(None).0,
            park_woken: tokio::sync::Notify::new(),
            lease: settings.lease,
            heartbeat: settings.heartbeat,
            prefetch: settings.prefetch,
            adaptive_prefetch: settings.adaptive_prefetch,
            finished_total: std::sync::atomic::AtomicU64::new(0),
            concurrency: settings.concurrency,
            outage: Outage::default(),
            tally: Mutex::new(Default::default()),
            started_at: crate::time::clamp(self.client.now()),
            galera: Mutex::new(None),
            galera_synced: std::sync::atomic::AtomicBool::new(true),
            lane: Mutex::new(None),
        });
        if let Some(status) = galera.clone() {
            tracing::info!(
                cluster_size = status.cluster_size,
                state = %status.local_state,
                cluster_status = %status.cluster_status,
                "the database is a Galera node"
            );
            shared.set_galera(status);
        }
        // In the registry before the first claim; a failure is logged and
        // the rescuer's next beat tries again.
        shared.beat_registry("registering the runtime").await;
        if let Some(status) = &galera {
            // Its lane of the claim index, before the first claim.
            shared.read_lane(&status.node).await;
        }
        tracing::info!(owner = %shared.owner, queues = ?shared.queues, concurrency = settings.concurrency, "queue runtime starting");
        let mut background = Vec::new();
        let acker = tokio::spawn(completer::acker(shared.clone(), ack_rx));
        background.push(tokio::spawn(heartbeat::heartbeat(shared.clone())));
        background.push(tokio::spawn(rescuer::rescuer(shared.clone())));
        background.push(tokio::spawn(dispatcher::dispatcher(shared.clone())));
        background.push(tokio::spawn(monitor::monitor(shared.clone())));
        if self.cron {
            background.push(tokio::spawn(cron::scheduler(shared.clone())));
        }
        if self.wakeups && galera.is_some() {
            // A sleeper is woken by `KILL QUERY <its connection id>` sent by
            // the enqueuer on *its* connection's server; on a Galera cluster
            // connection ids are per node, so an enqueuer on another node
            // would end some unrelated statement there (measured: an
            // enqueue failing with 1317 "Query execution was interrupted").
            tracing::info!(
                "cross-process wake-ups are off on a Galera cluster (connection ids are per node): jobs enqueued by other processes are found by polling"
            );
        } else if self.wakeups {
            background.push(tokio::spawn(parker::parker(shared.clone())));
        }
        if galera.is_some() {
            background.push(tokio::spawn(galera::watcher(shared.clone())));
        }
        let producer = tokio::spawn(producer::producer(shared.clone()));
        Ok(Runtime {
            shared,
            stop_tx,
            producer: Some(producer),
            acker: Some(acker),
            background,
        })
    }
}

/// A running job runtime. Stop it with [`Runtime::shutdown`]; dropping it
/// stops claiming but does not wait for jobs in flight.
#[derive(Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    producer: Option<JoinHandle<()>>,
    acker: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Runtime {
    /// A builder for a runtime on `client`.
    pub fn builder(client: Client) -> RuntimeBuilder {
        RuntimeBuilder {
            client,
            settings: Settings::default(),
            cron: true,
            wakeups: true,
        }
    }

    /// This runtime's unique owner id, as stored in `lease_owner`.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// The queues this runtime serves.
    pub fn queues(&self) -> &[String] {
        &self.shared.queues
    }

    /// Jobs running in this process now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Concurrency slots this runtime passed to spares (docs/flow-control.md),
    /// heirs it found disinherited (the slot's holder had lost its lease
    /// before its release), and spares it holds now. Not public API.
    #[doc(hidden)]
    pub fn spare_counts(&self) -> (u64, u64, usize) {
        self.shared.spares.counts()
    }

    /// Stops claiming, lets running jobs finish within `drain`, then stops
    /// the rest and hands them back to the queue at once (their interrupted
    /// attempt is not counted), so another runtime can start them without
    /// waiting for their lease. `Duration::MAX` waits for every job to end.
    ///
    /// # Errors
    /// If outcomes could not be written before the runtime stopped (the jobs
    /// are then taken back when their lease expires).
    pub async fn shutdown(mut self, drain: Duration) -> Result<()> {
        self.stop_tx.send_replace(true);
        if let Some(p) = self.producer.take() {
            let _ = p.await;
        }
        // Spares never started: handed back at once.
        spares::close(&self.shared);
        // A drain too long for an `Instant` (`Duration::MAX`) waits as long
        // as the jobs run.
        let until = Instant::now().checked_add(drain);
        while until.is_none_or(|t| Instant::now() < t) && self.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let handed_back = self.in_flight();
        // Running handlers are stopped and report a hand-back.
        self.shared.hand_back.send_replace(true);
        if handed_back > 0 {
            tracing::info!(
                jobs = handed_back,
                "handing back unfinished jobs at shutdown"
            );
        }
        // Wait for the executors to report (aborted ones report a hand-back).
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && self.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Outcomes are queued before an executor leaves `in_flight`... but
        // removed only once written: stop the acker after it drained.
        if let Some(a) = self.acker.take() {
            self.shared.ack_tx.send(Ack::Stop).ok();
            let _ = tokio::time::timeout(Duration::from_secs(30), a).await;
        }
        let remaining = self.in_flight();
        for b in self.background.drain(..) {
            b.abort();
        }
        // Counts the acker could not write (the database was away) are lost.
        let tally = std::mem::take(&mut *self.shared.tally());
        if let Err(e) = self.shared.client.store().add_throughput(&tally).await {
            tracing::debug!(error = %e, "per-minute counts not written at shutdown");
        }
        if let Err(e) = self
            .shared
            .client
            .store()
            .unregister_runtime(&self.shared.owner)
            .await
        {
            tracing::warn!(error = %e, "could not remove the runtime from queue_runtimes; it expires");
        }
        tracing::info!(owner = %self.shared.owner, "queue runtime stopped");
        if remaining > 0 {
            return Err(Error::Shutdown(format!(
                "{remaining} jobs did not report an outcome; their leases will expire"
            )));
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_tx.send_replace(true);
        if self.acker.is_some() {
            self.shared.ack_tx.send(Ack::Stop).ok();
        }
        for b in &self.background {
            b.abort();
        }
    }
}

/// State shared by the runtime's tasks.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) registry: Registry,
    /// The limits of the registry's tasks, for the claim.
    pub(crate) limits: crate::store::limits::LimitTable,
    /// Where this runtime's releases read blocked jobs from, per key.
    blocked_cursors: Arc<crate::store::limits::BlockedCursors>,
    pub(crate) owner: String,
    pub(crate) queues: Vec<String>,
    semaphore: Arc<Semaphore>,
    /// Prefetched jobs waiting for a slot, the most urgent first.
    waiters: executor::Waiters,
    /// Spares held for the concurrency slots this runtime's jobs pass on.
    spares: spares::Spares,
    in_flight: Mutex<HashMap<JobId, InFlight>>,
    /// Prefetched jobs waiting for a free slot.
    waiting: std::sync::atomic::AtomicUsize,
    /// Per served queue: its jobs claimed by this runtime and not yet
    /// finished (running or waiting for a slot).
    queue_in_flight: Vec<AtomicUsize>,
    /// Per served queue: its limit on jobs in flight, if any.
    queue_limits: Vec<Option<usize>>,
    /// Per served queue: paused cluster-wide, as the producer last read.
    paused: Vec<std::sync::atomic::AtomicBool>,
    /// Successes (of jobs without a concurrency slot) not yet written: the
    /// next claim takes them into its transaction, or the acker writes them
    /// after its linger, whichever comes first.
    pending_done: Mutex<Vec<(JobId, u32)>>,
    /// Signalled when a job's slot is released or a prefetched job takes one.
    slot_freed: tokio::sync::Notify,
    ack_tx: mpsc::UnboundedSender<Ack>,
    pub(crate) stop: watch::Receiver<bool>,
    /// Set when a shutdown's drain time is over: running handlers stop.
    hand_back: watch::Sender<bool>,
    pub(crate) poll_interval: Duration,
    /// What the parker watches: `Some` while the producer waits idle.
    park: watch::Sender<Option<Vec<crate::store::wake::Look>>>,
    /// Signalled by the parker when another process's enqueue ended its
    /// sleep (or its look found work).
    park_woken: tokio::sync::Notify,
    lease: Duration,
    heartbeat: Duration,
    prefetch: usize,
    /// Whether prefetch adapts below `prefetch` to the pace of the jobs.
    adaptive_prefetch: bool,
    /// Jobs finished since start (their outcome written): the pace that
    /// adaptive prefetch follows.
    finished_total: std::sync::atomic::AtomicU64,
    /// Jobs run at once at most.
    concurrency: usize,
    pub(crate) outage: Outage,
    /// Per-minute counts not yet written (`queue_throughput`): the acker
    /// writes them with its next acknowledgement, or alone within a second.
    tally: Mutex<crate::store::operator::Tally>,
    /// When the runtime started (its row in `queue_runtimes`).
    started_at: chrono::DateTime<chrono::Utc>,
    /// The Galera node's state as last read (`None` off Galera).
    galera: Mutex<Option<crate::admin::GaleraStatus>>,
    /// False while the Galera node is not Synced: the producer waits.
    galera_synced: std::sync::atomic::AtomicBool,
    /// The lane of the claim index this runtime claims first: on a Galera
    /// cluster with runtimes on two nodes or more (`runtime::galera`).
    lane: Mutex<Option<crate::store::Lane>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// What this runtime can take straight from a released slot: the
    /// queues it serves that are not paused and have no limit of their own;
    /// `None` while it stops.
    fn handoff(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        ending: usize,
    ) -> Option<crate::store::limits::HandOff> {
        if self.limits.is_empty() {
            return None;
        }
        // A stopping runtime takes nothing, but its heirs' slots are
        // recorded under its owner id.
        let stopping = self.stopping();
        let queues: Vec<String> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !stopping
                    && self.queue_limits[*i].is_none()
                    && !self.paused[*i].load(std::sync::atomic::Ordering::SeqCst)
            })
            .map(|(_, q)| q.clone())
            .collect();
        // Each of the `ending` jobs may be followed here by the job its
        // freed slot goes to: a hand-over costs less than the move into the
        // claim index and the claim it saves (no claim-index row written or
        // deleted), so it comes before claims. The producer claims for the
        // window (slots plus prefetch) that is left, and counts the handed
        // jobs as prefetched ones. Beyond those, room is what the window
        // has free.
        let in_flight = self.in_flight.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        let room = if stopping {
            0
        } else {
            ending.saturating_add((self.concurrency + self.prefetch).saturating_sub(in_flight))
        };
        Some(crate::store::limits::HandOff {
            room,
            owner: self.owner.clone(),
            lease_until: crate::time::clamp(crate::clock::add(now, self.lease)),
            queues,
            cursors: self.blocked_cursors.clone(),
        })
    }

    /// The per-minute counts not yet written.
    pub(crate) fn tally(&self) -> std::sync::MutexGuard<'_, crate::store::operator::Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an event of a job of `queue` and `task`, now.
    pub(crate) fn count(&self, queue: &str, task: &str, event: crate::store::operator::Event) {
        let now = self.client.now();
        self.tally().add(now, queue, task, event);
    }

    /// Writes this runtime's row of the registry (`Client::runtimes`); a
    /// failure is tracked as an outage of `what` and the next beat retries.
    pub(super) async fn beat_registry(&self, what: &str) {
        let sent = Instant::now();
        let written = self.client.store().beat_runtime(&self.registry_row()).await;
        self.outage.track(what, sent, &written);
    }

    /// This runtime's row in `queue_runtimes`, as of now.
    pub(crate) fn registry_row(&self) -> crate::store::operator::RuntimeRow {
        crate::store::operator::RuntimeRow {
            owner: self.owner.clone(),
            host: host_name(),
            pid: std::process::id(),
            queues: self.queues.clone(),
            concurrency: u32::try_from(self.concurrency).unwrap_or(u32::MAX),
            in_flight: self
                .in_flight
                .lock()
                .map(|m| u32::try_from(m.len()).unwrap_or(u32::MAX))
                .unwrap_or(0),
            started_at: self.started_at,
            heartbeat_at: crate::time::clamp(self.client.now()),
            node: self
                .galera
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|g| g.node.clone())
                .filter(|n| !n.is_empty()),
        }
    }

    /// Queues a success for the next claim or the acker.
    pub(super) fn push_success(&self, id: JobId, attempt: u32) {
        self.pending_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, attempt));
    }

    /// How many successes wait to be written.
    fn pending_successes(&self) -> usize {
        self.pending_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Takes up to `n` successes to write.
    pub(crate) fn take_successes(&self, n: usize) -> Vec<(JobId, u32)> {
        let mut all = self.pending_done.lock().unwrap_or_else(|p| p.into_inner());
        let n = n.min(all.len());
        all.drain(..n).collect()
    }

    /// The concurrency slot the job runs under, if any.
    fn slot_of(&self, id: JobId, attempt: u32) -> Option<Vec<u8>> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id)
            .filter(|f| f.attempt == attempt)
            .and_then(|f| f.slot.clone())
    }

    /// Drops a job from the in-flight set once its outcome is written, but
    /// only the entry of that attempt: after an outage longer than the lease
    /// this runtime may have claimed the job again, and the new attempt must
    /// keep its heartbeats.
    fn finished(&self, id: JobId, attempt: u32) {
        self.finished_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let orphans = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&id).is_none_or(|f| f.attempt != attempt) {
                return;
            }
            crate::telemetry::in_flight(-1);
            match map.remove(&id).and_then(|f| f.slot) {
                Some(key) => self.spares.holder(&key, -1),
                None => Vec::new(),
            }
        };
        spares::hand_back(
            self,
            orphans,
            "a spare whose key has no slot left in this runtime",
        );
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `d` or until the runtime stops; returns true if stopping.
    pub(crate) async fn sleep_or_stop(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        self.stopping()
    }
}

/// This machine's host name: `HOSTNAME`, else the kernel's, else "unknown".
fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().chars().take(255).collect::<String>())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    })
    .clone()
}

struct InFlight {
    attempt: u32,
    /// The attempt's outcome is queued for the acker (or being written): a
    /// heartbeat that no longer matches the job may just have raced with
    /// its success, so the job is not counted as lost.
    reported: bool,
    /// The concurrency key whose slot the job holds.
    slot: Option<Vec<u8>>,
    /// The spare that took the slot when the job succeeded (`spares`).
    heir: Option<(JobId, u32)>,
    /// An heir whose slot is not recorded yet (its predecessor's release
    /// is on its way, or not sent yet): its outcome waits.
    unsettled: bool,
    /// The outcome of an unsettled heir, kept until it is settled.
    deferred: Option<Ack>,
}
