//! Typed enqueue: what `my_task::with(payload)…enqueue(&client)` builds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, Priority, TaskOptions};
use serde::Serialize;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::store::NewJob;

/// A job about to be enqueued, with per-job overrides of the task's options.
///
/// Built by the `with(payload)` function that `#[task]` generates.
#[must_use = "a job is enqueued only by `.enqueue(&client)`"]
#[derive(Debug, Clone)]
pub struct EnqueueBuilder<T> {
    options: TaskOptions,
    payload: T,
    encode: Encoder<T>,
    priority: Option<u8>,
    run_at: Option<DateTime<Utc>>,
    delay: Option<Duration>,
    deadline: Option<Duration>,
    queue: Option<String>,
    unique_key: Option<String>,
}

/// Encodes a payload to the JSON text stored with its job.
pub type Encoder<T> = fn(&T) -> serde_json::Result<String>;

/// The encoder of every payload type that implements `Serialize`.
pub(crate) fn encode_json<T: Serialize>(payload: &T) -> serde_json::Result<String> {
    serde_json::to_string(payload)
}

impl<T: Serialize> EnqueueBuilder<T> {
    /// A job of the task with `options` carrying `payload`.
    pub fn new(options: TaskOptions, payload: T) -> Self {
        Self::with_encoder(options, payload, encode_json::<T>)
    }
}

impl<T> EnqueueBuilder<T> {
    /// A job of the task with `options` carrying `payload`, which `encode`
    /// turns into JSON (what `#[task]` generates: the payload type's
    /// serde impls are checked once, where the task declares it).
    #[doc(hidden)]
    pub fn with_encoder(options: TaskOptions, payload: T, encode: Encoder<T>) -> Self {
        Self {
            options,
            payload,
            encode,
            priority: None,
            run_at: None,
            delay: None,
            deadline: None,
            queue: None,
            unique_key: None,
        }
    }

    /// Overrides the task's priority (0 highest … 4 lowest). A value above 4
    /// is refused at enqueue with [`Error::InvalidArgument`] (nothing is
    /// enqueued), as `#[task(priority = 9)]` is refused at compile time.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Runs the job no earlier than `when`. A time in the past runs it at once.
    pub fn run_at(mut self, when: DateTime<Utc>) -> Self {
        self.run_at = Some(when);
        self
    }

    /// Runs the job no earlier than `delay` from now (added to `run_at` if
    /// both are given).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Gives each attempt of this job a time budget, overriding the task's.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Makes the job unique by `key` among the task's pending jobs: while a
    /// job of this task with this key is ready, scheduled or running, the
    /// enqueue inserts nothing and returns that job's id. The key is free
    /// again once that job succeeds, is cancelled or dies. At most 191
    /// characters (checked at enqueue).
    ///
    /// For example, one pending "rebuild report 42" however many edits ask
    /// for it: `rebuild::with(42).unique_key("report-42")`.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Puts the job on another queue than the task's.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Inserts the job.
    ///
    /// # Errors
    /// [`Error::Encode`] if the payload cannot be encoded, [`Error::Database`]
    /// if the insert fails (nothing was enqueued then),
    /// [`Error::SchemaTooOld`] or [`Error::SchemaTooNew`] if the database's
    /// schema is not this build's (checked once per client).
    pub async fn enqueue(self, client: &Client) -> Result<JobId> {
        let now = crate::time::now(client.now())?;
        let job = self.into_new_job(now)?;
        let ids = client.insert(vec![job], now).await?;
        Ok(ids[0])
    }

    /// Inserts the job on `conn`, inside the caller's transaction: the job
    /// exists, and runs, only if that transaction commits, so it is
    /// enqueued atomically with the writes that call for it (an order and
    /// its confirmation email). Pass `&mut *tx` for a
    /// `sqlx::Transaction<'_, MySql>` (on a connection in autocommit mode it
    /// behaves like [`EnqueueBuilder::enqueue`]).
    ///
    /// `client` supplies the clock. A runtime cannot be woken by the commit:
    /// it finds the job by its next poll (within the poll interval) or, if
    /// the transaction committed after later jobs were claimed, by its next
    /// look behind its claim position (every 250 ms for the last 2 s, all of
    /// the queue every 30 s). Keep such transactions short.
    ///
    /// # Errors
    /// As [`EnqueueBuilder::enqueue`]. The transaction is left as it is: the
    /// caller decides whether to roll it back.
    pub async fn enqueue_in(
        self,
        client: &Client,
        conn: &mut sqlx::MySqlConnection,
    ) -> Result<JobId> {
        let now = crate::time::now(client.now())?;
        let job = self.into_new_job(now)?;
        client.check_schema(&mut *conn).await?;
        let ids = client
            .store()
            .insert_jobs_in(
                conn,
                std::slice::from_ref(&job),
                now,
                crate::store::INSERT_CHUNK,
            )
            .await?;
        Ok(ids[0])
    }

