//! Cron schedules evaluated in a time zone.
//!
//! # Syntax
//!
//! Expressions are those of the [`cron`] crate: six or seven fields,
//! **seconds first**, optionally followed by a year:
//!
//! ```text
//! sec  min  hour  day-of-month  month  day-of-week  [year]
//! 0    30   2     *             *      *
//! ```
//!
//! A five-field expression is read as the classic minute-first crontab form
//! and gets a `0` seconds field prepended (`30 2 * * *` becomes
//! `0 30 2 * * *`). Shorthands such as `@daily` and `@hourly` are accepted as
//! the `cron` crate reads them.
//!
//! Days of the week follow the `cron` crate, **not** classic crontab: numbers
//! run from 1 (Sunday) to 7 (Saturday) and 0 is rejected, in five-field
//! expressions as well. Names (`MON-FRI`, `Sun`) mean the same everywhere and
//! are the safer spelling.
//!
//! # Time zones and daylight saving
//!
//! The fields are matched against the local wall-clock time of the
//! schedule's zone (UTC unless another IANA zone is given). Every matching
//! local time fires **at most once**:
//!
//! - A local time that does not exist because clocks spring forward is
//!   **skipped**. In `Europe/Berlin` on 2026-03-29 the clocks go from 02:00
//!   to 03:00, so a daily `0 30 2 * * *` does not fire at all that day (it
//!   fires at 02:30 on the 28th and on the 30th).
//! - A local time that happens twice because clocks fall back fires **once,
//!   at its first occurrence** (the summer-time instant). In `Europe/Berlin`
//!   on 2026-10-25 the clocks go from 03:00 back to 02:00, so 02:30 happens at
//!   00:30 UTC and again at 01:30 UTC; a daily `0 30 2 * * *` fires at 00:30
//!   UTC only.
//!
//! A consequence of the second rule is that a schedule matching every minute
//! (or every few minutes) of the repeated hour fires during its first pass
//! only: in Berlin nothing fires from 01:00 to 01:59:59 UTC on the fall-back
//! day. Use UTC for interval-like schedules if that gap matters.
//!
//! (The `cron` crate's own iterator yields both instants of a repeated local
//! time, and when started inside the second pass it even steps back in time;
//! [`Schedule`] filters that so that its answers are strictly increasing.)
//!
//! With these rules the ticks of a schedule are a fixed set of UTC instants:
//! [`Schedule::next_after`] and [`Schedule::latest_at_or_before`] answer
//! questions about the same set whatever instant they start from.

use std::str::FromStr;

use chrono::offset::LocalResult;
use chrono::{DateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// A cron expression together with the time zone it is evaluated in.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
    source: String,
}

/// The error of [`Schedule::parse`] and [`normalize_cron`].
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression `{expression}`: {message}")]
    InvalidExpression {
        /// The expression as given.
        expression: String,
        /// The `cron` crate's explanation.
        message: String,
    },
    /// The time zone is not a known IANA name.
    #[error("unknown time zone `{zone}`: expected an IANA name such as `Europe/Berlin`")]
    UnknownTimeZone {
        /// The zone as given.
        zone: String,
    },
}

/// Returns the six- or seven-field expression that [`Schedule::parse`]
/// actually hands to the `cron` crate: a five-field (minute-first) expression
/// gets a `0` seconds field prepended; anything else is returned trimmed but
/// otherwise unchanged. The result is checked to parse.
///
/// ```
/// assert_eq!(queue_core::normalize_cron("*/5 * * * *").unwrap(), "0 */5 * * * *");
/// assert_eq!(queue_core::normalize_cron("0 30 2 * * *").unwrap(), "0 30 2 * * *");
/// ```
pub fn normalize_cron(expr: &str) -> Result<String, ScheduleError> {
    parse_cron(expr).map(|(normalized, _)| normalized)
}

