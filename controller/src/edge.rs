//! Bounds on the fields of API requests, checked before any lookup, and the one way an error
//! quotes what a client sent.
//!
//! Input: a request field and what it is (`"deployment_id"`, `"environment"`, ...). Output:
//! `Ok(())`, or INVALID_ARGUMENT naming the field, its limit and a short quote of the value.
//! An error never carries more than [`ECHO_CHARS`] characters of a client's value, so a
//! message stays far below the 8–16 KiB that gRPC clients accept in metadata (a longer one
//! reaches them as RESOURCE_EXHAUSTED instead of the real error).

use tonic::Status;

/// Longest id (deployment, incident) a request may name.
pub const MAX_ID: usize = 128;
/// Longest version.
pub const MAX_VERSION: usize = 128;
/// Longest name (environment, host, component, artifact file): a DNS name's limit.
pub const MAX_NAME: usize = 253;
/// Longest free text (reason, comment, note).
pub const MAX_TEXT: usize = 4096;
/// Longest URL (a post-mortem link).
pub const MAX_URL: usize = 2048;
/// Longest CI run id (a pipeline URL) or commit.
pub const MAX_REF: usize = 1024;
/// Most elements of a `serial` override, and the longest one.
pub const MAX_SERIAL: (usize, usize) = (100, 16);
/// Longest window `DeploymentStats` computes over (400 days), in seconds.
pub const MAX_STATS_WINDOW: u64 = 400 * 86_400;
/// Most deployments, and most incidents, `DeploymentStats` reads from the store.
pub const MAX_STATS_SCAN: u32 = 100_000;
/// How far in the future a deploy's `commit_time` may be (clock skew), in seconds.
pub const MAX_COMMIT_SKEW: i64 = 86_400;
/// How many characters of a client's value an error quotes.
pub const ECHO_CHARS: usize = 64;

/// A client's value as an error quotes it: at most [`ECHO_CHARS`] characters, Rust-quoted
/// (control characters escaped), with the full length when it was cut.
pub fn echo(value: &str) -> String {
    let count = value.chars().count();
    if count <= ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(ECHO_CHARS).collect();
    format!("{head:?}… ({count} characters)")
}

/// `value` cut to at most `max` bytes, at a character boundary (labels, summaries and lines
/// that must stay bounded).
pub fn cut(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn refuse(what: &str, value: &str, rule: &str) -> Status {
    Status::invalid_argument(format!("{what} {}: {rule}", echo(value)))
}

fn bounded(what: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(refuse(what, value, &format!("longer than {max} bytes")));
    }
    Ok(())
}

/// An id a request looks up: 1 to [`MAX_ID`] of `A-Z a-z 0-9 - _ .`.
pub fn id(what: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    bounded(what, value, MAX_ID)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(refuse(what, value, "use A-Z a-z 0-9 - _ ."));
    }
    Ok(())
}

/// A version: 1 to [`MAX_VERSION`] of `A-Z a-z 0-9 . _ - +`, not starting with `.`.
pub fn version(what: &str, value: &str) -> Result<(), Status> {
    if value.is_empty()
        || value.len() > MAX_VERSION
        || value.starts_with('.')
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    {
        return Err(refuse(
            what,
            value,
            &format!("use 1 to {MAX_VERSION} of A-Z a-z 0-9 . _ - + (not starting with .)"),
        ));
    }
    Ok(())
}

/// A name (environment, host, component): 1 to [`MAX_NAME`] bytes, no control characters.
pub fn name(what: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    bounded(what, value, MAX_NAME)?;
    if value.chars().any(char::is_control) {
        return Err(refuse(what, value, "contains a control character"));
    }
    Ok(())
}

/// A sha256 digest as the store names it: exactly 64 lowercase hex digits ([`rampart_host::cas::is_valid_hex`]).
pub fn sha256(what: &str, value: &str) -> Result<(), Status> {
    if !rampart_host::cas::is_valid_hex(value) {
        return Err(refuse(
            what,
            value,
            "a sha256 is exactly 64 lowercase hex digits",
        ));
    }
    Ok(())
}

/// Free text of at most `max` bytes (empty allowed; the caller decides whether it may be).
pub fn text(what: &str, value: &str, max: usize) -> Result<(), Status> {
    bounded(what, value, max)
}

/// A `serial` override: at most [`MAX_SERIAL`]`.0` elements of at most [`MAX_SERIAL`]`.1` bytes.
pub fn serial(values: &[String]) -> Result<(), Status> {
    let (most, longest) = MAX_SERIAL;
    if values.len() > most {
        return Err(Status::invalid_argument(format!(
            "serial has {} elements; at most {most}",
            values.len()
        )));
    }
    for v in values {
        bounded("serial element", v, longest)?;
    }
    Ok(())
}

