//! Placeholder replacement in scripts, as Flyway does it.
//!
//! Input: a script's text, the configured placeholders (names are case-insensitive) and the
//! built-in `flyway:*` values of this run. Output: the text with every `${name}` (prefix and
//! suffix configurable) replaced, or the name of a placeholder that has no value. A prefix
//! without a closing suffix is left as it is, as in Flyway.

use std::collections::BTreeMap;

/// Placeholder values for one run; keys lower-cased.
#[derive(Debug, Clone)]
pub struct Placeholders {
    /// Whether replacement is on (`placeholderReplacement`).
    pub enabled: bool,
    /// Opens a placeholder (`${`).
    pub prefix: String,
    /// Closes it (`}`).
    pub suffix: String,
    /// Configured and built-in values, by lower-cased name.
    pub values: BTreeMap<String, String>,
}

/// The built-in placeholder naming the script being run.
pub const FILENAME: &str = "flyway:filename";

impl Placeholders {
    /// Replacement with these values (names are lower-cased here).
    pub fn new(
        enabled: bool,
        prefix: &str,
        suffix: &str,
        values: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Placeholders {
            enabled,
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            values: values
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect(),
        }
    }

    /// Replaces the placeholders in `text` of the script named `filename`; the error is the
    /// name of the first placeholder without a value.
    pub fn replace(&self, text: &str, filename: &str) -> Result<String, String> {
        if !self.enabled || self.prefix.is_empty() || !text.contains(&self.prefix) {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(&self.prefix) {
            let after = &rest[start + self.prefix.len()..];
            let Some(end) = after.find(&self.suffix) else {
                break;
            };
            let name = &after[..end];
            let key = name.to_lowercase();
            let value = if key == FILENAME {
                filename
            } else {
                self.values
                    .get(&key)
                    .map(String::as_str)
                    .ok_or_else(|| name.to_string())?
            };
            out.push_str(&rest[..start]);
            out.push_str(value);
            rest = &after[end + self.suffix.len()..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(pairs: &[(&str, &str)]) -> Placeholders {
        Placeholders::new(
            true,
            "${",
            "}",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn replaces_case_insensitively_and_knows_the_filename() {
        let p = ph(&[("Owner", "app"), ("flyway:defaultSchema", "public")]);
        let out = p
            .replace(
                "grant all on ${OWNER}.t to ${owner}; -- ${flyway:filename} in ${flyway:defaultschema}",
                "V1__x.sql",
            )
            .unwrap();
        assert_eq!(out, "grant all on app.t to app; -- V1__x.sql in public");
    }

    #[test]
    fn an_unknown_placeholder_is_named() {
        assert_eq!(
            ph(&[]).replace("select '${nope}';", "f").unwrap_err(),
            "nope"
        );
    }

    #[test]
    fn unclosed_prefix_and_disabled_replacement_leave_text_alone() {
        assert_eq!(
            ph(&[]).replace("select '${x';", "f").unwrap(),
            "select '${x';"
        );
        let mut off = ph(&[]);
        off.enabled = false;
        assert_eq!(off.replace("${x}", "f").unwrap(), "${x}");
    }

    #[test]
    fn custom_prefix_and_suffix() {
        let p = Placeholders::new(true, "@@", "@@", [("a".to_string(), "1".to_string())]);
        assert_eq!(p.replace("x @@a@@ y", "f").unwrap(), "x 1 y");
    }
}
