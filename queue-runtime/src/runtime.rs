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
//! - the **cron scheduler** fires recurring tasks (see `cron`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use queue_core::{Deadline, JobId, TaskError, TaskErrorKind};
use std::panic::AssertUnwindSafe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use futures_util::FutureExt;
use tracing::Instrument;

use crate::client::Client;
use crate::clock::add;
use crate::context::TaskContext;
use crate::error::{Error, Result, is_connection_error};
use crate::registry::Registry;
use crate::settings::Settings;
use crate::store::{ClaimTicket, Claimed, ClaimedJob, Cursors};

/// Extra time a handler gets past its deadline before it is stopped.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);
/// How often a runtime looks for ready jobs missing from the claim index.
const HEAL_INTERVAL: Duration = Duration::from_secs(3600);
/// How long an unknown task's job waits before it is offered again.
const UNKNOWN_TASK_DELAY: Duration = Duration::from_secs(60);
/// How often this process warns about each unknown task name it claims.
const UNKNOWN_TASK_LOG_EVERY: Duration = Duration::from_secs(3600);

/// The unknown task names this process warned about, and when: one warning
/// per name per hour, however many runtimes and claims (a job of an unknown
/// task comes back every minute, forever).
static UNKNOWN_TASKS_LOGGED: LogLimiter = LogLimiter::new(UNKNOWN_TASK_LOG_EVERY);

/// Lets through the first sighting of each key, then one per `every`.
#[derive(Debug)]
struct LogLimiter {
    every: Duration,
    last: Mutex<BTreeMap<String, Instant>>,
}

impl LogLimiter {
    const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether to log `key` at `now`: its first sighting, or `every` after
    /// the last one logged.
    fn first_in_a_while(&self, key: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(key) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

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
}

impl RuntimeBuilder {
    /// Tasks in flight at once in this process (default 10). From 1 to
    /// 10,000: `start` rejects `0` (a runtime that runs nothing) and more.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.settings.concurrency = n;
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
    /// already at hand when slots free up (default: as many as
    /// `concurrency`). Prefetched jobs are leased (and heartbeated) while
    /// they wait for a slot; a job that arrives meanwhile with a higher
    /// priority waits behind at most this many. `0` claims only for free
    /// slots; at most 10,000.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.settings.prefetch = Some(n);
        self
    }

    /// Whether this runtime fires cron tasks (default true).
    pub fn cron(mut self, enabled: bool) -> Self {
        self.cron = enabled;
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
        self.client.check_schema(self.client.pool()).await?;
        self.client.store().ensure_sentinels(&queues).await?;
        let owner = format!("rt-{}", uuid::Uuid::new_v4().simple());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            registry,
            owner,
            queues,
            semaphore: Arc::new(Semaphore::new(settings.concurrency)),
            in_flight: Mutex::new(HashMap::new()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            slot_freed: tokio::sync::Notify::new(),
            ack_tx,
            stop: stop_rx,
            hand_back: watch::channel(false).0,
            poll_interval: settings.poll_interval,
            lease: settings.lease,
            heartbeat: settings.heartbeat,
            prefetch: settings.prefetch,
            outage: Outage::default(),
        });
        tracing::info!(owner = %shared.owner, queues = ?shared.queues, concurrency = settings.concurrency, "queue runtime starting");
        let mut background = Vec::new();
        let acker = tokio::spawn(acker(shared.clone(), ack_rx));
        background.push(tokio::spawn(heartbeat(shared.clone())));
        background.push(tokio::spawn(rescuer(shared.clone())));
        background.push(tokio::spawn(dispatcher(shared.clone())));
        background.push(tokio::spawn(monitor(shared.clone())));
        if self.cron {
            background.push(tokio::spawn(crate::cron::scheduler(shared.clone())));
        }
        let producer = tokio::spawn(producer(shared.clone()));
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
    pub(crate) owner: String,
    pub(crate) queues: Vec<String>,
    semaphore: Arc<Semaphore>,
    in_flight: Mutex<HashMap<JobId, InFlight>>,
    /// Prefetched jobs waiting for a free slot.
    waiting: std::sync::atomic::AtomicUsize,
    /// Signalled when a job's slot is released or a prefetched job takes one.
    slot_freed: tokio::sync::Notify,
    ack_tx: mpsc::UnboundedSender<Ack>,
    pub(crate) stop: watch::Receiver<bool>,
    /// Set when a shutdown's drain time is over: running handlers stop.
    hand_back: watch::Sender<bool>,
    pub(crate) poll_interval: Duration,
    lease: Duration,
    heartbeat: Duration,
    prefetch: usize,
    pub(crate) outage: Outage,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Drops a job from the in-flight set once its outcome is written, but
    /// only the entry of that attempt: after an outage longer than the lease
    /// this runtime may have claimed the job again, and the new attempt must
    /// keep its heartbeats.
    fn forget(&self, id: JobId, attempt: u32) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&id).is_some_and(|f| f.attempt == attempt) {
            map.remove(&id);
        }
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

struct InFlight {
    attempt: u32,
    /// The attempt's outcome is queued for the acker (or being written): a
    /// heartbeat that no longer matches the job may just have raced with
    /// its success, so the job is not counted as lost.
    reported: bool,
}

/// An outcome to write.
#[derive(Debug)]
enum Ack {
    Complete {
        id: JobId,
        attempt: u32,
    },
    Retry {
        id: JobId,
        attempt: u32,
        run_at: DateTime<Utc>,
        error: String,
        uncount: bool,
    },
    Dead {
        id: JobId,
        attempt: u32,
        error: String,
    },
    Stop,
}

