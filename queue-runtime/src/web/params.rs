//! Query strings and form bodies, read leniently (unknown keys are ignored;
//! bytes that are not UTF-8 are replaced) and checked strictly (a value
//! that does not parse is a `400 Bad Request` with the reason, never a
//! panic).

use std::str::FromStr;

use queue_core::{JobId, JobState};

/// The most jobs one page lists.
pub(super) const MAX_LIMIT: u32 = 500;
/// Jobs per page when `limit` is not given.
pub(super) const DEFAULT_LIMIT: u32 = 50;
/// The most job ids one "retry selected" takes.
pub(super) const MAX_SELECTED: usize = 1000;

/// The `key=value` pairs of a query string or an
/// `application/x-www-form-urlencoded` body, in order.
pub(super) fn pairs(input: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(input)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `key`, if any.
pub(super) fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The first value of `key`, trimmed, unless it is empty.
fn nonempty<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    first(pairs, key).map(str::trim).filter(|v| !v.is_empty())
}

/// A query string built from pairs, percent-encoded.
pub(super) fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `query` without the keys of a flash message, re-encoded.
pub(super) fn without_flash(query: &str) -> String {
    let kept = pairs(query.as_bytes());
    encode(
        kept.iter()
            .filter(|(k, _)| k != "flash" && k != "arg")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// A job id in a path or a form: a bare decimal number.
pub(super) fn job_id(s: &str) -> Result<JobId, String> {
    JobId::from_str(s).map_err(|e| e.to_string())
}

/// The filters and page of the job list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct JobsQuery {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub task: Option<String>,
    pub after: Option<JobId>,
    pub limit: u32,
}

impl JobsQuery {
    /// Reads `state`, `queue`, `task`, `after` and `limit`; an empty value
    /// is no filter.
    pub(super) fn parse(query: &str) -> Result<JobsQuery, String> {
        let pairs = pairs(query.as_bytes());
        let value = |key: &str| nonempty(&pairs, key);
        let state = value("state")
            .map(JobState::from_str)
            .transpose()
            .map_err(|e| e.to_string())?;
        let after = value("after").map(job_id).transpose()?;
        let limit = match value("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "invalid limit `{v}`: expected a number from 1 to {MAX_LIMIT}"
                    ));
                }
            },
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match value(key) {
                Some(v) if v.len() > 255 => Err(format!("`{key}` is longer than 255 bytes")),
                v => Ok(v.map(str::to_owned)),
            }
        };
        Ok(JobsQuery {
            state,
            queue: text("queue")?,
            task: text("task")?,
            after,
            limit,
        })
    }

    /// The query string of these filters (and page), for links.
    pub(super) fn to_query(&self) -> String {
        let after = self.after.map(|a| a.to_string());
        let limit = (self.limit != DEFAULT_LIMIT).then(|| self.limit.to_string());
        encode(
            [
                ("state", self.state.map(JobState::as_str)),
                ("queue", self.queue.as_deref()),
                ("task", self.task.as_deref()),
                ("after", after.as_deref()),
                ("limit", limit.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v))),
        )
    }
}

/// The outcome of an action, carried by the redirect back to the page
/// (`?flash=CODE&arg=…`). Only these codes are shown; their text is fixed
/// and the argument is escaped, so a crafted link can at most show one of
/// these sentences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FlashKind {
    Retried,
    NotDead,
    NoneSelected,
    Cancelled,
    NotCancelled,
    RanNow,
    NotRunNow,
    Deleted,
    NotDeleted,
    Paused,
    Resumed,
}

impl FlashKind {
    const ALL: [(FlashKind, &'static str); 11] = [
        (FlashKind::Retried, "retried"),
        (FlashKind::NotDead, "not-dead"),
        (FlashKind::NoneSelected, "none-selected"),
        (FlashKind::Cancelled, "cancelled"),
        (FlashKind::NotCancelled, "not-cancelled"),
        (FlashKind::RanNow, "ran-now"),
        (FlashKind::NotRunNow, "not-run-now"),
        (FlashKind::Deleted, "deleted"),
        (FlashKind::NotDeleted, "not-deleted"),
        (FlashKind::Paused, "paused"),
        (FlashKind::Resumed, "resumed"),
    ];

    pub(super) fn code(self) -> &'static str {
        FlashKind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("", |(_, c)| c)
    }
}

