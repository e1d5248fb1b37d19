//! What an attempt ended with, as the completer writes it.

use chrono::{DateTime, Utc};
use queue_core::JobId;

/// An outcome to write.
#[derive(Debug)]
pub(super) enum Ack {
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
    pub(crate) fn id(&self) -> Option<(JobId, u32)> {
        match self {
            Ack::Complete { id, attempt }
            | Ack::Retry { id, attempt, .. }
            | Ack::Dead { id, attempt, .. } => Some((*id, *attempt)),
            Ack::Stop => None,
        }
    }
}