impl Ack {
    fn id(&self) -> Option<(JobId, u32)> {
        match self {
            Ack::Complete { id, attempt }
            | Ack::Retry { id, attempt, .. }
            | Ack::Dead { id, attempt, .. } => Some((*id, *attempt)),
            Ack::Stop => None,
        }
    }
}

/// Logs a database outage once, and its end once.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    state: Mutex<OutageState>,
}

#[derive(Debug, Default)]
struct OutageState {
    /// When the current outage was noticed.
    since: Option<Instant>,
    /// When the last outage ended.
    ended: Option<Instant>,
}

impl Outage {
    /// Records a failure of a statement of `what` sent at `sent`; logs only
    /// the first of an outage. A connection failure of a statement sent
    /// before the last outage ended belongs to that outage (its pool
    /// acquire waited through it and gave up after the server was back):
    /// it does not start a new one.
    fn failed(&self, what: &str, e: &Error, sent: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.since.is_some() {
            return;
        }
        if !matches!(e, Error::Database(db) if is_connection_error(db)) {
            tracing::warn!(error = %e, during = what, "database statement failed; retrying");
        } else if state.ended.is_some_and(|end| sent < end) {
            tracing::debug!(error = %e, during = what, "a statement sent during the last outage failed after it ended");
        } else {
            tracing::error!(error = %e, during = what, "database unavailable; the runtime keeps retrying");
            state.since = Some(Instant::now());
        }
    }

    /// Records the success of a statement sent at `sent`; logs the end of
    /// an outage. Only a statement sent after the outage was noticed ends
    /// it: while a server shuts down, statements already in flight on other
    /// connections may still complete after the first one failed, and they
    /// say nothing about whether the server is back.
    fn ok(&self, sent: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = state.since
            && sent > t
        {
            state.since = None;
            state.ended = Some(Instant::now());
            tracing::warn!(after = ?t.elapsed(), "database reachable again; the runtime resumed");
        }
    }

    /// Records the result of a statement of `what` sent at `sent`.
    pub(crate) fn track<T>(&self, what: &str, sent: Instant, result: &Result<T>) {
        match result {
            Ok(_) => self.ok(sent),
            Err(e) => self.failed(what, e, sent),
        }
    }

    #[cfg(test)]
    fn since(&self) -> Option<Instant> {
        self.state.lock().unwrap().since
    }

    pub(crate) fn backoff(failures: u32) -> Duration {
        let ms = 50u64.saturating_mul(1 << failures.min(7)).min(5_000);
        Duration::from_millis(ms + fastrand::u64(0..=ms / 4))
    }
}

/// Claim latencies of this client's runtimes over the last minute.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    claims: Mutex<VecDeque<(Instant, Duration)>>,
    start_lags: Mutex<VecDeque<(Instant, Duration)>>,
}

impl Metrics {
    fn record_claim(&self, d: Duration) {
        Self::record(&self.claims, d);
    }

    fn record_start_lag(&self, d: Duration) {
        Self::record(&self.start_lags, d);
    }

    /// (p50, p99) of the time from a job's run time to its start, over the
    /// last minute, in this process.
    pub(crate) fn start_lag(&self) -> Option<(Duration, Duration)> {
        Self::percentiles(&self.start_lags)
    }

    fn record(ring: &Mutex<VecDeque<(Instant, Duration)>>, d: Duration) {
        let mut c = ring.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        c.push_back((now, d));
        while c
            .front()
            .is_some_and(|f| now.duration_since(f.0) > Duration::from_secs(60))
            || c.len() > 100_000
        {
            c.pop_front();
        }
    }

    /// (p50, p99) of claim latency over the last minute.
    pub(crate) fn claim_latency(&self) -> Option<(Duration, Duration)> {
        Self::percentiles(&self.claims)
    }

    fn percentiles(ring: &Mutex<VecDeque<(Instant, Duration)>>) -> Option<(Duration, Duration)> {
        let c = ring.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = c.iter().map(|x| x.1).collect();
        v.sort();
        // Nearest rank: index ⌈q·n⌉ − 1.
        let at = |per_mille: usize| v[(v.len() * per_mille).div_ceil(1000).saturating_sub(1)];
        Some((at(500), at(990)))
    }
}

/// Claims in flight at once while a queue has a backlog (one otherwise).
/// A claim's time is mostly round trips and its commit's log flush, during
/// which fast jobs finish and their slots idle; a second claim in flight
/// fills them meanwhile. Each claim skips the rows the other holds locked.
const MAX_CLAIMS_IN_FLIGHT: usize = 2;

/// A finished claim: the queue's index, its ticket, its result, and when it
/// was sent.
type ClaimDone = (usize, ClaimTicket, Result<Claimed>, Instant, LostClaim);

/// A claim's `now` and lease end, as it wrote them to the jobs it leased:
/// with this runtime's owner id, they name those jobs exactly (each claim
/// of a runtime has its own `now`), so a claim whose reply was lost can be
/// undone (see `Store::release_lost_claim`).
pub(crate) type LostClaim = (DateTime<Utc>, DateTime<Utc>);

