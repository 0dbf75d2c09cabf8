//! Notifications: the sinks an environment tells of incidents and deployments (GitHub issues,
//! Slack, PagerDuty Events v2, a signed webhook), and their durable delivery from the store's
//! outbox.
//!
//! Configuration (per environment, `[environments.E.notify.<kind>]`, checked at start): each
//! sink's secret is read from a file (`token_file`, `webhook_url_file`, `routing_key_file`,
//! `secret_file`), never from the configuration itself, and never logged ([`Secret`]'s `Debug`
//! redacts it). `events` says what the sink is told: `incident` (opened), `incident_resolved`,
//! `approval` (a deployment awaits approval) and `succeeded`; GitHub and PagerDuty take only the
//! two incident events.
//!
//! Delivery ([`worker`]): the runner and the service only write outbox rows, in the same
//! transaction as what they tell of ([`crate::incident`]); a worker in every controller claims
//! due rows with a lease, sends each with a bounded timeout ([`HTTP_TIMEOUT`]) on a blocking
//! thread, and records the result: delivered; retried after a backoff ([`backoff`]: 1 s doubling
//! to 5 min, or the `Retry-After` of a 429) until [`GIVE_UP_AFTER`]; or failed at once on a
//! 4xx other than 408/429 (a request the sink will never take). A sink that is down therefore
//! never slows or fails a deployment. [`crate::metrics::Metrics::notification_failed`] counts failed attempts per (environment, sink)
//! for the metrics; [`crate::store::Store::pending_notices`] counts what waits.
//!
//! [`sinks`] builds every request (pure) and runs the GitHub issue's steps: an issue is never
//! created twice for one incident, because a hidden marker in its body is searched for among
//! the open issues with the incident labels before one is created.

pub mod sinks;
pub mod worker;

use std::path::Path;
use std::time::Duration;

/// How long one HTTP request to a sink may take, connecting included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed attempt; each next one is twice as long, up to
/// [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A notice still undelivered this long after it was written is given up (marked failed).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest `Retry-After` honoured; a longer one is cut to it.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// The largest secret file read.
const MAX_SECRET: u64 = 64 * 1024;

/// What a sink may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoticeEvent {
    /// An incident was opened.
    Incident,
    /// An incident was resolved.
    IncidentResolved,
    /// A deployment awaits approval.
    Approval,
    /// A deployment succeeded.
    Succeeded,
}

impl NoticeEvent {
    /// Every event.
    pub const ALL: [NoticeEvent; 4] = [
        NoticeEvent::Incident,
        NoticeEvent::IncidentResolved,
        NoticeEvent::Approval,
        NoticeEvent::Succeeded,
    ];

    /// Its name in the configuration and the outbox.
    pub fn name(self) -> &'static str {
        match self {
            NoticeEvent::Incident => "incident",
            NoticeEvent::IncidentResolved => "incident_resolved",
            NoticeEvent::Approval => "approval",
            NoticeEvent::Succeeded => "succeeded",
        }
    }

    /// The event named `name`.
    pub fn parse(name: &str) -> Option<NoticeEvent> {
        NoticeEvent::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A secret read from a file. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; only for building a request.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret given as text (tests).
    pub fn from_text(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a sink is and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// GitHub (or GitHub Enterprise) issues.
    Github {
        /// The REST API's base URL, without a trailing `/` (`https://api.github.com`, or
        /// `https://HOST/api/v3`).
        api_url: String,
        /// `owner/name`.
        repository: String,
        /// The token (`token_file`).
        token: Secret,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL (`webhook_url_file`): it is the credential.
        webhook_url: Secret,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        /// The enqueue endpoint.
        url: String,
        /// The integration's routing key (`routing_key_file`).
        routing_key: Secret,
    },
    /// A JSON webhook signed with HMAC-SHA256.
    Webhook {
        /// Where to POST.
        url: String,
        /// The HMAC key (`secret_file`).
        secret: Secret,
    },
}

impl SinkKind {
    /// `github`, `slack`, `pagerduty` or `webhook`: the configuration key and the outbox's sink.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Github { .. } => "github",
            SinkKind::Slack { .. } => "slack",
            SinkKind::Pagerduty { .. } => "pagerduty",
            SinkKind::Webhook { .. } => "webhook",
        }
    }
}

