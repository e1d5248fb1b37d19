//! How long a failed job waits before its next attempt.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::duration::{format_duration, parse_duration};

/// The wait between a failed attempt and the next one.
///
/// Retries are numbered from 1: retry 1 is the second attempt, retry 2 the
/// third, and so on. [`Backoff::base_delay`] is the deterministic part;
/// [`Backoff::delay`] adds jitter so that jobs that failed together do not
/// all come back at the same instant.
///
/// The variants are plain data and can be built in a `const` or `static`:
///
/// ```
/// # use std::time::Duration;
/// # use queue_core::Backoff;
/// static B: Backoff = Backoff::Exponential {
///     base: Duration::from_millis(1000),
///     max: Duration::from_millis(3600000),
/// };
/// assert_eq!(B, Backoff::DEFAULT);
/// assert_eq!("exponential(1s, 1h)".parse::<Backoff>().unwrap(), B);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// The same delay before every retry, without jitter. Spelled
    /// `constant(100ms)`; the delay may be zero.
    Constant(Duration),
    /// The delay times the retry number (`d`, `2d`, `3d`, …), plus jitter.
    /// Spelled `linear(10s)`; the delay must be greater than zero.
    Linear(Duration),
    /// `base`, `2 × base`, `4 × base`, … capped at `max`, plus jitter (the
    /// result still capped at `max`). Spelled `exponential(1s, 10m)`; `base`
    /// must be greater than zero and `max` at least `base`.
    Exponential {
        /// The delay before retry 1.
        base: Duration,
        /// The longest delay, jitter included.
        max: Duration,
    },
}

impl Backoff {
    /// Exponential from one second, capped at one hour: `exponential(1s, 1h)`.
    pub const DEFAULT: Backoff = Backoff::Exponential {
        base: Duration::from_secs(1),
        max: Duration::from_secs(3_600),
    };

    /// The delay before retry number `retry` (1-based), without jitter.
    ///
    /// - `Constant(d)`: `d`;
    /// - `Linear(d)`: `d × retry` (saturating at [`Duration::MAX`]);
    /// - `Exponential { base, max }`: `base × 2^(retry - 1)`, capped at `max`,
    ///   without overflow for any `retry`.
    ///
    /// `retry` 0 is treated as 1.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let retry = retry.max(1);
        match *self {
            Backoff::Constant(d) => d,
            Backoff::Linear(d) => d.saturating_mul(retry),
            Backoff::Exponential { base, max } => {
                let shift = retry - 1;
                let grown = if shift < u32::BITS {
                    base.checked_mul(1u32 << shift)
                } else {
                    None
                };
                match grown {
                    Some(d) => d.min(max),
                    // Overflowing `Duration` is certainly above `max`, unless
                    // `base` is zero.
                    None if base.is_zero() => Duration::ZERO,
                    None => max,
                }
            }
        }
    }

    /// The delay before retry number `retry` (1-based), with jitter.
    ///
    /// For `Linear` and `Exponential` a uniformly random extra in
    /// `[0, base_delay / 4]` is added to [`Backoff::base_delay`]; for
    /// `Exponential` the sum is then capped at `max`. `Constant` has no
    /// jitter.
    pub fn delay(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = self.base_delay(retry);
        match *self {
            Backoff::Constant(_) => base,
            Backoff::Linear(_) => with_jitter(base, rng),
            Backoff::Exponential { max, .. } => with_jitter(base, rng).min(max),
        }
    }

    /// Whether [`Backoff::delay`] adds jitter (every variant but `Constant`).
    pub const fn has_jitter(&self) -> bool {
        !matches!(self, Backoff::Constant(_))
    }
}

/// `base` plus a uniformly random extra in `[0, base / 4]`, saturating.
fn with_jitter(base: Duration, rng: &mut fastrand::Rng) -> Duration {
    let quarter = base / 4;
    let nanos = u64::try_from(quarter.as_nanos()).unwrap_or(u64::MAX);
    base.saturating_add(Duration::from_nanos(rng.u64(0..=nanos)))
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

impl fmt::Display for Backoff {
    /// The canonical spelling that [`Backoff::from_str`] reads back:
    /// `constant(100ms)`, `linear(10s)`, `exponential(1s, 10m)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Backoff::Constant(d) => write!(f, "constant({})", format_duration(d)),
            Backoff::Linear(d) => write!(f, "linear({})", format_duration(d)),
            Backoff::Exponential { base, max } => write!(
                f,
                "exponential({}, {})",
                format_duration(base),
                format_duration(max)
            ),
        }
    }
}