async fn producer(shared: Arc<Shared>) {
    let client = &shared.client;
    let mut cursors: Vec<Cursors> = shared.queues.iter().map(|q| Cursors::new(q)).collect();
    let mut ready_rx = client.inner.ready_gen.subscribe();
    let (probe_tx, probe_rx) = mpsc::channel::<ProbeRequest>(16);
    let (found_tx, mut found_rx) = mpsc::channel::<ProbeFinds>(16);
    let prober = tokio::spawn(prober(shared.clone(), probe_rx, found_tx));
    let mut claims: JoinSet<ClaimDone> = JoinSet::new();
    // Claims that failed on a connection error: their COMMIT may have
    // reached the server with the reply lost, leaving jobs leased to this
    // runtime that nothing runs. Released once no claim is in flight.
    let mut lost: Vec<LostClaim> = Vec::new();
    // The last claim's `now`: each claim's is later, so that it names the
    // claim's jobs.
    let mut last_claim_at: Option<DateTime<Utc>> = None;
    // Jobs each claim in flight may bring back: counted against the window.
    let mut reserved: Vec<(tokio::task::Id, usize)> = Vec::new();
    let mut failures = 0u32;
    let mut next = 0usize;
    let mut last_probe = Instant::now();
    let mut last_full_probe = Instant::now();
    // Look behind the cursors at start: rows committed out of order by a
    // previous run are found by the first full probe.
    let mut full_due = true;
    // Idle polling: after work, look again after `min_poll`, doubling to
    // `poll_interval` while nothing comes.
    let min_poll = (shared.poll_interval / 25).max(Duration::from_millis(5));
    let mut idle_wait = min_poll;
    let mut idle = false;
    // Consecutive claims (or idle looks) that found nothing: once every
    // queue has had one, the runtime waits.
    let mut empty = 0usize;
    // The last claim came back full: the queue has more.
    let mut backlog = false;
    let refill_at = (shared.semaphore.available_permits() + shared.prefetch)
        .div_ceil(2)
        .max(1);
    // What a claim that came back tells the loop.
    macro_rules! note {
        ($picked:expr, $want:expr) => {{
            // Rows taken, not jobs: rows whose job was cancelled are taken
            // and dropped, and the rows behind them still wait.
            let picked: usize = $picked;
            backlog = picked == $want;
            if picked == 0 {
                empty += 1;
            } else {
                empty = 0;
                idle = false;
                idle_wait = min_poll;
                failures = 0;
            }
        }};
    }
    loop {
        if shared.stopping() {
            break;
        }
        while let Ok((qi, found)) = found_rx.try_recv() {
            cursors[qi].add_stragglers(found);
        }
        if last_probe.elapsed() >= Duration::from_millis(250) || full_due {
            let full = full_due || last_full_probe.elapsed() >= Duration::from_secs(30);
            for (qi, c) in cursors.iter_mut().enumerate() {
                let ranges = c.probe_ranges(full);
                if !ranges.is_empty() {
                    let _ = probe_tx.try_send((qi, ranges));
                }
            }
            last_probe = Instant::now();
            if full {
                last_full_probe = last_probe;
                full_due = false;
            }
        }
        let mut errored = false;
        while let Some(done) = claims.try_join_next_with_id() {
            match settle_claim(&shared, &mut cursors, &mut reserved, &mut lost, done) {
                Some((picked, want)) => note!(picked, want),
                None => errored = true,
            }
        }
        if !errored && !lost.is_empty() && claims.is_empty() {
            // Every claim that succeeded has started its jobs: what is
            // still leased under a lost claim's `now` ran nowhere.
            let sent = Instant::now();
            let released = release_lost(&shared, &lost).await;
            shared.outage.track("claim recovery", sent, &released);
            match released {
                Ok(()) => lost.clear(),
                Err(_) => errored = true,
            }
        }
        if errored {
            failures += 1;
            if shared.sleep_or_stop(Outage::backoff(failures)).await {
                break;
            }
            continue;
        }
        let slots = shared.semaphore.available_permits();
        let waiting = prefetched(&shared);
        let reserving: usize = reserved.iter().map(|r| r.1).sum();
        let free = (slots + shared.prefetch).saturating_sub(waiting + reserving);
        // Claim when a slot is idle with nothing prefetched or being claimed
        // for it, or when half the window (free slots + prefetch) is free:
        // with fast jobs one slot frees at a time, and claiming for each
        // alone would make many claims of one or two jobs.
        let idle_slot = slots > 0 && waiting + reserving == 0;
        let lanes = if backlog { MAX_CLAIMS_IN_FLIGHT } else { 1 };
        let stragglers = cursors.iter().any(Cursors::has_stragglers);
        let want_claim = free > 0 && (free >= refill_at || idle_slot) && claims.len() < lanes;
        if want_claim && (empty < cursors.len() || stragglers) {
            let qi = next % cursors.len();
            next = next.wrapping_add(1);
            if idle && !cursors[qi].has_stragglers() {
                // Idle: one cheap statement instead of a claim transaction.
                let sent = Instant::now();
                let has_ready = client.store().has_ready(&cursors[qi]).await;
                shared.outage.track("claim", sent, &has_ready);
                match has_ready {
                    Ok(false) => {
                        empty += 1;
                        continue;
                    }
                    Ok(true) => {}
                    Err(_) => {
                        failures += 1;
                        if shared.sleep_or_stop(Outage::backoff(failures)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let ticket = cursors[qi].ticket(free);
            let shared2 = shared.clone();
            let mut now = crate::time::clamp(client.now());
            if let Some(last) = last_claim_at
                && now <= last
            {
                now = last + chrono::TimeDelta::microseconds(1);
            }
            last_claim_at = Some(now);
            let task = claims.spawn(async move {
                let sent = Instant::now();
                let lease_until = crate::time::clamp(add(now, shared2.lease));
                let r = shared2
                    .client
                    .store()
                    .claim_ticket(&ticket, &shared2.owner, lease_until, now)
                    .await;
                (qi, ticket, r, sent, (now, lease_until))
            });
            reserved.push((task.id(), free));
            continue;
        }
        let mut stop = shared.stop.clone();
        if claims.is_empty() && empty >= cursors.len() && !stragglers {
            // Nothing to claim: wait for a local enqueue, a probe's find, or
            // the idle wait, which starts short after work (jobs enqueued by
            // other processes in a trickle are found within a few ms) and
            // doubles up to the poll interval while nothing comes. Probes
            // due meanwhile are sent next round.
            idle = true;
            backlog = false;
            tokio::select! {
                _ = ready_rx.changed() => idle = false,
                _ = tokio::time::sleep(idle_wait) => {}
                _ = stop.wait_for(|s| *s) => {}
                Some((qi, found)) = found_rx.recv() => cursors[qi].add_stragglers(found),
            }
            idle_wait = (idle_wait * 2).min(shared.poll_interval);
            empty = 0;
            continue;
        }
        // Wait for a claim to come back or a slot to free (or stop).
        let done = tokio::select! {
            Some(done) = claims.join_next_with_id(), if !claims.is_empty() => Some(done),
            _ = shared.slot_freed.notified() => None,
            _ = stop.wait_for(|s| *s) => None,
        };
        if let Some(done) = done {
            match settle_claim(&shared, &mut cursors, &mut reserved, &mut lost, done) {
                Some((picked, want)) => note!(picked, want),
                None => {
                    failures += 1;
                    if shared.sleep_or_stop(Outage::backoff(failures)).await {
                        break;
                    }
                }
            }
        }
    }
    // Claims in flight finish: their jobs are started or handed back like
    // any other claimed at shutdown.
    while let Some(done) = claims.join_next_with_id().await {
        settle_claim(&shared, &mut cursors, &mut reserved, &mut lost, done);
    }
    if !lost.is_empty() {
        // One try; what it cannot release waits for its lease.
        let _ = release_lost(&shared, &lost).await;
    }
    prober.abort();
}

/// Hands back, without spending an attempt, the jobs that claims whose
/// reply was lost leased to this runtime.
async fn release_lost(shared: &Shared, lost: &[LostClaim]) -> Result<()> {
    let store = shared.client.store();
    let mut released = 0;
    for &(claimed_at, lease_until) in lost {
        released += store
            .release_lost_claim(&shared.owner, claimed_at, lease_until, shared.client.now())
            .await?;
    }
    if released > 0 {
        tracing::warn!(
            jobs = released,
            "handed back jobs that a claim leased while its reply was lost"
        );
        shared.client.inner.ready_gen.send_modify(|g| *g += 1);
    }
    Ok(())
}

/// Records a finished claim and starts its jobs: `(rows taken, wanted)`, or
/// `None` if it failed.
fn settle_claim(
    shared: &Arc<Shared>,
    cursors: &mut [Cursors],
    reserved: &mut Vec<(tokio::task::Id, usize)>,
    lost: &mut Vec<LostClaim>,
    done: std::result::Result<(tokio::task::Id, ClaimDone), tokio::task::JoinError>,
) -> Option<(usize, usize)> {
    let id = match &done {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    reserved.retain(|r| r.0 != id);
    let Ok((_, (qi, ticket, result, sent, claim))) = done else {
        // The claim's task panicked (it does not): its stragglers are found
        // again by the next probes.
        return None;
    };
    let want = ticket.limit;
    let settled = cursors[qi].settle(ticket, result);
    shared.outage.track("claim", sent, &settled);
    if let Err(Error::Database(e)) = &settled
        && is_connection_error(e)
    {
        lost.push(claim);
    }
    let (jobs, picked) = settled.ok()?;
    shared.client.inner.metrics.record_claim(sent.elapsed());
    tracing::trace!(queue = %shared.queues[qi], want, got = jobs.len(), "claimed");
    for job in jobs {
        spawn_job(shared, job);
    }
    Some((picked, want))
}

/// Jobs claimed beyond the free slots that are waiting for one.
fn prefetched(shared: &Shared) -> usize {
    shared.waiting.load(std::sync::atomic::Ordering::SeqCst)
}

/// A probe request: a queue's index and the `(priority, low, high]` ranges
/// behind its cursors.
type ProbeRequest = (usize, Vec<(u8, u64, u64)>);
/// A probe's finds: a queue's index and `(priority, seq)` keys.
type ProbeFinds = (usize, Vec<(u8, u64)>);

async fn prober(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<ProbeRequest>,
    tx: mpsc::Sender<ProbeFinds>,
) {
    while let Some((qi, ranges)) = rx.recv().await {
        let queue = &shared.queues[qi];
        let sent = Instant::now();
        let probed = shared.client.store().probe(queue, &ranges).await;
        shared.outage.track("probe", sent, &probed);
        if let Ok(found) = probed
            && !found.is_empty()
        {
            tracing::debug!(queue = %queue, rows = found.len(), "found ready rows behind the claim cursor");
            if tx.send((qi, found)).await.is_err() {
                return;
            }
        }
    }
}

fn spawn_job(shared: &Arc<Shared>, job: ClaimedJob) {
    let permit = match shared.semaphore.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            // Prefetched beyond the free slots: waits below for one.
            shared
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            None
        }
    };
    let shared2 = shared.clone();
    let id = job.id;
    let attempt = job.attempt;
    // Register before the task can finish, so heartbeats cover it.
    let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
    tokio::spawn(async move {
        let permit = match permit {
            Some(p) => p,
            None => {
                // A prefetched job waits for a slot, unless the runtime stops
                // first: then it is handed back without having started.
                let mut stop = shared2.stop.clone();
                let p = tokio::select! {
                    p = shared2.semaphore.clone().acquire_owned() => p.ok(),
                    _ = stop.wait_for(|s| *s) => None,
                };
                shared2
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                shared2.slot_freed.notify_one();
                match p {
                    Some(p) => p,
                    None => {
                        let ack = Ack::Retry {
                            id: job.id,
                            attempt: job.attempt,
                            run_at: shared2.client.now(),
                            error: "handed back at shutdown before it started".into(),
                            uncount: true,
                        };
                        report(&shared2, &job, ack);
                        return;
                    }
                }
            }
        };
        let _slot = Slot(Some(permit), shared2.clone());
        execute(shared2, job).await;
    });
    map.insert(
        id,
        InFlight {
            attempt,
            reported: false,
        },
    );
}

/// A job's slot: released when the job's task ends, however it ends, and
/// the producer told.
struct Slot(Option<OwnedSemaphorePermit>, Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.0.take());
        self.1.slot_freed.notify_one();
    }
}

async fn execute(shared: Arc<Shared>, job: ClaimedJob) {
    let span = tracing::info_span!(
        "queue.job",
        job.id = %job.id,
        task = %job.task,
        queue = %job.queue,
        attempt = job.attempt,
    );
    let ack = run_attempt(&shared, &job).instrument(span.clone()).await;
    let _enter = span.enter();
    match &ack {
        Ack::Complete { .. } => tracing::debug!("job succeeded"),
        Ack::Retry {
            error,
            run_at,
            uncount: false,
            ..
        } => {
            tracing::warn!(error = %error, retry_at = %run_at, max_attempts = job.max_attempts, "job failed; will retry");
        }
        Ack::Retry { error, .. } => tracing::info!(reason = %error, "job handed back"),
        Ack::Dead { error, .. } => {
            tracing::error!(error = %error, attempts = job.attempt, "job failed for good; moving it to the dead jobs");
        }
        Ack::Stop => {}
    }
    report(&shared, &job, ack);
}

/// Hands an outcome to the acker, marking the job as reported.
fn report(shared: &Shared, job: &ClaimedJob, ack: Ack) {
    if let Some(f) = shared
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&job.id)
        .filter(|f| f.attempt == job.attempt)
    {
        f.reported = true;
    }
    if shared.ack_tx.send(ack).is_err() {
        // The acker is gone (runtime dropped): the lease expires and the job runs again.
        shared.forget(job.id, job.attempt);
    }
}

