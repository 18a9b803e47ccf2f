//! Durations as users write them: `'7 days'`, `'10 seconds'`, `'500 ms'`,
//! and SQL intervals `INTERVAL '10' SECOND`.

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{DateTimeField, Expr, Interval, Value};

use crate::error::{Error, Result};

fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 7 * 86_400_000,
        _ => return None,
    })
}

/// Parses `'<n> <unit>'` (for example `7 days`, `10 seconds`, `500 ms`).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let number: u64 = number.parse().map_err(|_| {
        Error::invalid(format!(
            "invalid duration '{text}': expected a whole number and a unit, like '10 seconds'"
        ))
    })?;
    let unit = if unit.is_empty() { "ms" } else { unit };
    let per = unit_ms(unit).ok_or_else(|| {
        Error::invalid(format!(
            "invalid duration '{text}': unknown unit \"{unit}\" \
             (use ms, seconds, minutes, hours, days or weeks)"
        ))
    })?;
    number
        .checked_mul(per)
        .map(Duration::from_millis)
        .ok_or_else(|| Error::invalid(format!("duration '{text}' is too long")))
}

fn field_ms(field: &DateTimeField) -> Option<u64> {
    Some(match field {
        DateTimeField::Millisecond | DateTimeField::Milliseconds => 1,
        DateTimeField::Second | DateTimeField::Seconds => 1_000,
        DateTimeField::Minute | DateTimeField::Minutes => 60_000,
        DateTimeField::Hour | DateTimeField::Hours => 3_600_000,
        DateTimeField::Day | DateTimeField::Days => 86_400_000,
        DateTimeField::Week(_) | DateTimeField::Weeks => 7 * 86_400_000,
        _ => return None,
    })
}

/// Converts a SQL interval (`INTERVAL '10' SECOND`, `INTERVAL '10 seconds'`)
/// or a string literal (`'10 seconds'`) to a duration. Months and years
/// have no fixed length and are refused.
pub fn expr_to_duration(expr: &Expr) -> Result<Duration> {
    match expr {
        Expr::Interval(Interval {
            value,
            leading_field,
            last_field: None,
            ..
        }) => {
            let text = match value.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                    Value::Number(n, _) => n.clone(),
                    other => return Err(Error::invalid(format!("invalid interval value {other}"))),
                },
                other => return Err(Error::invalid(format!("invalid interval value {other}"))),
            };
            match leading_field {
                None => parse_duration(&text),
                Some(field) => {
                    let per = field_ms(field).ok_or_else(|| {
                        Error::invalid(format!(
                            "interval unit {field} has no fixed length; use days or smaller units"
                        ))
                    })?;
                    let number: u64 = text.trim().parse().map_err(|_| {
                        Error::invalid(format!(
                            "invalid interval '{text}' {field}: expected a whole number"
                        ))
                    })?;
                    Ok(Duration::from_millis(number.saturating_mul(per)))
                }
            }
        }
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => parse_duration(s),
            other => Err(Error::invalid(format!(
                "expected a duration like '10 seconds', got {other}"
            ))),
        },
        other => Err(Error::invalid(format!(
            "expected an interval like INTERVAL '10' SECOND, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("7 days").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_duration("10 seconds").unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("2 HOURS").unwrap(),
            Duration::from_secs(7_200)
        );
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("").is_err());
    }
}
