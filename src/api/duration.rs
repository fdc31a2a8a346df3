//! Go-style durations (`time.ParseDuration` and `Duration.String()`).
//!
//! cert-manager's APIs and the csi-driver volume attributes spell durations
//! the Go way (`2160h`, `1h30m`, `1.5h`), so users copy these strings from
//! cert-manager documentation. Parsing follows Go's grammar exactly, and the
//! range is Go's too (at most 2^63-1 nanoseconds), so a value Go accepts is
//! accepted here and a value Go rejects is rejected here. The one difference:
//! negative durations parse in Go, but no duration in cert-csi can be
//! negative, so they are an error.

use std::time::Duration;

use thiserror::Error;

/// Why a duration string is not a valid Go duration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("an empty string is not a duration; write a number with a unit, e.g. 1h30m")]
    Empty,
    #[error(
        "expected a number at byte {position} of {input:?}; write numbers followed by units, e.g. 1h30m or 1.5h"
    )]
    ExpectedNumber { input: String, position: usize },
    #[error(
        "the number at byte {position} of {input:?} has no unit; add one of ns, us, µs, ms, s, m, h (e.g. 90s)"
    )]
    MissingUnit { input: String, position: usize },
    #[error("unknown unit {unit:?} in {input:?}; use one of ns, us, µs, ms, s, m, h")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?} is larger than the maximum Go duration (2562047h47m16.854775807s)")]
    Overflow { input: String },
    #[error("{input:?} is negative; durations here must be positive, remove the '-'")]
    Negative { input: String },
}

/// Nanoseconds per unit, longest unit names first so that `ms` is not read as `m`.
const UNITS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // micro sign, what Go prints
    ("\u{3bc}s", 1_000), // Greek small letter mu, also accepted by Go
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's limit: `time.Duration` is an int64 count of nanoseconds.
const MAX_NANOS: u64 = i64::MAX as u64;

/// Parses a Go duration string such as `2160h`, `1h30m`, `1.5h`, `300ms`, or `0`.
///
/// A leading `+` is accepted, as in Go. A leading `-` is accepted only when the
/// value is zero (`-0s`), because a negative duration has no meaning here.
/// What an error keeps of the input: at most 64 bytes, so an enormous
/// value cannot flood the event or log line that reports it.
fn prefix(text: &str) -> String {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

pub fn parse_go(input: &str) -> Result<Duration, DurationError> {
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    if let Some(&c) = bytes.first()
        && (c == b'-' || c == b'+')
    {
        negative = c == b'-';
        pos = 1;
    }
    let rest = &input[pos..];
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(if input.is_empty() {
            DurationError::Empty
        } else {
            DurationError::ExpectedNumber {
                input: prefix(input),
                position: pos,
            }
        });
    }

    let mut total: u64 = 0;
    while pos < bytes.len() {
        let number_start = pos;
        let (whole, whole_digits, overflow) = leading_int(&bytes[pos..]);
        pos += whole_digits;
        let mut fraction = (0u64, 1f64, 0usize);
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            fraction = leading_fraction(&bytes[pos..]);
            pos += fraction.2;
        }
        let (fraction, fraction_scale, fraction_digits) = fraction;
        if whole_digits == 0 && fraction_digits == 0 {
            return Err(DurationError::ExpectedNumber {
                input: prefix(input),
                position: number_start,
            });
        }
        let overflow_err = || DurationError::Overflow {
            input: prefix(input),
        };
        if overflow {
            return Err(overflow_err());
        }

        let unit_start = pos;
        while pos < bytes.len() && bytes[pos] != b'.' && !bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let unit = &input[unit_start..pos];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                input: prefix(input),
                position: unit_start,
            });
        }
        let Some(&(_, nanos_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                input: prefix(input),
                unit: prefix(unit),
            });
        };

        let mut value = whole.checked_mul(nanos_per_unit).ok_or_else(overflow_err)?;
        if fraction > 0 {
            // The same float64 step as Go, so that `0.3333333333333333333h` is
            // exactly 20m here too rather than one nanosecond short.
            value += (fraction as f64 * (nanos_per_unit as f64 / fraction_scale)) as u64;
        }
        total = total.checked_add(value).ok_or_else(overflow_err)?;
        if total > MAX_NANOS {
            return Err(overflow_err());
        }
    }

    if negative && total > 0 {
        return Err(DurationError::Negative {
            input: prefix(input),
        });
    }
    let secs = total / 1_000_000_000;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Go's `leadingInt`: the digits at the start, their count, and whether the