/// Runs one attempt and decides its outcome.
async fn run_attempt(shared: &Arc<Shared>, job: &ClaimedJob) -> Ack {
    let client = &shared.client;
    let (id, attempt) = (job.id, job.attempt);
    let Some(reg) = shared.registry.get(&job.task) else {
        let error = format!(
            "unknown task `{}`: no #[task] of this name in runtime {}; handed back for {}s",
            job.task,
            shared.owner,
            UNKNOWN_TASK_DELAY.as_secs()
        );
        if UNKNOWN_TASKS_LOGGED.first_in_a_while(&job.task, Instant::now()) {
            tracing::warn!(
                task = %job.task,
                job.id = %id,
                "claimed a job of an unknown task; handing it back (every {}s, no attempt spent; \
                 logged once an hour per task name; client.stats() counts these jobs)",
                UNKNOWN_TASK_DELAY.as_secs()
            );
        } else {
            tracing::debug!(task = %job.task, job.id = %id, "claimed a job of an unknown task; handing it back");
        }
        return Ack::Retry {
            id,
            attempt,
            run_at: add(client.now(), UNKNOWN_TASK_DELAY),
            error,
            uncount: true,
        };
    };
    let budget = job
        .deadline_ms
        .map(Duration::from_millis)
        .or(reg.options.deadline);
    let deadline = budget.map(Deadline::after);
    let ctx = TaskContext::new(
        id,
        attempt,
        job.max_attempts,
        job.task.clone(),
        job.queue.clone(),
        deadline,
        client.clone(),
    );
    // The handler runs inside this task (no second spawn): a panic is
    // caught here, and dropping the future is how a deadline or a shutdown
    // stops it.
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| (reg.handler)(ctx, &job.payload)))
    {
        Ok(fut) => fut,
        Err(p) => Box::pin(std::future::ready(Err(TaskError::panic(panic_message(p))))),
    };
    if let Ok(lag) = (client.now() - job.run_at).to_std() {
        client.inner.metrics.record_start_lag(lag);
    }
    let fut = AssertUnwindSafe(Deadline::scope(deadline, fut)).catch_unwind();
    let mut hand_back = shared.hand_back.subscribe();
    let stop_at = deadline.map(|d| d.expires_at() + DEADLINE_GRACE);
    let joined = tokio::select! {
        j = fut => Some(j),
        _ = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        } => Some(Ok(Err(TaskError::deadline_exceeded()))),
        _ = hand_back.wait_for(|h| *h) => None,
    };
    let Some(joined) = joined else {
        // The runtime is shutting down: hand the job back at once.
        return Ack::Retry {
            id,
            attempt,
            run_at: client.now(),
            error: "handed back at shutdown before it finished".into(),
            uncount: true,
        };
    };
    let result = joined.unwrap_or_else(|p| Err(TaskError::panic(panic_message(p))));
    match result {
        Ok(()) => Ack::Complete { id, attempt },
        Err(e) => {
            let text = error_text(&e, client.flavor());
            if e.is_permanent() || attempt >= job.max_attempts {
                Ack::Dead {
                    id,
                    attempt,
                    error: text,
                }
            } else {
                let mut rng = fastrand::Rng::new();
                let delay = reg.options.backoff.delay(attempt, &mut rng);
                Ack::Retry {
                    id,
                    attempt,
                    run_at: add(client.now(), delay),
                    error: text,
                    uncount: false,
                }
            }
        }
    }
}

