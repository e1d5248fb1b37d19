//! The claim position of one runtime in each queue: per-priority cursors
//! over `queue_ready`, the look behind them, and the rows found there.
//! Pure in-memory state (the SQL that uses it is `store::claim`).
//!
//! A claim starts after the last row this runtime claimed in each priority,
//! so it walks only what other claimers took since, however many
//! delete-marked records earlier claims left behind. A row can still appear
//! *behind* a cursor (its inserting transaction committed after a later row
//! was claimed, or another claimer locked it and rolled back): the probe
//! ranges look behind the cursors, the last two seconds' worth often and the
//! whole range rarely, and the rows found are claimed by key, so a cursor
//! never moves back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::store::{ClaimTicket, Claimed, ClaimedJob, LEVELS, Lane};

/// How far behind its cursor a probe looks often.
pub(crate) const PROBE_LAG: Duration = Duration::from_secs(2);
/// Stragglers kept per queue at most (more are found by the next probe).
const MAX_STRAGGLERS: usize = 1000;

/// The claim position of one runtime in one queue.
#[derive(Debug)]
pub(crate) struct Cursors {
    pub(crate) queue: String,
    /// Last claimed `seq` per priority (0: nothing claimed yet).
    last: [u64; LEVELS],
    /// Snapshots of `last`, newest at the back, for the lagged probe.
    history: VecDeque<(Instant, [u64; LEVELS])>,
    /// Rows found behind the cursors, to claim by key: (priority, seq).
    stragglers: Vec<(u8, u64)>,
    /// The lane this runtime claims first, if any (`store::claim::Lane`).
    lane: Option<Lane>,
}

impl Cursors {
    pub(crate) fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            last: [0; LEVELS],
            history: VecDeque::new(),
            stragglers: Vec::new(),
            lane: None,
        }
    }

    /// Claims `lane` first from now on. A change starts the cursors again
    /// from the head of the index: the cursors moved past the rows of the
    /// lanes that were others' and may be this runtime's now.
    pub(crate) fn set_lane(&mut self, lane: Option<Lane>) {
        if self.lane == lane {
            return;
        }
        self.lane = lane;
        self.last = [0; LEVELS];
        self.history.clear();
        self.stragglers.clear();
    }

    /// The lane this runtime claims first, if any (probes keep to it).
    pub(crate) fn lane(&self) -> Option<Lane> {
        self.lane
    }

    /// The ranges a probe should look at: for each priority, `(low, high]`
    /// behind the cursor. `full` looks back to the start of the range.
    pub(crate) fn probe_ranges(&mut self, full: bool) -> Vec<(u8, u64, u64)> {
        let now = Instant::now();
        while self.history.len() > 1 && now.duration_since(self.history[1].0) >= PROBE_LAG {
            self.history.pop_front();
        }
        let lagged = self.history.front().map_or([0; LEVELS], |h| h.1);
        let mut out = Vec::new();
        for (p, (&high, &lag)) in self.last.iter().zip(lagged.iter()).enumerate() {
            let low = if full { 0 } else { lag };
            if high > low {
                out.push((p as u8, low, high));
            }
        }
        out
    }

    /// Records rows a probe found behind the cursors.
    pub(crate) fn add_stragglers(&mut self, found: impl IntoIterator<Item = (u8, u64)>) {
        for f in found {
            if !self.stragglers.contains(&f) {
                self.stragglers.push(f);
            }
        }
        self.stragglers.truncate(MAX_STRAGGLERS);
    }

    pub(crate) fn has_stragglers(&self) -> bool {
        !self.stragglers.is_empty()
    }

    /// Starts a claim of up to `limit` jobs: the cursor positions to claim
    /// after, and the stragglers to claim by key (taken from the cursors
    /// until the claim is settled).
    /// What an idle look needs: the cursors and stragglers, leaving them in
    /// place.
    pub(crate) fn peek(&self) -> ClaimTicket {
        ClaimTicket {
            queue: self.queue.clone(),
            last: self.last,
            stragglers: self.stragglers.clone(),
            limit: 0,
            // An idle look sees the whole index: a job in another lane
            // whose runtimes are busy or gone is claimed by the top-up.
            lane: None,
        }
    }

    pub(crate) fn ticket(&mut self, limit: usize) -> ClaimTicket {
        ClaimTicket {
            queue: self.queue.clone(),
            last: self.last,
            stragglers: std::mem::take(&mut self.stragglers),
            limit,
            lane: self.lane,
        }
    }

    /// Records a claim's result: the cursors move past the rows it claimed
    /// from the ranges (never back), and stragglers it did not reach are
    /// kept for the next claim. Returns the jobs and how many claim-index
    /// rows the claim took (more than the jobs when some rows' jobs were
    /// cancelled).
    pub(crate) fn settle(
        &mut self,
        ticket: ClaimTicket,
        result: Result<Claimed>,
    ) -> Result<(Vec<ClaimedJob>, usize)> {
        let ClaimTicket {
            stragglers, limit, ..
        } = ticket;
        match result {
            Ok(Claimed { jobs, keys, .. }) => {
                // Stragglers the claim passed over were locked by another
                // claimer or are gone; the next probe finds any that remain.
                let from_range: Vec<(u8, u64)> = keys
                    .iter()
                    .copied()
                    .filter(|k| !stragglers.contains(k))
                    .collect();
                if keys.len() == limit {
                    // Cut off by LIMIT: keep the stragglers not reached.
                    self.add_stragglers(stragglers.into_iter().filter(|k| !keys.contains(k)));
                }
                self.advance(&from_range);
                Ok((jobs, keys.len()))
            }
            Err(e) => {
                self.add_stragglers(stragglers);
                Err(e)
            }
        }
    }

    fn advance(&mut self, claimed: &[(u8, u64)]) {
        for &(p, seq) in claimed {
            let p = usize::from(p);
            if p < LEVELS && seq > self.last[p] {
                self.last[p] = seq;
            }
        }
        let now = Instant::now();
        if self.history.back().is_none_or(|h| h.1 != self.last) {
            self.history.push_back((now, self.last));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ranges_lag_behind_the_cursor() {
        let mut c = Cursors::new("q");
        assert!(c.probe_ranges(false).is_empty());
        c.advance(&[(0, 10), (2, 7)]);
        // With one snapshot, the lagged view is that snapshot itself.
        assert!(c.probe_ranges(false).is_empty());
        assert_eq!(c.probe_ranges(true), vec![(0, 0, 10), (2, 0, 7)]);
        c.advance(&[(0, 20)]);
        assert_eq!(c.probe_ranges(false), vec![(0, 10, 20)]);
    }
}