/// value exceeded what a duration can hold.
fn leading_int(bytes: &[u8]) -> (u64, usize, bool) {
    let mut value: u64 = 0;
    let mut overflow = false;
    let mut count = 0;
    for &c in bytes.iter().take_while(|c| c.is_ascii_digit()) {
        count += 1;
        if overflow {
            continue;
        }
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
        {
            Some(v) if v <= MAX_NANOS => value = v,
            _ => overflow = true,
        }
    }
    (value, count, overflow)
}

/// Go's `leadingFraction`: digits after the dot as an integer and a float
/// scale; digits past what fits are consumed but ignored, as in Go, because
/// they cannot change the nanosecond count.
fn leading_fraction(bytes: &[u8]) -> (u64, f64, usize) {
    let mut value: u64 = 0;
    let mut scale = 1f64;
    let mut saturated = false;
    let mut count = 0;
    for &c in bytes.iter().take_while(|c| c.is_ascii_digit()) {
        count += 1;
        if saturated {
            continue;
        }
        if value > MAX_NANOS / 10 {
            saturated = true;
            continue;
        }
        value = value * 10 + u64::from(c - b'0');
        scale *= 10.0;
    }
    (value, scale, count)
}

/// Formats like Go's `Duration.String()`: `2160h0m0s`, `1h30m0s`, `1.5s`,
/// `300ms`, `1.5µs`, `0s`. Durations longer than Go can represent are still
/// formatted the same way rather than clamped.
pub fn format_go(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        // Below a second Go switches to the largest unit that keeps an integer part.
        let (digits, unit) = if nanos < 1_000 {
            (0, "ns")
        } else if nanos < 1_000_000 {
            (3, "\u{b5}s")
        } else {
            (6, "ms")
        };
        return format!("{}{unit}", fixed_point(nanos, digits));
    }

    let seconds_with_fraction = fixed_point(nanos % 60_000_000_000, 9);
    let minutes_total = nanos / 60_000_000_000;
    if minutes_total == 0 {
        return format!("{seconds_with_fraction}s");
    }
    let minutes = minutes_total % 60;
    let hours = minutes_total / 60;
    if hours == 0 {
        format!("{minutes}m{seconds_with_fraction}s")
    } else {
        format!("{hours}h{minutes}m{seconds_with_fraction}s")
    }
}