/// One configured sink of an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// What and where.
    pub kind: SinkKind,
    /// What it is told.
    pub events: Vec<NoticeEvent>,
}

/// The sink kinds, for error messages.
const KINDS: &str = "github, slack, pagerduty, webhook";

/// Every sink kind's name, as the outbox's `sink` column holds it: the delivery worker runs one
/// thread per kind.
pub const KIND_NAMES: [&str; 4] = ["github", "slack", "pagerduty", "webhook"];

/// The PagerDuty endpoint when `url` is not given.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// The GitHub API when `api_url` is not given.
pub const GITHUB_API: &str = "https://api.github.com";

/// Checks that `url` is an absolute http(s) URL with a host; the error names `key`.
pub fn check_url(key: &str, url: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{key}: {:?} is not an http:// or https:// URL with a host",
            crate::config::redact(url)
        )
    };
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad()),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

/// Reads a secret file: trimmed, not empty, at most 64 KiB; the error names `key` and the
/// file, never its content.
fn read_secret(key: &str, path: &Path) -> Result<Secret, String> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_SECRET + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_SECRET {
        return Err(format!(
            "{key}: {} is larger than {MAX_SECRET} bytes; it should hold only the secret",
            path.display()
        ));
    }
    let t = text.trim();
    if t.is_empty() {
        return Err(format!(
            "{key}: {} is empty; write the secret into it",
            path.display()
        ));
    }
    Ok(Secret(t.to_string()))
}

/// Parses `[environments.E.notify]` (the table under `notify`): one sink per kind. `abs`
/// resolves relative secret paths. Errors name the key, e.g. `notify.github.token_file`.
pub fn parse_sinks(
    table: &toml::Table,
    abs: &dyn Fn(&Path) -> std::path::PathBuf,
) -> Result<Vec<Sink>, String> {
    let mut out = Vec::new();
    for (kind, value) in table {
        let prefix = format!("notify.{kind}");
        let toml::Value::Table(t) = value else {
            return Err(format!("{prefix} must be a table ([…notify.{kind}])"));
        };
        let allowed: &[&str] = match kind.as_str() {
            "github" => &["api_url", "repository", "token_file", "events"],
            "slack" => &["webhook_url_file", "events"],
            "pagerduty" => &["url", "routing_key_file", "events"],
            "webhook" => &["url", "secret_file", "events"],
            other => {
                return Err(format!(
                    "notify.{other}: unknown sink type {other:?}; the sinks are {KINDS}"
                ));
            }
        };
        if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{prefix}.{k}: unknown key; {prefix} takes {}",
                allowed.join(", ")
            ));
        }
        let text = |key: &str| -> Result<Option<String>, String> {
            match t.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{prefix}.{key} must be a string")),
            }
        };
        let need = |key: &str| -> Result<String, String> {
            text(key)?.ok_or_else(|| format!("{prefix}.{key} is missing"))
        };
        let secret = |key: &str| -> Result<Secret, String> {
            read_secret(&format!("{prefix}.{key}"), &abs(Path::new(&need(key)?)))
        };
        let url = |key: &str, default: Option<&str>| -> Result<String, String> {
            let u = match (text(key)?, default) {
                (Some(u), _) => u,
                (None, Some(d)) => d.to_string(),
                (None, None) => return Err(format!("{prefix}.{key} is missing")),
            };
            check_url(&format!("{prefix}.{key}"), &u)?;
            Ok(u.trim_end_matches('/').to_string())
        };
        let sink = match kind.as_str() {
            "github" => {
                let repository = need("repository")?;
                let parts: Vec<&str> = repository.split('/').collect();
                let part_ok = |p: &str| {
                    !p.is_empty()
                        && p.len() <= 100
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                };
                if parts.len() != 2 || !parts.iter().all(|p| part_ok(p)) {
                    return Err(format!(
                        "{prefix}.repository: {repository:?} is not owner/name (e.g. \"acme/shop\")"
                    ));
                }
                SinkKind::Github {
                    api_url: url("api_url", Some(GITHUB_API))?,
                    repository,
                    token: secret("token_file")?,
                }
            }
            "slack" => {
                let s = secret("webhook_url_file")?;
                // The URL is the credential: the message never quotes it.
                check_url("", s.expose()).map_err(|_| {
                    format!(
                        "{prefix}.webhook_url_file (its content): not an https:// URL with a host (the file should hold the webhook URL Slack gave)"
                    )
                })?;
                SinkKind::Slack { webhook_url: s }
            }
            "pagerduty" => SinkKind::Pagerduty {
                url: url("url", Some(PAGERDUTY_URL))?,
                routing_key: secret("routing_key_file")?,
            },
            _ => SinkKind::Webhook {
                url: url("url", None)?,
                secret: secret("secret_file")?,
            },
        };
        let incident_only = matches!(kind.as_str(), "github" | "pagerduty");
        let events = match t.get("events") {
            None => vec![NoticeEvent::Incident, NoticeEvent::IncidentResolved],
            Some(toml::Value::Array(a)) => {
                let mut v = Vec::new();
                for e in a {
                    let name = e.as_str().unwrap_or("");
                    let ev = NoticeEvent::parse(name).ok_or_else(|| {
                        format!(
                            "{prefix}.events: unknown event {e}; the events are {}",
                            NoticeEvent::ALL.map(NoticeEvent::name).join(", ")
                        )
                    })?;
                    if incident_only
                        && !matches!(ev, NoticeEvent::Incident | NoticeEvent::IncidentResolved)
                    {
                        return Err(format!(
                            "{prefix}.events: {kind} takes only incident and incident_resolved, not {name}"
                        ));
                    }
                    if !v.contains(&ev) {
                        v.push(ev);
                    }
                }
                if v.is_empty() {
                    return Err(format!(
                        "{prefix}.events is empty: list what the sink is told, or remove the sink"
                    ));
                }
                v
            }
            Some(_) => return Err(format!("{prefix}.events must be a list of event names")),
        };
        out.push(Sink { kind: sink, events });
    }
    Ok(out)
}

