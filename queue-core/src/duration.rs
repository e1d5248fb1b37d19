//! The `30s` / `5m` / `250ms` spelling of durations.
//!
//! A duration is a whole number immediately followed by one unit:
//!
//! | unit | meaning      |
//! |------|--------------|
//! | `ms` | milliseconds |
//! | `s`  | seconds      |
//! | `m`  | minutes      |
//! | `h`  | hours        |
//! | `d`  | days (86 400 s, regardless of daylight saving) |
//!
//! There is no sign, no fraction, no space between number and unit and no
//! combination of units (`1h30m` is rejected; write `90m`).

use std::time::Duration;

const EXPECTED: &str = "expected a whole number followed by ms, s, m, h or d (for example `30s`)";

/// The error of [`parse_duration`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl DurationError {
    fn invalid(input: &str) -> Self {
        DurationError {
            input: input.to_owned(),
            reason: EXPECTED,
        }
    }

    /// The rejected text, as given.
    pub fn input(&self) -> &str {
        &self.input
    }
}

/// Parses a duration such as `250ms`, `30s`, `5m`, `1h` or `2d`.
///
/// Surrounding whitespace is ignored; `0s` (or zero in any unit) is accepted.
/// Empty text, a missing or unknown unit, a sign, a fraction, a space between
/// number and unit, and values too large for [`Duration`] are errors.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(queue_core::parse_duration("5m").unwrap(), Duration::from_secs(300));
/// assert!(queue_core::parse_duration("1.5s").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(DurationError::invalid(s));
    }
    let multiplier: u64 = match unit {
        "ms" => 0,
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(DurationError::invalid(s)),
    };
    let too_large = || DurationError {
        input: s.to_owned(),
        reason: "the value is too large",
    };
    let n: u64 = number.parse().map_err(|_| too_large())?;
    if multiplier == 0 {
        Ok(Duration::from_millis(n))
    } else {
        n.checked_mul(multiplier)
            .map(Duration::from_secs)
            .ok_or_else(too_large)
    }
}

/// Formats a duration in the shortest exact form [`parse_duration`] reads
/// back: `1h`, `90s`, `250ms`, `2d`; zero is `0s`.
///
/// The largest unit that divides the duration exactly is chosen. Parts below
/// one millisecond cannot be written and are dropped (rounded down), so
/// `1.0009s` formats as `1s` — except that a non-zero duration below one
/// millisecond formats as `0ms`.
pub fn format_duration(d: Duration) -> String {
    let millis = d.subsec_millis();
    let secs = d.as_secs();
    if millis != 0 {
        let total = u128::from(secs) * 1_000 + u128::from(millis);
        return format!("{total}ms");
    }
    if secs == 0 {
        return if d.is_zero() { "0s" } else { "0ms" }.to_owned();
    }
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(len) {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3_600)),
            ("2d", Duration::from_secs(172_800)),
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("  10s\t", Duration::from_secs(10)),
            ("007s", Duration::from_secs(7)),
            ("18446744073709551615ms", Duration::from_millis(u64::MAX)),
            ("18446744073709551615s", Duration::from_secs(u64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "   ", "5", "s", "5x", "5 s", "-5s", "+5s", "1.5s", "1h30m", "5S", "5sec", "ms5",
            "5ms ms",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.input(), bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid duration `{bad}`: expected a whole number followed by ms, s, m, h or d (for example `30s`)"
                )
            );
        }
    }

    #[test]
    fn rejects_overflow() {
        for bad in [
            "18446744073709551616ms",
            "18446744073709551615m",
            "999999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid duration `{bad}`: the value is too large")
            );
        }
    }

    #[test]
    fn formats_shortest_exact() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(3_600), "1h"),
            (Duration::from_secs(5_400), "90m"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(90_000), "25h"),
            (Duration::from_nanos(1_000_900_000), "1s"),
            (Duration::from_nanos(1_001_900_000), "1001ms"),
            (Duration::from_nanos(1), "0ms"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn format_then_parse_round_trips_whole_millis() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let d = match rng.u8(0..4) {
                0 => Duration::from_millis(rng.u64(0..10_000_000)),
                1 => Duration::from_secs(rng.u64(0..1_000_000)),
                2 => Duration::from_secs(60 * rng.u64(0..100_000)),
                _ => Duration::from_secs(3_600 * rng.u64(0..10_000)),
            };
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{d:?}");
        }
    }
}