/// A flash message: what the action did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Flash {
    pub kind: FlashKind,
    pub arg: String,
}

impl Flash {
    pub(super) fn new(kind: FlashKind, arg: impl ToString) -> Flash {
        Flash {
            kind,
            arg: arg.to_string(),
        }
    }

    /// The flash message of a page's query string, if it has a known one.
    pub(super) fn parse(query: &str) -> Option<Flash> {
        let pairs = pairs(query.as_bytes());
        let code = first(&pairs, "flash")?;
        let kind = FlashKind::ALL.iter().find(|(_, c)| *c == code)?.0;
        let arg: String = first(&pairs, "arg")
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        Some(Flash { kind, arg })
    }

    /// `flash=…&arg=…`.
    pub(super) fn to_query(&self) -> String {
        encode([("flash", self.kind.code()), ("arg", self.arg.as_str())])
    }

    /// Whether it reports that nothing was done.
    pub(super) fn is_warning(&self) -> bool {
        matches!(
            self.kind,
            FlashKind::NotDead
                | FlashKind::NoneSelected
                | FlashKind::NotCancelled
                | FlashKind::NotRunNow
                | FlashKind::NotDeleted
        )
    }

    /// The sentence shown.
    pub(super) fn text(&self) -> String {
        let a = &self.arg;
        match self.kind {
            FlashKind::Retried => format!("Put {a} dead job(s) back to run."),
            FlashKind::NotDead => format!("Job {a} is not dead (any more): nothing to retry."),
            FlashKind::NoneSelected => "No job was selected.".to_owned(),
            FlashKind::Cancelled => format!("Cancelled job {a}."),
            FlashKind::NotCancelled => {
                format!("Job {a} was not cancelled: it is running, dead or gone.")
            }
            FlashKind::RanNow => format!("Job {a} is ready to run now."),
            FlashKind::NotRunNow => {
                format!("Job {a} is not scheduled (any more): nothing to run now.")
            }
            FlashKind::Deleted => format!("Deleted job {a}."),
            FlashKind::NotDeleted => format!("Job {a} was not deleted: it is running or gone."),
            FlashKind::Paused => format!("Paused queue {a}."),
            FlashKind::Resumed => format!("Resumed queue {a}."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_filters_parse_or_say_why_not() {
        let q = JobsQuery::parse("state=dead&queue=mail&task=&after=17&limit=20&x=1").unwrap();
        assert_eq!(
            q,
            JobsQuery {
                state: Some(JobState::Dead),
                queue: Some("mail".into()),
                task: None,
                after: Some(JobId(17)),
                limit: 20,
            }
        );
        assert_eq!(q.to_query(), "state=dead&queue=mail&after=17&limit=20");
        assert_eq!(JobsQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            "state=zombie",
            "after=-1",
            "after=x",
            "limit=0",
            "limit=501",
            "limit=1e3",
            "after=99999999999999999999999",
        ] {
            assert!(JobsQuery::parse(bad).is_err(), "{bad}");
        }
        // Not UTF-8, stray percent signs: read, not a panic.
        assert!(JobsQuery::parse("queue=%FF%FE&task=%").is_ok());
    }

    #[test]
    fn flash_messages_are_known_codes_only() {
        let f = Flash::new(FlashKind::Paused, "mail & <b>");
        let back = Flash::parse(&f.to_query()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.text(), "Paused queue mail & <b>.");
        assert_eq!(Flash::parse("flash=pwned&arg=x"), None);
        assert_eq!(
            without_flash("state=dead&flash=retried&arg=3"),
            "state=dead"
        );
    }
}