/// The text stored as a job's last error. A server-side statement timeout
/// reads "deadline exceeded" like any other deadline failure.
fn error_text(e: &TaskError, flavor: crate::flavor::Flavor) -> String {
    let text = e.to_string();
    if e.kind() == TaskErrorKind::Deadline {
        return text;
    }
    let server_timeout = e
        .find::<sqlx::Error>()
        .and_then(crate::error::sql_error_number)
        .is_some_and(|n| flavor.is_timeout_error(n));
    let ours = e.find::<Error>().is_some_and(|e| {
        matches!(e, Error::DeadlineExceeded)
            || e.db_code().is_some_and(|n| flavor.is_timeout_error(n))
    });
    if server_timeout || ours {
        format!("deadline exceeded: {text}")
    } else {
        text
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// How long the acker waits for more outcomes to write with the first one.
const ACK_LINGER: Duration = Duration::from_millis(2);

/// Writes outcomes. Successes are batched: whatever has arrived since the
/// last write goes in one DELETE.
async fn acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Ack>) {
    let mut stop = false;
    while !stop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(ACK_LINGER);
        tokio::pin!(linger);
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => {
                    tokio::select! {
                        a = rx.recv() => match a {
                            Some(a) => batch.push(a),
                            None => break,
                        },
                        _ = &mut linger => break,
                    }
                }
            }
            if matches!(batch.last(), Some(Ack::Stop)) {
                break;
            }
        }
        if batch.iter().any(|a| matches!(a, Ack::Stop)) {
            stop = true;
            // Flush what else is queued.
            while let Ok(a) = rx.try_recv() {
                batch.push(a);
            }
        }
        write_acks(&shared, batch).await;
    }
}