/// `value / 10^digits` with the fraction written out and trailing zeros dropped.
fn fixed_point(value: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let padded = format!("{fraction:0width$}", width = digits as usize);
    format!("{whole}.{}", padded.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    const SECOND: u64 = 1_000_000_000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;

    #[test]
    fn parses_what_go_parses() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("+0", 0),
            ("-0", 0),
            ("0s", 0),
            ("-0s", 0),
            ("5s", 5 * SECOND),
            ("+5s", 5 * SECOND),
            ("30s", 30 * SECOND),
            ("1478s", 1478 * SECOND),
            ("2160h", 2160 * HOUR),
            ("1h30m", HOUR + 30 * MINUTE),
            ("1h30m0s", HOUR + 30 * MINUTE),
            ("90s", 90 * SECOND),
            ("1.5h", HOUR + 30 * MINUTE),
            (".5s", SECOND / 2),
            ("5.s", 5 * SECOND),
            ("1.004s", SECOND + 4_000_000),
            ("1.0040s", SECOND + 4_000_000),
            ("100.00100s", 100 * SECOND + 1_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12\u{b5}s", 12_000),
            ("12\u{3bc}s", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14 * SECOND),
            ("15m", 15 * MINUTE),
            ("16h", 16 * HOUR),
            ("3h30m", 3 * HOUR + 30 * MINUTE),
            ("10.5s4m", 4 * MINUTE + 10 * SECOND + SECOND / 2),
            (
                "1h1m1s1ms1us1ns",
                HOUR + MINUTE + SECOND + 1_000_000 + 1_000 + 1,
            ),
            (
                "39h9m14.425s",
                39 * HOUR + 9 * MINUTE + 14 * SECOND + 425_000_000,
            ),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 20 * MINUTE),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", 9_223_372_036_854_775_807),
            ("9223372036854775.807us", 9_223_372_036_854_775_807),
            ("9223372036s854ms775us807ns", 9_223_372_036_854_775_807),
            ("0.100000000000000000000h", 6 * MINUTE),
            (
                "0.830103483285477580700h",
                49 * MINUTE + 48 * SECOND + 372_539_827,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go(input), Ok(ns(*want)), "parsing {input:?}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        type Check = fn(&DurationError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, DurationError::Empty)),
            ("3", |e| matches!(e, DurationError::MissingUnit { .. })),
            ("1h3", |e| matches!(e, DurationError::MissingUnit { .. })),
            ("-", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            ("+", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            ("s", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            (".", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            ("-.", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            (".s", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            ("+.s", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            (
                "1d",
                |e| matches!(e, DurationError::UnknownUnit { unit, .. } if unit == "d"),
            ),
            (
                "1 h",
                |e| matches!(e, DurationError::UnknownUnit { unit, .. } if unit == " h"),
            ),
            (
                "1H",
                |e| matches!(e, DurationError::UnknownUnit { unit, .. } if unit == "H"),
            ),
            ("1hour", |e| matches!(e, DurationError::UnknownUnit { .. })),
            (" 1h", |e| matches!(e, DurationError::ExpectedNumber { .. })),
            ("1h ", |e| matches!(e, DurationError::UnknownUnit { .. })),
            ("9223372036854775808ns", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
            ("9223372036854775.808us", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
            ("9223372036854ms775us808ns", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
            ("3000000h", |e| matches!(e, DurationError::Overflow { .. })),
            ("99999999999999999999999999999s", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
            ("-1s", |e| matches!(e, DurationError::Negative { .. })),
            ("-1ns", |e| matches!(e, DurationError::Negative { .. })),
            ("-2160h", |e| matches!(e, DurationError::Negative { .. })),
        ];
        for (input, check) in cases {
            let err = parse_go(input).expect_err(input);
            assert!(check(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn error_messages_say_how_to_fix() {
        let msg = parse_go("1d").unwrap_err().to_string();
        assert!(
            msg.contains("\"d\"") && msg.contains("ns, us, µs, ms, s, m, h"),
            "{msg}"
        );
        let msg = parse_go("90").unwrap_err().to_string();
        assert!(msg.contains("no unit") && msg.contains("90s"), "{msg}");
        let msg = parse_go("-5m").unwrap_err().to_string();
        assert!(msg.contains("negative") && msg.contains("-5m"), "{msg}");
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (999, "999ns"),
            (1_100, "1.1\u{b5}s"),
            (2_200_000, "2.2ms"),
            (300_000_000, "300ms"),
            (SECOND, "1s"),
            (3 * SECOND + 300_000_000, "3.3s"),
            (30 * SECOND, "30s"),
            (90 * SECOND, "1m30s"),
            (4 * MINUTE + 5 * SECOND, "4m5s"),
            (4 * MINUTE + 5 * SECOND + 1_000_000, "4m5.001s"),
            (5 * HOUR + 6 * MINUTE + 7 * SECOND + 1_000_000, "5h6m7.001s"),
            (8 * MINUTE + 1, "8m0.000000001s"),
            (HOUR, "1h0m0s"),
            (HOUR + 30 * MINUTE, "1h30m0s"),
            (2160 * HOUR, "2160h0m0s"),
            (i64::MAX as u64, "2562047h47m16.854775807s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(format_go(ns(*nanos)), *want, "formatting {nanos}ns");
        }
    }

    #[test]
    fn format_then_parse_round_trips() {
        let samples = [
            1u64,
            999,
            1_000,
            1_234_567,
            SECOND,
            59 * SECOND + 999_999_999,
            61 * MINUTE,
            2160 * HOUR,
            720 * HOUR + 1,
            i64::MAX as u64,
        ];
        for nanos in samples {
            let text = format_go(ns(nanos));
            assert_eq!(
                parse_go(&text),
                Ok(ns(nanos)),
                "round trip through {text:?}"
            );
        }
    }
}