    pub(crate) fn into_new_job(self, now: DateTime<Utc>) -> Result<NewJob> {
        let payload = (self.encode)(&self.payload).map_err(|source| Error::Encode {
            task: self.options.name.to_owned(),
            source,
        })?;
        let queue = self.queue.unwrap_or_else(|| self.options.queue.to_owned());
        queue_core::validate_queue_name(&queue)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut run_at = self.run_at.unwrap_or(now);
        if let Some(d) = self.delay {
            // Past chrono's range is past the database's: refused below.
            run_at = chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| run_at.max(now).checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        }
        let run_at = crate::time::run_at(run_at).map_err(|e| match e {
            Error::InvalidArgument(m) => {
                Error::InvalidArgument(format!("task {}: {m}", self.options.name))
            }
            e => e,
        })?;
        if let Some(key) = &self.unique_key
            && (key.is_empty() || key.chars().count() > 191)
        {
            return Err(Error::InvalidArgument(format!(
                "unique key of task {}: {} characters; it must have 1 to 191",
                self.options.name,
                key.chars().count()
            )));
        }
        let priority = match self.priority {
            None => self.options.priority,
            Some(p) => Priority::new(p)
                .map_err(|e| Error::InvalidArgument(format!("task {}: {e}", self.options.name)))?,
        };
        let deadline = self.deadline.or(self.options.deadline);
        Ok(NewJob {
            task: self.options.name.to_owned(),
            queue,
            priority: priority.get(),
            payload,
            max_attempts: self.options.max_attempts(),
            deadline_ms: deadline.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            run_at,
            // Stored with the task's name, so that one single-column index
            // keeps keys apart per task (and rows without a key cost that
            // index as little as possible).
            unique_key: self
                .unique_key
                .map(|k| crate::store::stored_unique_key(self.options.name, &k)),
        })
    }
}

impl Client {
    /// Enqueues many jobs of one task in multi-row INSERTs inside one
    /// transaction; returns their ids in order. Used by the generated
    /// `enqueue_many`.
    ///
    /// # Errors
    /// As [`EnqueueBuilder::enqueue`]; on error nothing was enqueued.
    pub async fn enqueue_many_with<T, I>(
        &self,
        options: TaskOptions,
        payloads: I,
    ) -> Result<Vec<JobId>>
    where
        T: Serialize,
        I: IntoIterator<Item = T>,
    {
        self.enqueue_many_encoded(None, options, payloads, encode_json::<T>)
            .await
    }

    /// [`Client::enqueue_many_with`] with a given encoder; with `conn`,
    /// inside the caller's transaction on it.
    pub(crate) async fn enqueue_many_encoded<T, I>(
        &self,
        conn: Option<&mut sqlx::MySqlConnection>,
        options: TaskOptions,
        payloads: I,
        encode: Encoder<T>,
    ) -> Result<Vec<JobId>>
    where
        I: IntoIterator<Item = T>,
    {
        let now = crate::time::now(self.now())?;
        let jobs = payloads
            .into_iter()
            .map(|p| EnqueueBuilder::with_encoder(options, p, encode).into_new_job(now))
            .collect::<Result<Vec<_>>>()?;
        match conn {
            Some(conn) => {
                self.check_schema(&mut *conn).await?;
                self.store()
                    .insert_jobs_in(conn, &jobs, now, crate::store::INSERT_CHUNK)
                    .await
            }
            None => self.insert(jobs, now).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: TaskOptions = TaskOptions::new("t");

    #[test]
    fn a_priority_above_4_is_refused_not_clamped() {
        let now = Utc::now();
        for p in [5u8, 9, u8::MAX] {
            match EnqueueBuilder::new(OPTIONS, 1u32)
                .priority(p)
                .into_new_job(now)
            {
                Err(Error::InvalidArgument(m)) => {
                    assert_eq!(
                        m,
                        format!(
                            "task t: priority `{p}` is out of range: expected 0 (highest) to 4 (lowest)"
                        )
                    );
                }
                other => panic!("priority {p}: {other:?}"),
            }
        }
        for p in 0..=4u8 {
            let job = EnqueueBuilder::new(OPTIONS, 1u32)
                .priority(p)
                .into_new_job(now)
                .unwrap();
            assert_eq!(job.priority, p);
        }
        let job = EnqueueBuilder::new(OPTIONS, 1u32)
            .into_new_job(now)
            .unwrap();
        assert_eq!(job.priority, Priority::DEFAULT.get());
    }
}
