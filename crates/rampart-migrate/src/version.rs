//! Flyway migration versions: parsed from file names and history rows, compared numerically.
//!
//! Input: the version text of a file name (`1_1`, `001.2`, `1.10`) or of the `version` column.
//! Output: a [`Version`] that keeps its stored text (`_` becomes `.`, leading zeros kept) and
//! compares the way Flyway does: part by part as unbounded integers, missing parts are zero, so
//! `1.9 < 1.10` and `1.0 == 1`.

use std::cmp::Ordering;
use std::fmt;

/// A migration version.
#[derive(Debug, Clone)]
pub struct Version {
    /// The text stored in the history's `version` column.
    text: String,
    /// The numeric parts without leading zeros, trailing zero parts dropped: the comparison key.
    parts: Vec<String>,
}

/// Why a version text is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version '{text}': a version may only contain 0..9 and . (dot)")]
pub struct BadVersion {
    /// The text given.
    pub text: String,
}

impl Version {
    /// Parses a version as written in a file name or the history (`_` and `.` separate parts).
    pub fn parse(raw: &str) -> Result<Version, BadVersion> {
        let text = raw.replace('_', ".");
        let bad = || BadVersion { text: text.clone() };
        if text.is_empty() {
            return Err(bad());
        }
        // Flyway splits on dots followed by a digit; any other character, or a dot that is not
        // followed by a digit, leaves a part that is not a number.
        let mut parts = Vec::new();
        for part in text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let trimmed = part.trim_start_matches('0');
            parts.push(if trimmed.is_empty() { "0" } else { trimmed }.to_string());
        }
        while parts.last().is_some_and(|p| p == "0") {
            parts.pop();
        }
        Ok(Version { text, parts })
    }

    /// The text stored in the history.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A key that versions comparing equal share (`1.0` and `01` both give `1`).
    pub fn key(&self) -> String {
        self.parts.join(".")
    }
}

/// Compares two digit strings without leading zeros as integers.
fn cmp_digits(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        for i in 0..n {
            let a = self.parts.get(i).map_or("0", String::as_str);
            let b = other.parts.get(i).map_or("0", String::as_str);
            match cmp_digits(a, b) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn stored_text_keeps_leading_zeros_and_turns_underscores_into_dots() {
        assert_eq!(v("001_2").as_str(), "001.2");
        assert_eq!(v("1_1").as_str(), "1.1");
        assert_eq!(v("2").as_str(), "2");
    }

    #[test]
    fn compares_numerically_part_by_part() {
        assert!(v("1.9") < v("1.10"));
        assert!(v("1") < v("1.1"));
        assert!(v("1.1") < v("2"));
        assert!(v("10") > v("9"));
        assert!(v("123456789012345678901234567890") > v("123456789012345678901234567889"));
    }

    #[test]
    fn trailing_zero_parts_and_leading_zeros_do_not_count() {
        assert_eq!(v("1.0"), v("1"));
        assert_eq!(v("1.0.0"), v("1"));
        assert_eq!(v("1.01"), v("1.1"));
        assert_eq!(v("001"), v("1"));
        assert_eq!(v("0"), v("0.0"));
    }

    #[test]
    fn refuses_anything_but_digits_and_dots() {
        for bad in ["", "1a", "a", "1..2", "1.", ".1", "1-2", "1 2"] {
            let err = Version::parse(bad).unwrap_err();
            assert!(err.to_string().contains("0..9"), "{bad}: {err}");
        }
    }
}

/// Property tests: any text parses or is refused without a panic, and versions order as their
/// numbers do, leading zeros and trailing zero parts aside.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn text(parts: &[(u32, usize)]) -> String {
        let parts: Vec<String> = parts
            .iter()
            .map(|(n, zeros)| format!("{}{n}", "0".repeat(*zeros)))
            .collect();
        parts.join(".")
    }

    fn key(parts: &[(u32, usize)]) -> Vec<u32> {
        let mut key: Vec<u32> = parts.iter().map(|(n, _)| *n).collect();
        while key.last() == Some(&0) {
            key.pop();
        }
        key
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(3000))]

        #[test]
        fn fuzz_version_parse_never_panics(raw in prop_oneof![any::<String>(), rampart_fuzz::soup(&["1", "0", ".", "_", "00", "9"], 10)]) {
            if let Ok(v) = Version::parse(&raw) {
                prop_assert_eq!(v.as_str(), raw.replace('_', "."));
            }
        }

        #[test]
        fn prop_versions_order_numerically(a in prop::collection::vec((0u32..20, 0usize..3), 1..4), b in prop::collection::vec((0u32..20, 0usize..3), 1..4)) {
            let (va, vb) = (Version::parse(&text(&a)).unwrap(), Version::parse(&text(&b)).unwrap());
            prop_assert_eq!(va.cmp(&vb), key(&a).cmp(&key(&b)), "{} vs {}", va, vb);
        }
    }
}
