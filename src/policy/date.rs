//! Calendar days for rule `expires` dates: `YYYY-MM-DD`, checked, counted in
//! days since 1970-01-01. No clock here: the caller says what day it is.

use std::fmt;

/// A proleptic Gregorian calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(i64);

impl Date {
    /// The day `days` after 1970-01-01 (negative: before it).
    pub fn from_days(days: i64) -> Date {
        Date(days)
    }

    /// The day of a Unix timestamp (UTC).
    pub fn from_unix_seconds(seconds: i64) -> Date {
        Date(seconds.div_euclid(86_400))
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        self.0
    }

    /// Parses `YYYY-MM-DD`: four-digit year, a month and a day that exist.
    pub fn parse(text: &str) -> Result<Date, String> {
        let bad = || format!("`{text}` is not a date: write YYYY-MM-DD, such as 2027-01-31");
        let b = text.as_bytes();
        let shape = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| text[r].parse::<i64>().map_err(|_| bad());
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return Err(format!("`{text}` is not a day of the calendar"));
        }
        Ok(Date(days_from_civil(y, m, d)))
    }

    /// Year, month (1-12) and day (1-31).
    pub fn civil(self) -> (i64, i64, i64) {
        civil_from_days(self.0)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's `days_from_civil` and `civil_from_days`
// (https://howardhinnant.github.io/date_algorithms.html).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_and_print_back() {
        for text in ["1970-01-01", "2000-02-29", "2027-01-31", "2020-12-31"] {
            assert_eq!(Date::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Date::parse("1970-01-02").unwrap().days(), 1);
        assert_eq!(Date::parse("2027-01-31").unwrap().days(), 20_849);
        assert_eq!(Date::from_unix_seconds(86_399).days(), 0);
        assert_eq!(Date::from_unix_seconds(-1).days(), -1);
    }

    #[test]
    fn days_that_do_not_exist_are_refused() {
        for text in [
            "2027-02-29",
            "1900-02-29",
            "2027-13-01",
            "2027-00-10",
            "2027-04-31",
            "2027-1-31",
            "27-01-31",
            "2027/01/31",
            "tomorrow",
            "",
            "2027-01-31T00:00",
            "+027-01-31",
        ] {
            assert!(Date::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn every_day_round_trips() {
        // 0001-01-01 to 9999-12-31: every day a four-digit year can name.
        for days in -719_162..=2_932_896 {
            let d = Date::from_days(days);
            assert_eq!(Date::parse(&d.to_string()).map(Date::days), Ok(days));
        }
    }
}