async fn write_acks(shared: &Arc<Shared>, batch: Vec<Ack>) {
    let client = &shared.client;
    let store = client.store();
    let mut done = Vec::new();
    let mut others = Vec::new();
    for a in batch {
        match a {
            Ack::Complete { id, attempt } => done.push((id, attempt)),
            Ack::Stop => {}
            other => others.push(other),
        }
    }
    let mut failures = 0;
    if !done.is_empty() {
        loop {
            let sent = Instant::now();
            let completed = store.complete(&done).await;
            shared.outage.track("recording successes", sent, &completed);
            match completed {
                Ok(n) => {
                    let mut lost = done.len() - (n as usize).min(done.len());
                    if lost > 0 && failures > 0 {
                        // An earlier try may have deleted them with its
                        // reply lost: only jobs still there, at another
                        // attempt, were taken by another runtime.
                        let ids: Vec<JobId> = done.iter().map(|d| d.0).collect();
                        if let Ok(left) = store.count_existing(&ids).await {
                            lost = left as usize;
                        }
                    }
                    if lost > 0 {
                        tracing::warn!(
                            lost,
                            "some successes were not recorded: their lease had expired and another runtime took them"
                        );
                    }
                    break;
                }
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(Outage::backoff(failures)).await;
                }
            }
        }
        for (id, attempt) in &done {
            shared.forget(*id, *attempt);
        }
    }
    for a in others {
        let id = a.id();
        let mut failures = 0;
        loop {
            let now = client.now();
            let sent = Instant::now();
            let r = match &a {
                Ack::Retry {
                    id,
                    attempt,
                    run_at,
                    error,
                    uncount,
                } => {
                    store
                        .retry_later(*id, *attempt, *run_at, error, now, *uncount)
                        .await
                }
                Ack::Dead { id, attempt, error } => store.bury(*id, *attempt, error, now).await,
                _ => Ok(true),
            };
            shared.outage.track("recording an outcome", sent, &r);
            match r {
                Ok(recorded) => {
                    if !recorded {
                        tracing::warn!(job.id = ?id, "outcome not recorded: the job's lease had expired and another runtime took it");
                    }
                    if matches!(a, Ack::Retry { .. }) {
                        client.inner.scheduled_gen.send_modify(|g| *g += 1);
                        client.inner.ready_gen.send_modify(|g| *g += 1);
                    }
                    break;
                }
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(Outage::backoff(failures)).await;
                }
            }
        }
        if let Some((id, attempt)) = id {
            shared.forget(id, attempt);
        }
    }
}

