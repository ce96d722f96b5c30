//! Strict dates, inclusive date ranges, and human durations (`15m`, `90d`).

use std::fmt;
use std::time::Duration;

use chrono::Days;
pub use chrono::NaiveDate as Date;
/// A moment in UTC (no time zone attached): the clock value cells are classified at.
pub use chrono::NaiveDateTime as DateTime;

/// The widest range gapless accepts in one request: 100 years of days. Wider requests are
/// almost always a typo (`2204` for `2024`) and would allocate a huge matrix.
pub const MAX_RANGE_DAYS: i64 = 36_600;

/// Why a date or range was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// Not a `YYYY-MM-DD` calendar date.
    #[error("`{input}` is not a date: expected YYYY-MM-DD")]
    Malformed {
        /// What was given (truncated to 64 characters).
        input: String,
    },
    /// The end comes before the start.
    #[error("end date {end} is before start date {start}")]
    Reversed {
        /// Start of the range.
        start: Date,
        /// End of the range.
        end: Date,
    },
    /// The range spans more than [`MAX_RANGE_DAYS`].
    #[error("range {start}..{end} spans {days} days; the limit is {MAX_RANGE_DAYS}")]
    TooWide {
        /// Start of the range.
        start: Date,
        /// End of the range.
        end: Date,
        /// Days in the range.
        days: i64,
    },
}

/// Parses a strict `YYYY-MM-DD` date: four-digit year, two-digit month and day, nothing else.
/// Stricter than chrono's parser, which accepts `+002024-01-01` and surrounding whitespace;
/// these values end up in argv elements and URLs, so nothing unexpected may pass.
pub fn parse_date(input: &str) -> Result<Date, DateError> {
    let malformed = || DateError::Malformed {
        input: input.chars().take(64).collect(),
    };
    let bytes = input.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape_ok {
        return Err(malformed());
    }
    let number = |range: std::ops::Range<usize>| -> u32 {
        input[range]
            .bytes()
            .fold(0, |acc, b| acc * 10 + u32::from(b - b'0'))
    };
    let year = i32::try_from(number(0..4)).map_err(|_| malformed())?;
    Date::from_ymd_opt(year, number(5..7), number(8..10)).ok_or_else(malformed)
}

/// Adds (or with a negative value subtracts) days, saturating at chrono's limits.
pub fn add_days(date: Date, days: i64) -> Date {
    let magnitude = Days::new(days.unsigned_abs());
    let moved = if days >= 0 {
        date.checked_add_days(magnitude)
    } else {
        date.checked_sub_days(magnitude)
    };
    moved.unwrap_or(if days >= 0 { Date::MAX } else { Date::MIN })
}

/// `date` at 12:00: the moment a bare date stands for when a clock value is needed
/// (`GAPLESS_TODAY`, tests), after the date's start and before its end.
pub fn midday(date: Date) -> DateTime {
    date.and_time(chrono::NaiveTime::from_hms_opt(12, 0, 0).unwrap_or(chrono::NaiveTime::MIN))
}

/// Days from `from` to `to` (negative when `to` is earlier).
pub fn days_between(from: Date, to: Date) -> i64 {
    to.signed_duration_since(from).num_days()
}

/// An inclusive range of dates, `start <= end`, at most [`MAX_RANGE_DAYS`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DateRange {
    start: Date,
    end: Date,
}

impl DateRange {
    /// A validated range.
    pub fn new(start: Date, end: Date) -> Result<Self, DateError> {
        if end < start {
            return Err(DateError::Reversed { start, end });
        }
        let days = days_between(start, end) + 1;
        if days > MAX_RANGE_DAYS {
            return Err(DateError::TooWide { start, end, days });
        }
        Ok(Self { start, end })
    }

    /// A one-day range.
    pub fn single(date: Date) -> Self {
        Self {
            start: date,
            end: date,
        }
    }

    /// First date.
    pub fn start(&self) -> Date {
        self.start
    }

    /// Last date (inclusive).
    pub fn end(&self) -> Date {
        self.end
    }

    /// Number of dates in the range.
    pub fn len(&self) -> usize {
        usize::try_from(days_between(self.start, self.end) + 1).unwrap_or(0)
    }

    /// Never true: a range holds at least one date. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `date` is inside the range.
    pub fn contains(&self, date: Date) -> bool {
        self.start <= date && date <= self.end
    }

    /// Offset of `date` from the start, if inside.
    pub fn index_of(&self, date: Date) -> Option<usize> {
        self.contains(date)
            .then(|| usize::try_from(days_between(self.start, date)).unwrap_or(0))
    }

    /// The date at `offset` days from the start.
    pub fn date_at(&self, offset: usize) -> Date {
        add_days(self.start, i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// Every date in order.
    pub fn iter(&self) -> impl Iterator<Item = Date> + use<> {
        let start = self.start;
        (0..self.len()).map(move |i| add_days(start, i64::try_from(i).unwrap_or(i64::MAX)))
    }

    /// The intersection with another range, if any.
    pub fn intersect(&self, other: &DateRange) -> Option<DateRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start <= end).then_some(DateRange { start, end })
    }

    /// This range extended backwards by `days` (not validated against the width limit, since
    /// it only widens probes by a spec's lookback).
    pub fn extend_back(&self, days: i64) -> DateRange {
        DateRange {
            start: add_days(self.start, -days),
            end: self.end,
        }
    }
}

impl fmt::Display for DateRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}..{}", self.start, self.end)
        }
    }
}

/// Why a duration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a duration: expected a number and a unit, like `90s`, `15m`, `24h`, `30d`"
)]
pub struct DurationError {
    /// What was given.
    pub input: String,
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `30d`, or compounds like `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        input: input.chars().take(64).collect(),
    };
    let mut total = Duration::ZERO;
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(error());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return Err(error());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| error())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_seconds: f64 = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            "d" => 86_400.0,
            _ => return Err(error()),
        };
        rest = &rest[unit_len..];
        #[expect(
            clippy::cast_precision_loss,
            reason = "values are at most 12 digits, well within f64's exact range"
        )]
        let seconds = value as f64 * unit_seconds;
        total = total
            .checked_add(Duration::from_secs_f64(seconds))
            .ok_or_else(error)?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it, largest units first.
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if seconds >= size {
            out.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_dates() {
        assert_eq!(
            parse_date("2024-02-29").ok(),
            Date::from_ymd_opt(2024, 2, 29)
        );
        for bad in [
            "2024-02-30",
            "+002024-01-01",
            " 2024-01-01",
            "2024-1-01",
            "2024-01-01; touch pwned",
            "",
            "2024-13-01",
            "２０２４-01-01",
        ] {
            assert!(parse_date(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ranges() {
        let d = |s| parse_date(s).unwrap();
        let range = DateRange::new(d("2024-01-30"), d("2024-02-02")).unwrap();
        assert_eq!(range.len(), 4);
        assert_eq!(range.iter().last(), Some(d("2024-02-02")));
        assert_eq!(range.index_of(d("2024-02-01")), Some(2));
        assert!(DateRange::new(d("2024-01-02"), d("2024-01-01")).is_err());
        assert!(DateRange::new(d("1900-01-01"), d("2100-01-01")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 weeks").is_err());
        // A sum beyond what a duration holds is an error, not an overflow.
        assert!(parse_duration(&"999999999999d".repeat(300)).is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
