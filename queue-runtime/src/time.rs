//! Times as the database stores them.
//!
//! Every time column is a `DATETIME(6)`, which holds 1000-01-01 to
//! 9999-12-31 23:59:59.999999. Times are bound as `DATETIME` values
//! ([`At`]), never as `TIMESTAMP` ones: the server turns a `TIMESTAMP`
//! outside 1970…2038 into NULL (or a zero date) on its way into a
//! `DATETIME` column.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::{MySql, MySqlTypeInfo};
use sqlx::{Encode, Type};

use crate::error::{Error, Result};

/// The earliest time the database can store: 1000-01-01 00:00:00 UTC.
pub fn earliest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1000, 1, 1)
        .unwrap_or(NaiveDate::MIN)
        .and_time(NaiveTime::MIN)
        .and_utc()
}

/// The latest time the database can store: 9999-12-31 23:59:59.999999 UTC.
pub fn latest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .unwrap_or(NaiveDateTime::MAX)
        .and_utc()
}

/// `t` moved into the storable range: an earlier time becomes
/// [`earliest`], a later one [`latest`]; sub-microsecond digits are cut
/// (the column keeps microseconds).
pub(crate) fn clamp(t: DateTime<Utc>) -> DateTime<Utc> {
    let t = t.clamp(earliest(), latest());
    let nanos = t.timestamp_subsec_nanos();
    t - chrono::TimeDelta::nanoseconds(i64::from(nanos % 1000))
}

/// A job's requested run time, checked: a time before the storable range
/// is stored as [`earliest`] (it is in the past, so the job runs at once);
/// a time after it is refused.
pub(crate) fn run_at(t: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if t > latest() {
        return Err(Error::InvalidArgument(format!(
            "run time {t} is after {}, the latest time the database can store \
             (supported: {} to {})",
            latest(),
            earliest(),
            latest()
        )));
    }
    Ok(clamp(t))
}

/// The clock's reading, checked: the runtime cannot write times outside
/// the storable range, so a clock outside it fails enqueues.
pub(crate) fn now(t: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if t < earliest() || t > latest() {
        return Err(Error::InvalidArgument(format!(
            "the clock reads {t}, outside the times the database can store ({} to {})",
            earliest(),
            latest()
        )));
    }
    Ok(clamp(t))
}

/// A time bound as a `DATETIME(6)` parameter, clamped into the storable
/// range (callers that must refuse out-of-range times check first).
#[derive(Clone, Copy, Debug)]
pub(crate) struct At(pub(crate) DateTime<Utc>);

impl Type<MySql> for At {
    fn type_info() -> MySqlTypeInfo {
        <NaiveDateTime as Type<MySql>>::type_info()
    }
}

impl Encode<'_, MySql> for At {
    fn encode_by_ref(&self, buf: &mut Vec<u8>) -> Result<IsNull, BoxDynError> {
        <NaiveDateTime as Encode<'_, MySql>>::encode(clamp(self.0).naive_utc(), buf)
    }

    fn size_hint(&self) -> usize {
        <NaiveDateTime as Encode<'_, MySql>>::size_hint(&clamp(self.0).naive_utc())
    }
}

/// `Some(At(t))` for an optional time.
pub(crate) fn opt(t: Option<DateTime<Utc>>) -> Option<At> {
    t.map(At)
}

/// A stored time column: a zero date (which only SQL from outside the
/// runtime can store) reads as [`earliest`] instead of failing the read.
pub(crate) fn stored(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<DateTime<Utc>> {
    use sqlx::Row;
    match row.try_get::<Option<DateTime<Utc>>, _>(i) {
        Ok(t) => Ok(t.unwrap_or_else(earliest)),
        Err(sqlx::Error::ColumnDecode { .. }) => Ok(earliest()),
        Err(e) => Err(e.into()),
    }
}

/// A time as the text of a `DATETIME(6)` literal, clamped into the
/// storable range (always four-digit years).
pub(crate) fn literal(t: DateTime<Utc>) -> String {
    clamp(t).format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn range_ends() {
        assert_eq!(earliest().to_rfc3339(), "1000-01-01T00:00:00+00:00");
        assert_eq!(
            latest().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            literal(DateTime::<Utc>::MIN_UTC),
            "1000-01-01 00:00:00.000000"
        );
        assert_eq!(
            literal(DateTime::<Utc>::MAX_UTC),
            "9999-12-31 23:59:59.999999"
        );
    }

    #[test]
    fn run_times_outside_the_range() {
        let before = Utc.with_ymd_and_hms(999, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(run_at(before).unwrap(), earliest());
        let after = latest() + chrono::TimeDelta::microseconds(1);
        let e = run_at(after).unwrap_err().to_string();
        assert!(e.contains("9999-12-31"), "{e}");
        assert!(run_at(DateTime::<Utc>::MAX_UTC).is_err());
        assert_eq!(run_at(latest()).unwrap(), latest());
        assert!(now(after).is_err());
        assert!(now(before).is_err());
    }

    #[test]
    fn clamp_cuts_to_microseconds() {
        let t = Utc.timestamp_opt(1, 123_456_789).unwrap();
        assert_eq!(clamp(t).timestamp_subsec_nanos(), 123_456_000);
    }
}