/// The pause after failed attempt number `attempt` (1 for the first): [`BACKOFF_FIRST`]
/// doubling, at most [`BACKOFF_MAX`].
pub fn backoff(attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(16);
    (BACKOFF_FIRST * (1u32 << shift)).min(BACKOFF_MAX)
}

/// A `Retry-After` header's pause: delay-seconds, or an HTTP date (relative to `now`), at
/// most [`RETRY_AFTER_MAX`]; `None` when absent or unreadable.
pub fn retry_after(value: Option<&str>, now: std::time::SystemTime) -> Option<Duration> {
    let v = value?.trim();
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    let d = if v.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(v.parse::<u64>().ok()?)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        let at = std::time::SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(RETRY_AFTER_MAX))
}

/// How an HTTP answer (or its absence) is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Ok,
    /// Try again after this pause (`None`: the backoff's).
    Retry(Option<Duration>),
    /// Never going to be accepted.
    Permanent,
}

/// The verdict on status `status` (with its `Retry-After`): 2xx accepted; 429 and 408 and 5xx
/// retried (429 after its Retry-After); any other status permanent.
pub fn verdict(status: u16, retry_after_header: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Ok,
        429 => Verdict::Retry(retry_after(
            retry_after_header,
            std::time::SystemTime::now(),
        )),
        408 | 500..=599 => Verdict::Retry(None),
        _ => Verdict::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, dir: &Path) -> Result<Vec<Sink>, String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        parse_sinks(&t, &|p: &Path| dir.join(p))
    }

    #[test]
    fn sinks_parse_with_secrets_from_files_and_debug_redacts_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gh"), "ghp_secret\n").unwrap();
        std::fs::write(
            dir.path().join("slack"),
            "https://hooks.slack.example/T/B/x\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("pd"), "R0UT1NGKEY").unwrap();
        std::fs::write(dir.path().join("wh"), "hmac-key").unwrap();
        let sinks = parse(
            r#"
            [github]
            api_url = "https://ghe.example/api/v3/"
            repository = "acme/shop"
            token_file = "gh"
            [slack]
            webhook_url_file = "slack"
            events = ["incident", "approval", "succeeded"]
            [pagerduty]
            routing_key_file = "pd"
            [webhook]
            url = "http://127.0.0.1:9/hook"
            secret_file = "wh"
            "#,
            dir.path(),
        )
        .unwrap();
        assert_eq!(sinks.len(), 4);
        let gh = sinks.iter().find(|s| s.kind.name() == "github").unwrap();
        assert!(matches!(&gh.kind, SinkKind::Github { api_url, token, .. }
            if api_url == "https://ghe.example/api/v3" && token.expose() == "ghp_secret"));
        assert_eq!(
            gh.events,
            vec![NoticeEvent::Incident, NoticeEvent::IncidentResolved]
        );
        let pd = sinks.iter().find(|s| s.kind.name() == "pagerduty").unwrap();
        assert!(matches!(&pd.kind, SinkKind::Pagerduty { url, .. } if url == PAGERDUTY_URL));
        let debug = format!("{sinks:?}");
        for secret in ["ghp_secret", "hooks.slack", "R0UT1NGKEY", "hmac-key"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn bad_sinks_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "t").unwrap();
        std::fs::write(dir.path().join("empty"), " \n").unwrap();
        let cases = [
            (
                "[teams]\nurl = \"https://x\"",
                "notify.teams: unknown sink type",
            ),
            (
                "[github]\nrepository = \"acme/shop\"\ntoken_file = \"tok\"\ncolour = 1",
                "notify.github.colour: unknown key",
            ),
            (
                "[github]\nrepository = \"acme\"\ntoken_file = \"tok\"",
                "notify.github.repository: \"acme\" is not owner/name",
            ),
            (
                "[github]\nrepository = \"acme/shop\"\ntoken_file = \"missing\"",
                "notify.github.token_file: cannot read",
            ),
            (
                "[pagerduty]\nrouting_key_file = \"empty\"",
                "notify.pagerduty.routing_key_file:",
            ),
            (
                "[webhook]\nurl = \"ftp://x/y\"\nsecret_file = \"tok\"",
                "notify.webhook.url: \"ftp://x/y\" is not an http",
            ),
            (
                "[webhook]\nsecret_file = \"tok\"",
                "notify.webhook.url is missing",
            ),
            (
                "[slack]\nwebhook_url_file = \"tok\"",
                "notify.slack.webhook_url_file (its content)",
            ),
            (
                "[pagerduty]\nrouting_key_file = \"tok\"\nevents = [\"succeeded\"]",
                "notify.pagerduty.events: pagerduty takes only",
            ),
            (
                "[webhook]\nurl = \"https://x\"\nsecret_file = \"tok\"\nevents = [\"deployed\"]",
                "notify.webhook.events: unknown event",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text, dir.path()).unwrap_err();
            assert!(err.contains(want), "{text}: {err} lacks {want}");
        }
        let err = parse("[pagerduty]\nrouting_key_file = \"empty\"", dir.path()).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(retry_after(Some("7"), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(Some(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(retry_after(Some("999999"), now), Some(RETRY_AFTER_MAX));
        assert_eq!(
            retry_after(Some("Wed, 01 May 2024 12:00:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(Some("Wed, 01 May 2024 11:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(Some("soon"), now), None);
        assert_eq!(retry_after(Some("-3"), now), None);
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn verdicts_retry_transient_statuses_and_give_up_on_refusals() {
        assert_eq!(verdict(201, None), Verdict::Ok);
        assert_eq!(verdict(202, None), Verdict::Ok);
        assert_eq!(
            verdict(429, Some("3")),
            Verdict::Retry(Some(Duration::from_secs(3)))
        );
        assert_eq!(verdict(429, None), Verdict::Retry(None));
        assert_eq!(verdict(408, None), Verdict::Retry(None));
        assert_eq!(verdict(500, None), Verdict::Retry(None));
        assert_eq!(verdict(503, None), Verdict::Retry(None));
        assert_eq!(verdict(400, None), Verdict::Permanent);
        assert_eq!(verdict(401, None), Verdict::Permanent);
        assert_eq!(verdict(404, None), Verdict::Permanent);
        assert_eq!(verdict(410, None), Verdict::Permanent);
    }

    #[test]
    fn url_checks() {
        assert!(check_url("k", "https://api.github.com").is_ok());
        assert!(check_url("k", "http://127.0.0.1:8080/x").is_ok());
        for bad in [
            "",
            "api.github.com",
            "https://",
            "ftp://h/x",
            "https://h/ x",
            "mailto:a@b",
        ] {
            assert!(check_url("k", bad).is_err(), "{bad}");
        }
    }
}