async fn heartbeat(shared: Arc<Shared>) {
    let mut wait = shared.heartbeat;
    let mut failures = 0;
    loop {
        // Beats go on during a shutdown's drain; shutdown aborts this task last.
        tokio::time::sleep(wait).await;
        let repeated = wait.is_zero();
        wait = shared.heartbeat;
        let jobs: Vec<(JobId, u32)> = {
            let map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(id, f)| (*id, f.attempt)).collect()
        };
        if jobs.is_empty() {
            continue;
        }
        let now = shared.client.now();
        let sent = Instant::now();
        let beat = shared
            .client
            .store()
            .heartbeat(&shared.owner, &jobs, add(now, shared.lease), now)
            .await;
        shared.outage.track("heartbeat", sent, &beat);
        match beat {
            Ok(n) => {
                failures = 0;
                if !repeated && sent.elapsed() > shared.heartbeat / 2 {
                    // The beat waited (for a connection, through an outage):
                    // its list of jobs is old, and jobs claimed since have
                    // not been renewed. Beat again now (once: a server
                    // that is merely slow gets no extra load).
                    wait = Duration::ZERO;
                }
                // A job that is not matched either lost its lease or had its
                // outcome written meanwhile (a success deletes it). Discount
                // every job whose outcome is queued or written by now, so a
                // busy runtime does not cry wolf; a job truly lost keeps
                // missing the fence at every beat while it runs, and its
                // outcome is reported as not recorded when it ends.
                let unmatched = jobs.len().saturating_sub(n as usize);
                let settled = if unmatched == 0 {
                    0
                } else {
                    let map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    jobs.iter()
                        .filter(|(id, a)| map.get(id).is_none_or(|f| f.attempt != *a || f.reported))
                        .count()
                };
                let lost = unmatched.saturating_sub(settled);
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "some running jobs lost their lease (taken back after it expired); their outcomes will not be recorded"
                    );
                }
            }
            Err(_) => {
                // Try again soon: the leases run out meanwhile.
                failures += 1;
                wait = Outage::backoff(failures).min(shared.heartbeat);
            }
        }
    }
}