const EXPECTED_FORM: &str = "expected `constant(D)`, `linear(D)` or `exponential(BASE, MAX)`";

/// The error of parsing a [`Backoff`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid backoff `{input}`: {reason}")]
pub struct BackoffError {
    input: String,
    reason: &'static str,
}

impl BackoffError {
    /// The rejected text, as given.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl FromStr for Backoff {
    type Err = BackoffError;

    /// Parses `constant(D)`, `linear(D)` or `exponential(BASE, MAX)`, where
    /// the durations are spelled as [`parse_duration`] reads them. Whitespace
    /// around the name, the parentheses and the comma is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| BackoffError {
            input: s.to_owned(),
            reason,
        };
        let t = s.trim();
        let (name, rest) = t.split_once('(').ok_or_else(|| fail(EXPECTED_FORM))?;
        let inner = rest.strip_suffix(')').ok_or_else(|| fail(EXPECTED_FORM))?;
        let args: Vec<&str> = inner.split(',').collect();
        let duration =
            |arg: &str| parse_duration(arg).map_err(|_| fail("expected a duration such as `10s`"));
        match name.trim_end() {
            "constant" => match args[..] {
                [d] => Ok(Backoff::Constant(duration(d)?)),
                _ => Err(fail(
                    "`constant` takes one duration, as in `constant(100ms)`",
                )),
            },
            "linear" => match args[..] {
                [d] => {
                    let d = duration(d)?;
                    if d.is_zero() {
                        return Err(fail("the delay of `linear` must be greater than zero"));
                    }
                    Ok(Backoff::Linear(d))
                }
                _ => Err(fail("`linear` takes one duration, as in `linear(10s)`")),
            },
            "exponential" => match args[..] {
                [base, max] => {
                    let (base, max) = (duration(base)?, duration(max)?);
                    if base.is_zero() {
                        return Err(fail("BASE must be greater than zero"));
                    }
                    if max < base {
                        return Err(fail("MAX must be at least BASE"));
                    }
                    Ok(Backoff::Exponential { base, max })
                }
                _ => Err(fail(
                    "`exponential` takes two durations, as in `exponential(1s, 10m)`",
                )),
            },
            _ => Err(fail(EXPECTED_FORM)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn default_is_exponential_1s_1h() {
        assert_eq!(
            Backoff::default(),
            Backoff::Exponential {
                base: secs(1),
                max: secs(3_600)
            }
        );
        assert_eq!(Backoff::DEFAULT.to_string(), "exponential(1s, 1h)");
    }

    #[test]
    fn parses_canonical_and_spaced_spellings() {
        let cases = [
            (
                "constant(100ms)",
                Backoff::Constant(Duration::from_millis(100)),
            ),
            ("constant(0s)", Backoff::Constant(Duration::ZERO)),
            ("linear(10s)", Backoff::Linear(secs(10))),
            (
                "exponential(1s, 10m)",
                Backoff::Exponential {
                    base: S,
                    max: secs(600),
                },
            ),
            (
                "  exponential ( 1s ,10m )  ",
                Backoff::Exponential {
                    base: S,
                    max: secs(600),
                },
            ),
            (
                "exponential(5s,5s)",
                Backoff::Exponential {
                    base: secs(5),
                    max: secs(5),
                },
            ),
            ("linear( 2m )", Backoff::Linear(secs(120))),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Backoff>().unwrap(), want, "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for b in [
            Backoff::Constant(Duration::from_millis(100)),
            Backoff::Linear(secs(90)),
            Backoff::Exponential {
                base: Duration::from_millis(250),
                max: secs(7_200),
            },
            Backoff::DEFAULT,
        ] {
            let text = b.to_string();
            assert_eq!(text.parse::<Backoff>().unwrap(), b, "{text}");
        }
        assert_eq!(Backoff::Linear(secs(10)).to_string(), "linear(10s)");
        assert_eq!(
            Backoff::Constant(Duration::from_millis(100)).to_string(),
            "constant(100ms)"
        );
    }

    #[test]
    fn rejects_with_reasons() {
        let form = "expected `constant(D)`, `linear(D)` or `exponential(BASE, MAX)`";
        let dur = "expected a duration such as `10s`";
        let cases = [
            ("fast", form),
            ("", form),
            ("linear", form),
            ("linear(10s", form),
            ("linear 10s)", form),
            ("Linear(10s)", form),
            ("quadratic(1s)", form),
            ("linear(10s) x", form),
            ("linear(x)", dur),
            ("linear()", dur),
            ("constant(-1s)", dur),
            ("exponential(1s, soon)", dur),
            (
                "linear(1s, 2s)",
                "`linear` takes one duration, as in `linear(10s)`",
            ),
            (
                "constant(1s,)",
                "`constant` takes one duration, as in `constant(100ms)`",
            ),
            (
                "exponential(1s)",
                "`exponential` takes two durations, as in `exponential(1s, 10m)`",
            ),
            (
                "linear(0s)",
                "the delay of `linear` must be greater than zero",
            ),
            ("exponential(0s, 1m)", "BASE must be greater than zero"),
            ("exponential(10s, 1s)", "MAX must be at least BASE"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<Backoff>().unwrap_err();
            assert_eq!(err.input(), text);
            assert_eq!(
                err.to_string(),
                format!("invalid backoff `{text}`: {reason}"),
                "{text}"
            );
        }
    }

    #[test]
    fn base_delays() {
        let c = Backoff::Constant(secs(5));
        let l = Backoff::Linear(secs(5));
        let e = Backoff::Exponential {
            base: S,
            max: secs(60),
        };
        for retry in [0, 1, 2, 10, u32::MAX] {
            assert_eq!(c.base_delay(retry), secs(5));
        }
        assert_eq!(l.base_delay(0), secs(5));
        assert_eq!(l.base_delay(1), secs(5));
        assert_eq!(l.base_delay(3), secs(15));
        assert_eq!(Backoff::Linear(Duration::MAX).base_delay(2), Duration::MAX);
        let want = [1, 1, 2, 4, 8, 16, 32, 60, 60];
        for (retry, want) in (0u32..).zip(want) {
            assert_eq!(e.base_delay(retry), secs(want), "retry {retry}");
        }
        for retry in [31, 32, 33, 64, 1_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(e.base_delay(retry), secs(60), "retry {retry}");
        }
        let huge = Backoff::Exponential {
            base: secs(u64::MAX / 2),
            max: Duration::MAX,
        };
        assert_eq!(huge.base_delay(2), secs(u64::MAX - 1));
        assert_eq!(huge.base_delay(3), Duration::MAX);
        let zero = Backoff::Exponential {
            base: Duration::ZERO,
            max: secs(1),
        };
        assert_eq!(zero.base_delay(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn jitter_flags() {
        assert!(!Backoff::Constant(S).has_jitter());
        assert!(Backoff::Linear(S).has_jitter());
        assert!(Backoff::DEFAULT.has_jitter());
    }

    #[test]
    fn constant_has_no_jitter() {
        let b = Backoff::Constant(Duration::from_millis(1_500));
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            assert_eq!(b.delay(1 + (seed % 7) as u32, &mut rng), b.base_delay(1));
        }
    }

    #[test]
    fn jittered_delays_stay_in_bounds() {
        let strategies = [
            Backoff::Linear(Duration::from_millis(1_000)),
            Backoff::Linear(Duration::from_millis(3)),
            Backoff::Exponential {
                base: Duration::from_millis(100),
                max: secs(10),
            },
            Backoff::DEFAULT,
            Backoff::Exponential {
                base: Duration::MAX,
                max: Duration::MAX,
            },
        ];
        for seed in 0..500u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            for b in strategies {
                for retry in [1, 2, 3, 5, 8, 13, 40, u32::MAX] {
                    let base = b.base_delay(retry);
                    let got = b.delay(retry, &mut rng);
                    assert!(got >= base, "{b} retry {retry}: {got:?} < {base:?}");
                    assert!(
                        got <= base.saturating_add(base / 4),
                        "{b} retry {retry}: {got:?} too large for {base:?}"
                    );
                    if let Backoff::Exponential { max, .. } = b {
                        assert!(got <= max, "{b} retry {retry}: {got:?} > {max:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let b = Backoff::Linear(secs(100));
        let mut rng = fastrand::Rng::with_seed(42);
        let delays: Vec<Duration> = (0..100).map(|_| b.delay(1, &mut rng)).collect();
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*min < secs(105) && *max > secs(120), "{min:?} {max:?}");
        // The same seed gives the same delays.
        let mut again = fastrand::Rng::with_seed(42);
        let repeat: Vec<Duration> = (0..100).map(|_| b.delay(1, &mut again)).collect();
        assert_eq!(delays, repeat);
    }
}