fn parse_cron(expr: &str) -> Result<(String, cron::Schedule), ScheduleError> {
    let t = expr.trim();
    let normalized = if !t.starts_with('@') && t.split_whitespace().count() == 5 {
        format!("0 {t}")
    } else {
        t.to_owned()
    };
    let cron =
        cron::Schedule::from_str(&normalized).map_err(|e| ScheduleError::InvalidExpression {
            expression: expr.to_owned(),
            message: cron_message(&e.to_string(), &normalized),
        })?;
    Ok((normalized, cron))
}

/// Turns the `cron` crate's parse error, which echoes the expression and
/// marks the failing column with a caret on lines of their own, into one
/// line: the crate's explanation, or else what could not be read.
fn cron_message(raw: &str, normalized: &str) -> String {
    let fields = normalized.split_whitespace().count();
    if !normalized.starts_with('@') && !(5..=7).contains(&fields) {
        return format!(
            "expected 5 fields (minute first) or 6 to 7 fields (seconds first), found {fields}"
        );
    }
    let mut lines = raw.lines();
    let (Some(echo), Some(caret)) = (lines.next(), lines.next()) else {
        return raw.trim().to_owned();
    };
    let column = caret.len().saturating_sub(1);
    if echo != normalized || caret.trim() != "^" {
        return raw.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let reason = lines.collect::<Vec<_>>().join(" ");
    let reason = reason.trim();
    if !reason.is_empty() {
        return reason.to_owned();
    }
    match normalized
        .get(column..)
        .and_then(|s| s.split_whitespace().next())
    {
        Some(token) => format!("cannot read `{token}`"),
        None => "the expression ends too early".to_owned(),
    }
}

impl Schedule {
    /// Parses a cron expression (see the [module docs](self) for the syntax)
    /// and an optional IANA time zone name such as `Europe/Berlin` or `UTC`
    /// (case-sensitive; `None` means UTC).
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Schedule, ScheduleError> {
        let (_, cron) = parse_cron(expr)?;
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name.trim()).map_err(|_| ScheduleError::UnknownTimeZone {
                    zone: name.to_owned(),
                })?
            }
        };
        Ok(Schedule {
            cron,
            tz,
            source: expr.to_owned(),
        })
    }

    /// The expression as given to [`Schedule::parse`].
    pub fn expression(&self) -> &str {
        &self.source
    }

    /// The six- or seven-field expression actually evaluated (see
    /// [`normalize_cron`]).
    pub fn normalized(&self) -> &str {
        self.cron.source()
    }

    /// The zone the expression is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `t`, or `None` if there is none (the
    /// `cron` crate knows years up to 2100 only, and some expressions such as
    /// February 30th never match).
    ///
    /// Ticks are strictly increasing: `next_after(x) > x` always, so feeding
    /// the result back in never repeats an instant or goes back in time, even
    /// across daylight-saving changes (see the [module docs](self)).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .map(|local| local.with_timezone(&Utc))
            .find(|&u| u > t && self.is_first_occurrence(u))
    }

    /// The latest tick in `(not_before, t]`, or `None` if there is none.
    ///
    /// This is what a cron task fires after downtime when it catches up with
    /// the latest missed tick only. The search runs backwards from `t` with
    /// the `cron` crate's reverse iterator, so its cost does not depend on
    /// how many ticks the window holds.
    pub fn latest_at_or_before(
        &self,
        t: DateTime<Utc>,
        not_before: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if t <= not_before {
            return None;
        }
        // The reverse search walks local wall-clock times downwards. When `t`
        // lies in the second pass of a repeated hour, first occurrences of
        // local times later than `t`'s own are still at or before `t`: start
        // from the wall-clock time one offset-change later so they are seen.
        let local = t.with_timezone(&self.tz);
        let shift = match self.tz.from_local_datetime(&local.naive_local()) {
            LocalResult::Ambiguous(earlier, later) if later == local => {
                let gap = offset_secs(&earlier) - offset_secs(&later);
                TimeDelta::seconds(i64::from(gap.max(0)))
            }
            _ => TimeDelta::zero(),
        };
        // `prev_from` in the `cron` crate is strictly before its argument:
        // one nanosecond more makes it "at or before".
        let start = t
            .checked_add_signed(shift + TimeDelta::nanoseconds(1))
            .unwrap_or(t);
        for local in self.cron.after(&start.with_timezone(&self.tz)).rev() {
            let u = local.with_timezone(&Utc);
            if u > t || !self.is_first_occurrence(u) {
                continue;
            }
            return (u > not_before).then_some(u);
        }
        None
    }

    /// Whether `u` is the first instant showing its local wall-clock time
    /// (false only in the second pass of a repeated hour).
    fn is_first_occurrence(&self, u: DateTime<Utc>) -> bool {
        let local = u.with_timezone(&self.tz).naive_local();
        match self.tz.from_local_datetime(&local) {
            LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc) == u,
            _ => true,
        }
    }
}