async fn rescuer(shared: Arc<Shared>) {
    let interval = (shared.lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut last_ok: Option<DateTime<Utc>> = None;
    let mut last_full = Instant::now();
    let mut last_heal: Option<Instant> = None;
    loop {
        let now = shared.client.now();
        // Look at leases that expired since the last pass (with a margin);
        // the whole index now and then, and at start.
        // (A 10-s margin covers clocks of other processes a little behind.)
        let since = match last_ok {
            Some(t) if last_full.elapsed() < Duration::from_secs(600) => {
                Some(crate::clock::sub(t, Duration::from_secs(10)))
            }
            _ => {
                last_full = Instant::now();
                None
            }
        };
        // One cheap non-locking look first; the locking pass only when it
        // finds an expired lease.
        let store = shared.client.store();
        let sent = Instant::now();
        let pass = match store.any_expired(now, since).await {
            Ok(false) => Ok((0, 0)),
            Ok(true) => store.rescue_expired(now, since).await,
            Err(e) => Err(e),
        };
        shared.outage.track("lease rescue", sent, &pass);
        if pass.is_ok() && last_heal.is_none_or(|t| t.elapsed() >= HEAL_INTERVAL) {
            // At start and hourly: ready jobs that have no row in the claim
            // index (written by SQL from outside, or by an earlier
            // version's bulk enqueue on a server whose
            // auto_increment_increment is not 1) are put back in it. A
            // full scan of both tables (~3.6 s at 1,000,000 ready jobs).
            let sent = Instant::now();
            let healed = store.heal_claim_index(now).await;
            shared.outage.track("claim index repair", sent, &healed);
            // A failure is logged by `track`; the next try is in an hour
            // too (a statement that hit its time limit would hit it again).
            last_heal = Some(Instant::now());
            if let Ok(n @ 1..) = healed {
                tracing::warn!(
                    jobs = n,
                    "put ready jobs missing from the claim index back in it"
                );
                shared.client.inner.ready_gen.send_modify(|g| *g += 1);
            }
        }
        if let Ok((requeued, buried)) = pass {
            last_ok = Some(now);
            if requeued + buried > 0 {
                tracing::warn!(requeued, buried, "took back jobs whose lease expired");
                shared.client.inner.ready_gen.send_modify(|g| *g += 1);
            }
        }
        if shared.sleep_or_stop(interval).await {
            return;
        }
    }
}

async fn dispatcher(shared: Arc<Shared>) {
    let client = &shared.client;
    let mut scheduled_rx = client.inner.scheduled_gen.subscribe();
    let mut clock_rx = client.inner.clock.watch();
    let mut last_ok: Option<DateTime<Utc>> = None;
    let mut last_full = Instant::now();
    let mut failures = 0;
    loop {
        let now = client.now();
        let since = match last_ok {
            Some(t) if last_full.elapsed() < Duration::from_secs(300) => {
                Some(crate::clock::sub(t, Duration::from_secs(600)))
            }
            _ => {
                last_full = Instant::now();
                None
            }
        };
        let mut wait = shared.poll_interval;
        // One cheap non-locking look at the earliest scheduled time; the
        // locking dispatch only when something is due.
        let store = client.store();
        let sent = Instant::now();
        let step = async {
            match store.next_scheduled(since).await? {
                Some(t) if t <= now => {
                    let n = store.dispatch_due(now, since).await?;
                    Ok((n, store.next_scheduled(Some(now)).await?))
                }
                next => Ok::<_, Error>((0, next)),
            }
        };
        let stepped = step.await;
        shared
            .outage
            .track("dispatching scheduled jobs", sent, &stepped);
        match stepped {
            Ok((n, next)) => {
                failures = 0;
                last_ok = Some(now);
                if n > 0 {
                    client.inner.ready_gen.send_modify(|g| *g += 1);
                }
                if let Some(next) = next {
                    wait = wait.min((next - now).to_std().unwrap_or(Duration::ZERO));
                }
            }
            Err(_) => {
                failures += 1;
                wait = Outage::backoff(failures);
            }
        }
        let mut stop = shared.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = scheduled_rx.changed() => {}
            _ = crate::clock::moved(&mut clock_rx) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Watches for purge lag: every 10 s, logs the claim latency and InnoDB's
/// history list length (at debug level), and warns once per episode when the
/// claim p99 has doubled (and exceeds 5 ms) while the history list grew by
/// more than 10,000 since the best window seen — the sign of a long-open
/// read view stalling purge (docs/architecture.md).
async fn monitor(shared: Arc<Shared>) {
    let period = Duration::from_secs(10);
    // (claim p99, history list length) of the fastest window seen.
    let mut baseline: Option<(Duration, u64)> = None;
    let mut warned = false;
    loop {
        if shared.sleep_or_stop(period).await {
            return;
        }
        let Some((p50, p99)) = shared.client.inner.metrics.claim_latency() else {
            continue;
        };
        let Some(hll) = crate::client::history_list_length(shared.client.pool()).await else {
            continue;
        };
        tracing::debug!(claim_p50 = ?p50, claim_p99 = ?p99, history_list_length = hll, "claim health");
        let (base_p99, base_hll) = *baseline.get_or_insert((p99, hll));
        if purge_lag_suspected(p99, hll, base_p99, base_hll) {
            if !warned {
                tracing::warn!(
                    claim_p99 = ?p99,
                    baseline_p99 = ?base_p99,
                    history_list_length = hll,
                    baseline_history_list_length = base_hll,
                    "claims slowed while InnoDB's history list grew: a long-open transaction may be stalling purge"
                );
                warned = true;
            }
        } else {
            warned = false;
            if p99 < base_p99 {
                baseline = Some((p99, hll));
            }
        }
    }
}

/// The monitor's rule: claim p99 at least doubled (and above 5 ms) while
/// the history list grew by more than 10,000 since the baseline.
fn purge_lag_suspected(p99: Duration, hll: u64, base_p99: Duration, base_hll: u64) -> bool {
    p99 >= base_p99 * 2 && p99 > Duration::from_millis(5) && hll > base_hll.saturating_add(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_lag_needs_both_slow_claims_and_a_growing_history() {
        let ms = Duration::from_millis;
        assert!(purge_lag_suspected(ms(12), 40_000, ms(3), 500));
        assert!(
            !purge_lag_suspected(ms(12), 5_000, ms(3), 500),
            "history did not grow"
        );
        assert!(
            !purge_lag_suspected(ms(4), 40_000, ms(1), 500),
            "still fast"
        );
        assert!(
            !purge_lag_suspected(ms(8), 40_000, ms(6), 500),
            "not doubled"
        );
    }

    #[test]
    fn an_outage_ends_only_with_a_statement_sent_after_it_began() {
        let outage = Outage::default();
        let in_flight = Instant::now();
        let lost = Error::Database(sqlx::Error::PoolTimedOut);
        outage.failed("claim", &lost, Instant::now());
        let began = outage.since().expect("a connection error starts an outage");
        // A statement already in flight when the server went away completes:
        // the outage goes on.
        outage.ok(in_flight);
        assert_eq!(outage.since(), Some(began));
        // Further failures do not restart it.
        outage.failed("heartbeat", &lost, Instant::now());
        assert_eq!(outage.since(), Some(began));
        let waiting = Instant::now();
        outage.ok(Instant::now());
        assert_eq!(outage.since(), None, "a later statement ends it");
        // A statement sent during the outage (its acquire waited through it)
        // fails after the end: that is the old outage, not a new one.
        outage.failed("heartbeat", &lost, waiting);
        assert_eq!(outage.since(), None, "a late failure of the old outage");
        // A statement error that is not about the connection is no outage.
        outage.failed(
            "claim",
            &Error::Database(sqlx::Error::RowNotFound),
            Instant::now(),
        );
        assert_eq!(outage.since(), None);
        // A statement sent after the end fails: a new outage.
        outage.failed("claim", &lost, Instant::now());
        assert!(outage.since().is_some_and(|t| t > began), "a new outage");
    }

    #[test]
    fn an_unknown_task_is_logged_once_an_hour_per_name() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(limiter.first_in_a_while("old.task", t0));
        assert!(!limiter.first_in_a_while("old.task", t0 + Duration::from_secs(60)));
        assert!(limiter.first_in_a_while("other.task", t0 + Duration::from_secs(60)));
        assert!(!limiter.first_in_a_while("old.task", t0 + Duration::from_secs(3599)));
        assert!(limiter.first_in_a_while("old.task", t0 + Duration::from_secs(3600)));
        assert!(!limiter.first_in_a_while("old.task", t0 + Duration::from_secs(3660)));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let m = Metrics::default();
        for i in 1..=100 {
            m.record_claim(Duration::from_millis(i));
        }
        assert_eq!(
            m.claim_latency(),
            Some((Duration::from_millis(50), Duration::from_millis(99)))
        );
    }
}
