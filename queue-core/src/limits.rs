//! Flow-control limits of a task: how many of its jobs may run at once
//! across every runtime (`#[task(concurrency = N)]`) and how many may start
//! per window (`#[task(rate = "N/1s")]`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::duration::{format_duration, parse_duration};

/// At most `count` starts per `per`, as `#[task(rate = "100/1s")]` declares.
///
/// Windows are fixed and aligned to the Unix epoch (a `1m` window starts at
/// every whole minute, UTC): each start is counted in the window of the
/// claim that starts it. See docs/flow-control.md for the edges (up to
/// `2 × count` starts within one window's length across a boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Starts per window, at least 1.
    pub count: u32,
    /// The window's length, from 1 ms to 1 day, in whole milliseconds.
    pub per: Duration,
}

impl Rate {
    /// The longest window: one day.
    pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);

    /// `count` starts per `per`, checked as the attribute checks it.
    ///
    /// # Errors
    /// If `count` is 0, or `per` is under 1 ms, over a day, or not a whole
    /// number of milliseconds.
    pub fn new(count: u32, per: Duration) -> Result<Rate, RateError> {
        if count == 0 {
            return Err(RateError::new(
                format!("{count}/{}", format_duration(per)),
                "the count must be at least 1",
            ));
        }
        if per < Duration::from_millis(1)
            || per > Self::MAX_WINDOW
            || !per.subsec_nanos().is_multiple_of(1_000_000)
        {
            return Err(RateError::new(
                format!("{count}/{}", format_duration(per)),
                "the window must be whole milliseconds from 1ms to 1d",
            ));
        }
        Ok(Rate { count, per })
    }

    /// The window's length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.per.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.per))
    }
}

impl FromStr for Rate {
    type Err = RateError;

    /// Parses `N/D`: a count, a slash and a duration as [`parse_duration`]
    /// reads it (`100/1s`, `1000/1h`, `5/250ms`). Whitespace around the parts
    /// is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((count, per)) = s.split_once('/') else {
            return Err(RateError::new(
                s,
                "expected `N/duration`, such as `100/1s` or `1000/1h`",
            ));
        };
        let count: u32 = count.trim().parse().map_err(|_| {
            RateError::new(
                s,
                "the count before `/` must be a whole number from 1 to 4294967295",
            )
        })?;
        let per = parse_duration(per).map_err(|_| {
            RateError::new(
                s,
                "the window after `/` must be a duration such as `1s`, `5m` or `1h`",
            )
        })?;
        Rate::new(count, per).map_err(|e| RateError {
            input: s.to_owned(),
            ..e
        })
    }
}

/// The error of a [`Rate`] that cannot be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate `{input}`: {reason}")]
pub struct RateError {
    input: String,
    reason: &'static str,
}

impl RateError {
    fn new(input: impl Into<String>, reason: &'static str) -> RateError {
        RateError {
            input: input.into(),
            reason,
        }
    }

    /// Why the rate was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "100/1s".parse().unwrap();
        assert_eq!(
            r,
            Rate {
                count: 100,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(r.to_string(), "100/1s");
        assert_eq!(
            " 1000 / 1h ".parse::<Rate>().unwrap().window_ms(),
            3_600_000
        );
        assert_eq!("5/250ms".parse::<Rate>().unwrap().to_string(), "5/250ms");
        assert_eq!("1/1d".parse::<Rate>().unwrap().per, Rate::MAX_WINDOW);
    }

    #[test]
    fn bad_rates_say_why() {
        for (bad, why) in [
            ("100", "expected `N/duration`"),
            ("0/1s", "at least 1"),
            ("-1/1s", "whole number"),
            ("x/1s", "whole number"),
            ("1/", "duration such as"),
            ("1/1.5s", "duration such as"),
            ("1/0s", "from 1ms to 1d"),
            ("1/2d", "from 1ms to 1d"),
        ] {
            let e = bad.parse::<Rate>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        assert!(Rate::new(1, Duration::from_micros(1500)).is_err());
    }
}
