//! Wake-ups across processes, the sleeper's side: while the producer is
//! idle, one connection of this runtime's own (outside the pool) is parked
//! in `SELECT SLEEP(n)` and registered in `queue_sleepers`; an enqueue in
//! any process that commits a ready job for one of its queues ends the
//! sleep with `KILL QUERY`, and the producer looks at once.
//!
//! The producer says what to watch through `Shared::park`: `Some(looks)`
//! (its queues and cursors) while it waits idle, `None` once it has work.
//! The parker registers and sleeps (one round trip), [`PARK`] at a time,
//! while the producer stays idle; when its sleep is ended, or its look finds
//! work, it wakes the producer and drops its registration. The producer
//! keeps polling as before: a sleeper nobody can wake (no privilege, a proxy
//! in between) costs one statement per [`PARK`] and changes nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, MySqlConnection};

use super::Shared;
use crate::store::wake::{self, DEREGISTER, Look, Parked};

/// How long one parked statement sleeps (it is ended sooner by a wake-up).
pub(super) const PARK: Duration = Duration::from_secs(5);

/// How long a registration outlives its sleep: rows of a sleeper that died
/// are ignored after this.
const GRACE: Duration = Duration::from_secs(2);

/// Registrations expired this long ago are deleted at the parker's start.
const PURGE_AFTER: Duration = Duration::from_secs(60);

/// The parked connection and its server-side id.
struct Parking {
    conn: MySqlConnection,
    id: u64,
    registered: bool,
}

pub(super) async fn parker(shared: Arc<Shared>) {
    let mut want = shared.park.subscribe();
    let mut stop = shared.stop.clone();
    let mut parking: Option<Parking> = None;
    let mut generation = 0u64;
    let mut failures = 0u32;
    let mut purge = true;
    loop {
        // Wait until the producer is idle (or the runtime stops).
        tokio::select! {
            r = want.wait_for(|w| w.is_some()) => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => {}
        }
        if shared.stopping() {
            break;
        }
        if parking.is_none() {
            match connect(&shared).await {
                Ok(p) => {
                    failures = 0;
                    parking = Some(p);
                }
                Err(e) => {
                    failed(&mut failures, "connecting", &e);
                    if shared.sleep_or_stop(shared.poll_interval.max(PARK)).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(p) = parking.as_mut() else { continue };
        let Some(looks) = want.borrow_and_update().clone() else {
            continue;
        };
        generation += 1;
        let now = shared.client.now();
        let expires = crate::time::clamp(crate::clock::add(now, PARK + GRACE));
        let mut sql = String::new();
        if purge {
            sql.push_str(&wake::purge_sql(crate::clock::sub(now, PURGE_AFTER)));
            sql.push_str("; ");
        }
        sql.push_str(&wake::register_sql(
            &looks,
            generation,
            &shared.owner,
            expires,
        ));
        sql.push_str("; ");
        sql.push_str(&wake::park_sql(&looks, PARK.as_secs_f64()));
        p.registered = true;
        let parked = {
            let park = wake::park(&mut p.conn, sql);
            tokio::pin!(park);
            let first = tokio::select! {
                r = &mut park => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            match first {
                Some(r) => r,
                None => {
                    // End our own sleep, then let the statement return.
                    let _ = shared.client.store().kill_query(p.id).await;
                    park.await
                }
            }
        };
        match parked {
            Ok(how) => {
                purge = false;
                failures = 0;
                let busy = want.borrow().is_none();
                if how != Parked::Slept {
                    shared.park_woken.notify_one();
                }
                if how != Parked::Slept || busy {
                    deregister(&mut parking).await;
                }
            }
            Err(e) => {
                // The row expires by itself; the connection is dropped.
                failed(&mut failures, "parking", &e);
                parking = None;
                if shared.sleep_or_stop(shared.poll_interval.max(PARK)).await {
                    break;
                }
            }
        }
    }
    deregister(&mut parking).await;
    if let Some(p) = parking.take() {
        let _ = p.conn.close().await;
    }
}

/// A new parked connection, outside the pool, and its id.
async fn connect(shared: &Shared) -> crate::error::Result<Parking> {
    let options = shared.client.pool().connect_options();
    let mut conn = options.connect().await?;
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut conn)
        .await?;
    Ok(Parking {
        conn,
        id,
        registered: false,
    })
}

/// Drops the registration (a failure drops the connection: the row
/// expires by itself).
async fn deregister(parking: &mut Option<Parking>) {
    let Some(p) = parking.as_mut() else { return };
    if !p.registered {
        return;
    }
    let sent = Instant::now();
    match sqlx::raw_sql(DEREGISTER).execute(&mut p.conn).await {
        Ok(_) => p.registered = false,
        Err(e) => {
            tracing::debug!(error = %e, after = ?sent.elapsed(), "dropping the sleeper registration failed");
            *parking = None;
        }
    }
}

/// Logs the first failure of a run of them (the runtime polls meanwhile).
fn failed(failures: &mut u32, what: &str, e: &crate::error::Error) {
    *failures += 1;
    if *failures == 1 {
        tracing::warn!(error = %e, during = what, "cross-process wake-ups are off until the parked connection works again; the runtime polls meanwhile");
    } else {
        tracing::debug!(error = %e, during = what, "parked connection failed again");
    }
}

/// What the producer watches while idle: its queues that are not paused,
/// with their cursors.
pub(super) fn looks(queues: impl IntoIterator<Item = Look>) -> Option<Vec<Look>> {
    let looks: Vec<Look> = queues.into_iter().collect();
    (!looks.is_empty()).then_some(looks)
}
