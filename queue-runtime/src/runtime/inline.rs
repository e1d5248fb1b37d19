//! Runs jobs one at a time in the caller's task, through the runtime's own
//! claim, executor and outcome writes: what `queue_runtime::testing::drain`
//! is built on. No background task is started: the caller decides when
//! each job runs, so a test sees every attempt's outcome.

use super::outcome::Ack;
use super::*;
use crate::store::{ClaimTicket, LEVELS};
use chrono::{DateTime, Utc};

/// How long an inline claim leases its job: it runs at once, in this task,
/// and no heartbeat renews the lease.
const INLINE_LEASE: Duration = Duration::from_secs(3600);

/// What became of one attempt run inline.
#[derive(Debug)]
pub(crate) struct InlineAttempt {
    pub(crate) id: JobId,
    pub(crate) task: String,
    pub(crate) queue: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) outcome: InlineOutcome,
}

/// The decision the retry policy made for the attempt, as it was written.
#[derive(Debug)]
pub(crate) enum InlineOutcome {
    Succeeded,
    Retry {
        error: String,
        run_at: DateTime<Utc>,
        /// Handed back without spending the attempt (an unknown task).
        refund: bool,
    },
    Dead {
        error: String,
    },
}

/// A runtime without background tasks: claims one job of a queue, runs it
/// here and writes its outcome.
#[derive(Debug)]
pub(crate) struct Inline {
    shared: Arc<Shared>,
}

impl Inline {
    /// An inline runner over `client`, with the program's tasks.
    pub(crate) fn new(client: &Client) -> Result<Inline> {
        let registry = Registry::collect()?;
        let (stop_tx, stop) = watch::channel(false);
        // Nothing ever stops it: the sender may go.
        drop(stop_tx);
        let (ack_tx, _) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: client.clone(),
            limits: registry.limits(),
            blocked_cursors: Default::default(),
            paused: Vec::new(),
            pending_done: Mutex::new(Vec::new()),
            concurrency: 1,
            registry,
            owner: format!("inline-{}", uuid::Uuid::new_v4().simple()),
            queues: Vec::new(),
            semaphore: Arc::new(Semaphore::new(1)),
            waiters: Default::default(),
            spares: Default::default(),
            in_flight: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            queue_in_flight: Vec::new(),
            queue_limits: Vec::new(),
            slot_freed: tokio::sync::Notify::new(),
            ack_tx,
            stop,
            hand_back: watch::channel(false).0,
            poll_interval: Duration::from_millis(500),
            park: tokio::sync::watch::channel(None).0,
            park_woken: tokio::sync::Notify::new(),
            lease: INLINE_LEASE,
            heartbeat: INLINE_LEASE / 3,
            prefetch: 0,
            adaptive_prefetch: false,
            finished_total: std::sync::atomic::AtomicU64::new(0),
            outage: Outage::default(),
            tally: Mutex::new(Default::default()),
            started_at: crate::time::clamp(client.now()),
            galera: Mutex::new(None),
            galera_synced: std::sync::atomic::AtomicBool::new(true),
            lane: Mutex::new(None),
        });
        Ok(Inline { shared })
    }

    /// Claims the next ready job of `queue` (priority first, then run time)
    /// as a runtime does, runs it in this task and writes its outcome.
    /// `None` when the queue has no ready job.
    pub(crate) async fn run_next(&self, queue: &str) -> Result<Option<InlineAttempt>> {
        let client = &self.shared.client;
        let store = client.store();
        queue_core::validate_queue_name(queue)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        store.ensure_sentinels(&[queue.to_owned()]).await?;
        let ticket = ClaimTicket {
            queue: queue.to_owned(),
            last: [0; LEVELS],
            stragglers: Vec::new(),
            limit: 1,
            lane: None,
        };
        let now = crate::time::clamp(client.now());
        let lease_until = crate::time::clamp(crate::clock::add(now, INLINE_LEASE));
        let claimed = store
            .claim_ticket(
                &ticket,
                &self.shared.owner,
                lease_until,
                now,
                &self.shared.limits,
                &[],
            )
            .await?;
        let Some(job) = claimed.jobs.into_iter().next() else {
            // A cancelled job's claim-index row is taken without a job: the
            // caller looks again while `claimed.keys` was not empty.
            return Ok(if claimed.keys.is_empty() {
                None
            } else {
                Box::pin(self.run_next(queue)).await?
            });
        };
        self.shared.count(
            &job.queue,
            &job.task,
            crate::store::operator::Event::Started,
        );
        let ack = executor::run_attempt(&self.shared, &job).await;
        let now = client.now();
        completer::write_outcome(store, &ack, job.slot.as_deref(), now).await?;
        // The counts are written at once here: a test reads them next.
        executor::count_outcome(&self.shared, &job, &ack);
        let tally = std::mem::take(&mut *self.shared.tally());
        store.add_throughput(&tally).await?;
        let outcome = match ack {
            Ack::Complete { .. } => InlineOutcome::Succeeded,
            Ack::Retry {
                error,
                run_at,
                refund,
                ..
            } => InlineOutcome::Retry {
                error,
                run_at,
                refund,
            },
            Ack::Dead { error, .. } => InlineOutcome::Dead { error },
            // An attempt never ends in `Stop`.
            Ack::Stop | Ack::Pending => return Ok(None),
        };
        Ok(Some(InlineAttempt {
            id: job.id,
            task: job.task,
            queue: job.queue,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            outcome,
        }))
    }

    /// Moves the scheduled jobs due by the client's clock into the claim
    /// index, as a runtime's dispatcher does. Returns how many.
    pub(crate) async fn dispatch_due(&self) -> Result<u64> {
        let client = &self.shared.client;
        client
            .store()
            .dispatch_due(crate::time::clamp(client.now()), None)
            .await
    }

    /// The earliest run time of a scheduled job, if any.
    pub(crate) async fn next_scheduled(&self) -> Result<Option<DateTime<Utc>>> {
        self.shared.client.store().next_scheduled(None).await
    }

    /// Fires the due ticks of the program's recurring tasks by the client's
    /// clock, as a runtime's cron scheduler does; returns the ticks fired.
    pub(crate) async fn fire_cron(&self) -> Result<Vec<cron::FiredTick>> {
        cron::fire_all_due(&self.shared.client, &self.shared.registry).await
    }

    /// The next tick after `after` of each recurring task of the program.
    pub(crate) fn cron_ticks_after(&self, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        cron::next_ticks(&self.shared.registry, after)
    }
}
