//! PromQL durations: [`format_duration`] writes one for a range selector or a `timeout`
//! parameter (`5m`, `90s`, `1500ms`), [`parse_duration`] reads the forms our configuration
//! uses (`500ms`, `30s`, `5m`, `1h30m`), bounded by [`MAX_CONFIG_DURATION`].
//!
//! Inputs: a [`Duration`] or a string. Outputs: the other one, or a [`DurationError`].

use std::time::Duration;

use crate::error::DurationError;

/// The longest duration [`parse_duration`] accepts: 30 days.
pub const MAX_CONFIG_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest input [`parse_duration`] reads (characters).
const MAX_INPUT: usize = 64;

/// The units, largest first, as (suffix, milliseconds). PromQL also knows `y`; no duration we
/// write or read is that long.
const UNITS: [(&str, u64); 6] = [
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// `d` as the shortest exact PromQL duration: `5m`, `90s`, `1500ms`, `1h30s`.
///
/// PromQL counts in milliseconds: a sub-millisecond remainder is rounded up (a window never
/// shrinks below what was asked), and anything under 1 ms becomes `1ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    // Longer than u64 milliseconds (584 million years) cannot be asked for in PromQL anyway.
    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
    let mut best: Option<String> = None;
    // The leading unit takes everything it can (`90s` has leading unit `s`); the rest is
    // written greedily in the smaller units. The shortest over every leading unit wins; on a
    // tie, the larger unit (`1m` before `60s`).
    for (lead, &(suffix, unit_ms)) in UNITS.iter().enumerate() {
        if unit_ms > ms {
            continue;
        }
        let mut text = format!("{}{suffix}", ms / unit_ms);
        let mut rest = ms % unit_ms;
        for &(s, u) in &UNITS[lead + 1..] {
            if rest >= u {
                text.push_str(&format!("{}{s}", rest / u));
                rest %= u;
            }
        }
        if best.as_ref().is_none_or(|b| text.len() < b.len()) {
            best = Some(text);
        }
    }
    // `ms >= 1` and the last unit is 1 ms: some leading unit always fits.
    best.unwrap_or_else(|| "1ms".to_string())
}

/// Reads a duration as PromQL writes them: one or more `<integer><unit>` with the units `w`,
/// `d`, `h`, `m`, `s`, `ms`, largest first, each at most once (`1h30m`, `500ms`), or a bare `0`.
/// At most [`MAX_CONFIG_DURATION`]. Fractions (`1.5h`) and negative values are refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &str| DurationError {
        input: input.chars().take(MAX_INPUT).collect(),
        reason: reason.to_string(),
    };
    if input.len() > MAX_INPUT {
        return Err(fail("longer than 64 characters"));
    }
    if input.is_empty() {
        return Err(fail("empty"));
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut total_ms: u64 = 0;
    // Index in UNITS of the last unit read: the next must be smaller.
    let mut last_unit: Option<usize> = None;
    while pos < bytes.len() {
        let digits_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == digits_start {
            return Err(fail(
                "expected a number followed by a unit (ms, s, m, h, d, w)",
            ));
        }
        let digits = &input[digits_start..pos];
        if digits.len() > 12 {
            return Err(fail("number too large"));
        }
        let value: u64 = digits.parse().map_err(|_| fail("number too large"))?;
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let suffix = &input[unit_start..pos];
        let Some(unit) = UNITS.iter().position(|&(s, _)| s == suffix) else {
            return Err(fail(if suffix.is_empty() {
                "a number without a unit (ms, s, m, h, d, w)"
            } else {
                "unknown unit (expected ms, s, m, h, d, w)"
            }));
        };
        if last_unit.is_some_and(|last| unit <= last) {
            return Err(fail(
                "units must go from largest to smallest, each at most once",
            ));
        }
        last_unit = Some(unit);
        total_ms = value
            .checked_mul(UNITS[unit].1)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| fail("too long"))?;
    }
    let d = Duration::from_millis(total_ms);
    if d > MAX_CONFIG_DURATION {
        return Err(fail("longer than 30 days"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn formats_the_shortest_exact_form() {
        let cases = [
            (ms(300_000), "5m"),
            (ms(90_000), "90s"),
            (ms(1_500), "1500ms"),
            (ms(1_000), "1s"),
            (ms(60_000), "1m"),
            (ms(3_600_000), "1h"),
            (ms(5_400_000), "90m"),
            (ms(3_630_000), "1h30s"),
            (ms(86_400_000), "1d"),
            (ms(7 * 86_400_000), "1w"),
            (ms(14 * 86_400_000), "2w"),
            (ms(250), "250ms"),
            (ms(61_001), "61s1ms"),
            (ms(1_001), "1s1ms"),
            (ms(1), "1ms"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
            assert_eq!(parse_duration(want).unwrap(), d, "{want} reads back");
        }
    }

    #[test]
    fn formats_sub_millisecond_rounded_up_and_never_zero() {
        assert_eq!(format_duration(Duration::ZERO), "1ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "1ms");
        assert_eq!(format_duration(Duration::from_micros(1_500)), "2ms");
        assert_eq!(format_duration(Duration::from_micros(999_999)), "1s");
        // Saturated at u64::MAX milliseconds, still a valid PromQL duration.
        assert!(format_duration(Duration::MAX).ends_with("615ms"));
    }

    #[test]
    fn every_formatted_duration_reads_back_to_itself() {
        // A bounded sweep over values of every magnitude.
        let mut v: u64 = 1;
        for _ in 0..200 {
            let d = ms(v);
            if d <= MAX_CONFIG_DURATION {
                assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{v} ms");
            }
            v = v * 3 + 7;
            if v > MAX_CONFIG_DURATION.as_millis() as u64 {
                v %= 1_000_003;
            }
        }
    }

    #[test]
    fn parses_config_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), ms(500));
        assert_eq!(parse_duration("30s").unwrap(), ms(30_000));
        assert_eq!(parse_duration("5m").unwrap(), ms(300_000));
        assert_eq!(parse_duration("1h").unwrap(), ms(3_600_000));
        assert_eq!(parse_duration("1h30m").unwrap(), ms(5_400_000));
        assert_eq!(parse_duration("1m30s500ms").unwrap(), ms(90_500));
        assert_eq!(parse_duration("2d").unwrap(), ms(2 * 86_400_000));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("30d").unwrap(), MAX_CONFIG_DURATION);
    }

    #[test]
    fn refuses_what_is_not_a_bounded_duration() {
        for bad in [
            "",
            "5",
            "m",
            "1.5h",
            "-5m",
            "5 m",
            " 5m",
            "5m ",
            "5M",
            "5min",
            "1y",
            "30m1h",
            "1m1m",
            "1s1m",
            "31d",
            "4w3d",
            "99999999999999999999s",
            "1h+5m",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.to_string().starts_with("invalid duration "), "{e}");
        }
        let long = "1".repeat(100);
        let e = parse_duration(&long).unwrap_err();
        assert!(e.to_string().contains("longer than 64"), "{e}");
        assert!(e.input.len() <= 64);
        assert!(
            parse_duration("31d")
                .unwrap_err()
                .to_string()
                .contains("30 days")
        );
    }
}