fn offset_secs(dt: &DateTime<Tz>) -> i32 {
    dt.offset().fix().local_minus_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    fn berlin(expr: &str) -> Schedule {
        Schedule::parse(expr, Some("Europe/Berlin")).unwrap()
    }

    /// Every tick in `(from, to]`, by stepping with `next_after`.
    fn ticks(s: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(n) = s.next_after(t) {
            if n > to {
                break;
            }
            assert!(n > t, "{} went from {t} to {n}", s.expression());
            out.push(n);
            t = n;
        }
        out
    }

    #[test]
    fn five_fields_get_seconds() {
        assert_eq!(normalize_cron("*/5 * * * *").unwrap(), "0 */5 * * * *");
        assert_eq!(normalize_cron("  30 2 * * MON ").unwrap(), "0 30 2 * * MON");
        assert_eq!(normalize_cron("0 30 2 * * *").unwrap(), "0 30 2 * * *");
        assert_eq!(
            normalize_cron("0 0 0 1 1 * 2030").unwrap(),
            "0 0 0 1 1 * 2030"
        );
        assert_eq!(normalize_cron("@daily").unwrap(), "@daily");
        let s = Schedule::parse("30 2 * * *", None).unwrap();
        assert_eq!(s.expression(), "30 2 * * *");
        assert_eq!(s.normalized(), "0 30 2 * * *");
        assert_eq!(s.timezone(), Tz::UTC);
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T02:30:00Z"))
        );
    }

    #[test]
    fn day_of_week_numbers_are_the_cron_crates() {
        // 2026-01-04 is a Sunday: the `cron` crate's day 1.
        let s = Schedule::parse("0 12 * * 1", None).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-04T12:00:00Z"))
        );
        let s = Schedule::parse("0 12 * * MON", None).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-05T12:00:00Z"))
        );
        assert!(Schedule::parse("0 12 * * 0", None).is_err());
    }

    #[test]
    fn errors_quote_the_input() {
        let err = Schedule::parse("61 * * * * *", None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("invalid cron expression `61 * * * * *`: "),
            "{text}"
        );
        assert!(text.len() > "invalid cron expression `61 * * * * *`: ".len());
        for bad in ["", "* * *", "not a cron", "* * * * * * * *"] {
            let err = normalize_cron(bad).unwrap_err();
            assert!(matches!(err, ScheduleError::InvalidExpression { .. }));
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid cron expression `{bad}`: ")),
                "{err}"
            );
        }
        let cases = [
            (
                "61 * * * * *",
                "Seconds must be less than 59. ('61' specified.)",
            ),
            (
                "* * *",
                "expected 5 fields (minute first) or 6 to 7 fields (seconds first), found 3",
            ),
            (
                "",
                "expected 5 fields (minute first) or 6 to 7 fields (seconds first), found 0",
            ),
            (
                "0 12 * * 0",
                "Days of Week must be greater than or equal to 1. ('0' specified.)",
            ),
            ("0 0 0 30 2 * 1969", "cannot read `1969`"),
            ("0 0 0 1 1 * x-y", "cannot read `x-y`"),
        ];
        for (bad, reason) in cases {
            assert_eq!(
                normalize_cron(bad).unwrap_err().to_string(),
                format!("invalid cron expression `{bad}`: {reason}")
            );
        }
        let err = Schedule::parse("0 * * * * *", Some("Mars/Base")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown time zone `Mars/Base`: expected an IANA name such as `Europe/Berlin`"
        );
        assert!(Schedule::parse("0 * * * * *", Some("europe/berlin")).is_err());
    }

    #[test]
    fn zones_parse() {
        assert_eq!(
            Schedule::parse("0 * * * * *", Some("UTC"))
                .unwrap()
                .timezone(),
            Tz::UTC
        );
        assert_eq!(berlin("0 * * * * *").timezone(), Tz::Europe__Berlin);
        let ny = Schedule::parse("0 0 9 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            ny.next_after(utc("2026-01-15T00:00:00Z")),
            Some(utc("2026-01-15T14:00:00Z"))
        );
    }

    #[test]
    fn next_after_is_strict() {
        let s = Schedule::parse("*/10 * * * * *", None).unwrap();
        let t = utc("2026-05-01T10:00:00Z");
        assert_eq!(s.next_after(t), Some(utc("2026-05-01T10:00:10Z")));
        let t = utc("2026-05-01T10:00:09.999Z");
        assert_eq!(s.next_after(t), Some(utc("2026-05-01T10:00:10Z")));
        let t = utc("2026-05-01T10:00:00.5Z");
        assert_eq!(s.next_after(t), Some(utc("2026-05-01T10:00:10Z")));
        let every = Schedule::parse("* * * * * *", None).unwrap();
        assert_eq!(every.next_after(t), Some(utc("2026-05-01T10:00:01Z")));
    }

    #[test]
    fn never_matching_and_past_2100() {
        let feb30 = Schedule::parse("0 0 0 30 2 *", None).unwrap();
        assert_eq!(feb30.next_after(utc("2026-01-01T00:00:00Z")), None);
        assert_eq!(
            feb30.latest_at_or_before(utc("2026-01-01T00:00:00Z"), utc("1971-01-01T00:00:00Z")),
            None
        );
        let s = Schedule::parse("0 0 0 1 1 *", None).unwrap();
        assert_eq!(s.next_after(utc("2100-06-01T00:00:00Z")), None);
        let once = Schedule::parse("0 0 12 1 6 * 2030", None).unwrap();
        assert_eq!(
            once.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2030-06-01T12:00:00Z"))
        );
        assert_eq!(once.next_after(utc("2030-06-01T12:00:00Z")), None);
    }

    #[test]
    fn spring_forward_skips_the_missing_local_time() {
        // Europe/Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC).
        let s = berlin("0 30 2 * * *");
        let got = ticks(&s, utc("2026-03-27T12:00:00Z"), utc("2026-03-30T12:00:00Z"));
        assert_eq!(
            got,
            vec![
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST; the 29th is skipped
            ]
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-03-29T23:00:00Z"), utc("2026-03-28T02:00:00Z")),
            None
        );
        // Hourly keeps firing every real hour: 02:00 local does not exist,
        // 01:00 CET and 03:00 CEST are one hour apart.
        let hourly = berlin("0 0 * * * *");
        let got = ticks(
            &hourly,
            utc("2026-03-28T23:30:00Z"),
            utc("2026-03-29T02:30:00Z"),
        );
        assert_eq!(
            got,
            vec![
                utc("2026-03-29T00:00:00Z"), // 01:00 CET
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST
                utc("2026-03-29T02:00:00Z"), // 04:00 CEST
            ]
        );
    }

    #[test]
    fn fall_back_fires_the_first_occurrence_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC), so
        // 02:30 local is 00:30 UTC and again 01:30 UTC.
        let s = berlin("0 30 2 * * *");

        // What the `cron` crate itself yields: both instants.
        let raw: Vec<DateTime<Utc>> = s
            .cron
            .after(&utc("2026-10-24T12:00:00Z").with_timezone(&Tz::Europe__Berlin))
            .take(3)
            .map(|d| d.with_timezone(&Utc))
            .collect();
        assert_eq!(
            raw,
            vec![
                utc("2026-10-25T00:30:00Z"),
                utc("2026-10-25T01:30:00Z"),
                utc("2026-10-26T01:30:00Z"),
            ]
        );

        // Started inside the second pass, the crate's iterator steps back.
        let start = utc("2026-10-25T01:10:00Z");
        let raw: Vec<DateTime<Utc>> = berlin("0 * * * * *")
            .cron
            .after(&start.with_timezone(&Tz::Europe__Berlin))
            .take(3)
            .map(|d| d.with_timezone(&Utc))
            .collect();
        assert_eq!(
            raw,
            vec![
                utc("2026-10-25T00:11:00Z"),
                utc("2026-10-25T01:11:00Z"),
                utc("2026-10-25T00:12:00Z"),
            ]
        );

        // What `Schedule` yields: the first occurrence only.
        let got = ticks(&s, utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"));
        assert_eq!(
            got,
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
        // Starting inside the second pass (02:10 CET) does not go back to
        // 00:30 UTC nor fire 02:30 CET.
        assert_eq!(
            s.next_after(utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-10-25T00:30:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        // Looking back from the second pass finds the first occurrence.
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:10:00Z"), utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:45:00Z"), utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:45:00Z"), utc("2026-10-25T00:30:00Z")),
            None
        );
    }

    #[test]
    fn fall_back_per_minute_has_a_gap_and_never_goes_back() {
        let s = berlin("0 * * * * *");
        let got = ticks(&s, utc("2026-10-24T23:57:30Z"), utc("2026-10-25T02:02:30Z"));
        let first = utc("2026-10-24T23:58:00Z");
        // 23:58 .. 00:59 UTC (first pass, CEST), then 02:00 .. 02:02 UTC.
        assert_eq!(got.len(), 62 + 3);
        assert_eq!(got[0], first);
        assert_eq!(got[61], utc("2026-10-25T00:59:00Z"));
        assert_eq!(got[62], utc("2026-10-25T02:00:00Z"));
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        // Started inside the second pass, it moves forward to 03:00 CET.
        assert_eq!(
            s.next_after(utc("2026-10-25T01:20:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:20:00Z"), utc("2026-10-24T00:00:00Z")),
            Some(utc("2026-10-25T00:59:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T02:00:30Z"), utc("2026-10-24T00:00:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
    }

    #[test]
    fn fall_back_per_second_inside_the_second_pass() {
        let s = berlin("* * * * * *");
        // 02:00:00 CET, the start of the second pass.
        let t = utc("2026-10-25T01:00:00Z");
        assert_eq!(s.next_after(t), Some(utc("2026-10-25T02:00:00Z")));
        assert_eq!(
            s.latest_at_or_before(t, utc("2026-10-24T00:00:00Z")),
            Some(utc("2026-10-25T00:59:59Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:59:59Z"), utc("2026-10-24T00:00:00Z")),
            Some(utc("2026-10-25T00:59:59Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:59:59Z"), utc("2026-10-25T00:59:59Z")),
            None
        );
    }

    #[test]
    fn latest_at_or_before_basics() {
        let s = Schedule::parse("0 */15 * * * *", None).unwrap();
        let t = utc("2026-05-01T10:20:00Z");
        let long_ago = utc("2020-01-01T00:00:00Z");
        assert_eq!(
            s.latest_at_or_before(t, long_ago),
            Some(utc("2026-05-01T10:15:00Z"))
        );
        // Inclusive of `t`, exclusive of `not_before`.
        let t = utc("2026-05-01T10:15:00Z");
        assert_eq!(s.latest_at_or_before(t, long_ago), Some(t));
        assert_eq!(s.latest_at_or_before(utc("2026-05-01T10:29:59Z"), t), None);
        assert_eq!(
            s.latest_at_or_before(utc("2026-05-01T10:30:00Z"), t),
            Some(utc("2026-05-01T10:30:00Z"))
        );
        assert_eq!(s.latest_at_or_before(t, t), None);
        assert_eq!(s.latest_at_or_before(t, utc("2027-01-01T00:00:00Z")), None);
        // Sub-second instants.
        assert_eq!(
            s.latest_at_or_before(utc("2026-05-01T10:15:00.25Z"), long_ago),
            Some(t)
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-05-01T10:14:59.999999999Z"), long_ago),
            Some(utc("2026-05-01T10:00:00Z"))
        );
    }

    #[test]
    fn latest_at_or_before_is_fast_over_long_windows() {
        // Every second of January 1st: a year-long window holds 86 400 ticks
        // a year; the answer must come without walking them.
        let s = Schedule::parse("* * * 1 1 *", Some("Europe/Berlin")).unwrap();
        let got = s.latest_at_or_before(utc("2026-12-31T00:00:00Z"), utc("2020-01-01T00:00:00Z"));
        assert_eq!(got, Some(utc("2026-01-01T22:59:59Z")));
        let every = Schedule::parse("* * * * * *", None).unwrap();
        let t = utc("2026-07-01T12:34:56Z");
        assert_eq!(
            every.latest_at_or_before(t, utc("2026-01-01T00:00:00Z")),
            Some(t)
        );
        let never_since = Schedule::parse("0 0 0 1 1 * 2021", None).unwrap();
        assert_eq!(
            never_since
                .latest_at_or_before(utc("2099-12-31T00:00:00Z"), utc("2022-01-01T00:00:00Z")),
            None
        );
    }

    /// `latest_at_or_before` agrees with stepping through `next_after`.
    #[test]
    fn latest_agrees_with_next_after() {
        let exprs = [
            "0 * * * * *",
            "0 */7 * * * *",
            "0 30 2 * * *",
            "0 0 * * * *",
            "30 15 1-3 * * *",
            "0 0 0 * * SUN",
        ];
        let zones = [None, Some("Europe/Berlin"), Some("America/New_York")];
        // Windows around both 2026 Berlin transitions and a quiet day.
        let centers = [
            utc("2026-03-29T01:00:00Z"),
            utc("2026-10-25T01:00:00Z"),
            utc("2026-11-01T06:00:00Z"),
            utc("2026-06-10T12:00:00Z"),
        ];
        let mut rng = fastrand::Rng::with_seed(1);
        for expr in exprs {
            for zone in zones {
                let s = Schedule::parse(expr, zone).unwrap();
                for center in centers {
                    let from = center - TimeDelta::hours(30);
                    let to = center + TimeDelta::hours(30);
                    let all = ticks(&s, from, to);
                    for _ in 0..40 {
                        let a = from + TimeDelta::seconds(rng.i64(0..60 * 3_600));
                        let b = (a + TimeDelta::seconds(rng.i64(0..10 * 3_600))).min(to);
                        let want = all.iter().copied().rev().find(|&x| x > a && x <= b);
                        assert_eq!(
                            s.latest_at_or_before(b, a),
                            want,
                            "{expr} in {zone:?}: ({a}, {b}]"
                        );
                        // And at the ticks themselves.
                        if let Some(w) = want {
                            assert_eq!(s.latest_at_or_before(w, a), Some(w));
                            assert_eq!(s.next_after(w - TimeDelta::seconds(1)), Some(w));
                        }
                    }
                }
            }
        }
    }
}