/// A `DeploymentStats` window in seconds: 0 (the default, 30 days) up to [`MAX_STATS_WINDOW`].
pub fn stats_window(what: &str, seconds: u64) -> Result<u64, Status> {
    if seconds > MAX_STATS_WINDOW {
        return Err(Status::invalid_argument(format!(
            "{what} {seconds}: at most {MAX_STATS_WINDOW} seconds (400 days)"
        )));
    }
    Ok(if seconds == 0 { 30 * 86_400 } else { seconds })
}

/// A commit time: after 1970 and at most [`MAX_COMMIT_SKEW`] after `now` (seconds).
pub fn commit_time(what: &str, t: &prost_types::Timestamp, now: i64) -> Result<(), Status> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "{what} {}.{:09}: not a time after 1970",
            t.seconds, t.nanos
        )));
    }
    if t.seconds > now.saturating_add(MAX_COMMIT_SKEW) {
        return Err(Status::invalid_argument(format!(
            "{what} {}: more than a day in the future; send the commit's time (git show -s --format=%cI SHA)",
            t.seconds
        )));
    }
    Ok(())
}

/// A link a person gives (a post-mortem): an `http://` or `https://` URL with a host, at most
/// [`MAX_URL`] bytes, no whitespace or control characters.
pub fn url(what: &str, value: &str) -> Result<(), Status> {
    bounded(what, value, MAX_URL)?;
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    if host.is_none_or(str::is_empty) || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refuse(
            what,
            value,
            "give an http:// or https:// URL with a host",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_refused_and_quoted_short() {
        let long = "x".repeat(100_000);
        for s in [
            id("deployment_id", &long).unwrap_err(),
            version("version", &long).unwrap_err(),
            name("environment", &long).unwrap_err(),
            sha256("sha256", &long).unwrap_err(),
            text("reason", &long, MAX_TEXT).unwrap_err(),
        ] {
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().len() < 300, "{}", s.message());
            assert!(
                s.message().contains("(100000 characters)"),
                "{}",
                s.message()
            );
        }
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
        assert_eq!(echo(&"é".repeat(70)).chars().count(), 64 + 2 + 17);
    }

    #[test]
    fn good_values_pass_and_bad_shapes_name_the_rule() {
        id("deployment_id", "d-20260102T030405Z-0123abcd").unwrap();
        version("version", "2.4.1+build.7").unwrap();
        name("environment", "production").unwrap();
        sha256("sha256", &"ab".repeat(32)).unwrap();
        serial(&["1".into(), "50%".into()]).unwrap();
        assert!(
            id("deployment_id", "")
                .unwrap_err()
                .message()
                .contains("empty")
        );
        assert!(
            id("deployment_id", "a/b")
                .unwrap_err()
                .message()
                .contains("A-Z")
        );
        assert!(version("version", ".1").is_err());
        assert!(name("host", "a\u{7}").is_err());
        assert!(sha256("sha256", &"g".repeat(64)).is_err());
        assert!(sha256("sha256", &"A".repeat(64)).is_err());
        assert!(sha256("sha256", &"a".repeat(64)).is_ok());
        assert!(serial(&vec!["1".to_string(); 101]).is_err());
        assert!(serial(&["1".repeat(17)]).is_err());
        url("postmortem_url", "https://wiki.example/pm/inc-1").unwrap();
        for bad in ["", "wiki/pm", "https://", "ftp://x/y", "https://x/ y"] {
            assert!(url("postmortem_url", bad).is_err(), "{bad}");
        }
        assert!(url("postmortem_url", &format!("https://x/{}", "a".repeat(3000))).is_err());
    }

    #[test]
    fn stats_windows_and_commit_times_are_bounded() {
        assert_eq!(stats_window("w", 0).unwrap(), 30 * 86_400);
        assert_eq!(stats_window("w", 3_600).unwrap(), 3_600);
        assert!(
            stats_window("w", MAX_STATS_WINDOW + 1)
                .unwrap_err()
                .message()
                .contains("400 days")
        );
        let t = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        let now = 1_700_000_000;
        assert!(commit_time("c", &t(now - 10, 0), now).is_ok());
        assert!(commit_time("c", &t(now + 3_600, 0), now).is_ok());
        let e = commit_time("c", &t(now + 2 * 86_400, 0), now).unwrap_err();
        assert!(
            e.message().contains("more than a day in the future"),
            "{e:?}"
        );
        assert!(commit_time("c", &t(-1, 0), now).is_err());
        assert!(commit_time("c", &t(now, -5), now).is_err());
    }
}
