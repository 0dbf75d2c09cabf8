//! Query templates: PromQL with `{{ canary_hosts }}`, `{{ baseline_hosts }}` and
//! `{{ window }}` placeholders, filled in for one wave.
//!
//! Inputs: a template from the configuration and [`TemplateVars`] (the controller's own lists
//! of upgraded and not-yet-upgraded hosts, the analysis window). Output: the PromQL to send.
//!
//! A host list becomes an RE2 alternation meant for a double-quoted label matcher,
//! `host=~"{{ canary_hosts }}"`: each name is escaped for RE2 and then for the PromQL string
//! (`web-1.example.com` is written `web-1\\.example\\.com`), and several names are grouped,
//! `(?:a|b)`, so the alternation stays whole whatever surrounds it. `{{ window }}` becomes a
//! PromQL duration ([`format_duration`]). Nothing else of the template is touched.

use std::time::Duration;

use crate::duration::format_duration;
use crate::error::TemplateError;

/// The values of one rendering.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    /// The upgraded hosts, as the `host` label holds them.
    pub canary_hosts: &'a [String],
    /// The hosts not yet upgraded.
    pub baseline_hosts: &'a [String],
    /// The analysis window (`rate(…[{{ window }}])`).
    pub window: Duration,
}

/// A placeholder of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    CanaryHosts,
    BaselineHosts,
    Window,
}

impl Placeholder {
    fn from_name(name: &str) -> Option<Placeholder> {
        match name {
            "canary_hosts" => Some(Placeholder::CanaryHosts),
            "baseline_hosts" => Some(Placeholder::BaselineHosts),
            "window" => Some(Placeholder::Window),
            _ => None,
        }
    }
}

/// A piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'t> {
    Text(&'t str),
    Var(Placeholder),
}

/// Splits `template` into text and placeholders; the errors of [`check_template`].
fn parse(template: &str) -> Result<Vec<Segment<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    // Each turn consumes at least the `{{` it found: bounded by the template's length.
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Segment::Text(&rest[..open]));
        }
        let start = offset + open;
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(TemplateError::Unclosed { offset: start });
        };
        let name = after[..close].trim();
        let var =
            Placeholder::from_name(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
                name: name.chars().take(64).collect(),
                offset: start,
            })?;
        out.push(Segment::Var(var));
        let consumed = open + 2 + close + 2;
        rest = &rest[consumed..];
        offset += consumed;
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    Ok(out)
}

/// Checks a template at configuration time: every `{{` is closed and names a known
/// placeholder. (Whether host lists are empty is known only when rendering.)
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    parse(template).map(|_| ())
}

/// Fills in `template` with `vars`. Errors name an unknown or unclosed placeholder, a host list
/// placeholder whose list is empty, or a host name that cannot be put in a query.
pub fn render(template: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    for segment in parse(template)? {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Var(Placeholder::CanaryHosts) => {
                out.push_str(&host_alternation("canary_hosts", vars.canary_hosts)?);
            }
            Segment::Var(Placeholder::BaselineHosts) => {
                out.push_str(&host_alternation("baseline_hosts", vars.baseline_hosts)?);
            }
            Segment::Var(Placeholder::Window) => out.push_str(&format_duration(vars.window)),
        }
    }
    Ok(out)
}

/// `hosts` as an RE2 alternation written inside a PromQL double-quoted string.
fn host_alternation(name: &'static str, hosts: &[String]) -> Result<String, TemplateError> {
    if hosts.is_empty() {
        return Err(TemplateError::EmptyHostList { name });
    }
    let mut parts = Vec::with_capacity(hosts.len());
    for host in hosts {
        if host.is_empty() {
            return Err(TemplateError::BadHost {
                name,
                host: host.clone(),
                reason: "empty",
            });
        }
        if host.chars().any(char::is_control) {
            return Err(TemplateError::BadHost {
                name,
                host: host.chars().take(256).collect(),
                reason: "holds a control character",
            });
        }
        parts.push(promql_string_escape(&re2_escape(host)));
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        format!("(?:{})", parts.join("|"))
    })
}

/// `s` with every RE2 metacharacter preceded by a backslash: it matches only itself.
pub fn re2_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(
            c,
            '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '\\'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` as the inside of a PromQL double-quoted string: `\` and `"` escaped.
pub fn promql_string_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '\\' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| (*s).to_string()).collect()
    }

    fn vars<'a>(canary: &'a [String], baseline: &'a [String]) -> TemplateVars<'a> {
        TemplateVars {
            canary_hosts: canary,
            baseline_hosts: baseline,
            window: Duration::from_secs(300),
        }
    }

    #[test]
    fn renders_hosts_and_window() {
        let canary = hosts(&["web-1", "web-7"]);
        let baseline = hosts(&["web-2"]);
        let t = r#"sum(rate(http_requests_total{job="app",host=~"{{ canary_hosts }}",code=~"5.."}[{{window}}])) / sum(rate(http_requests_total{host=~"{{baseline_hosts  }}"}[{{	window }}]))"#;
        assert_eq!(
            render(t, &vars(&canary, &baseline)).unwrap(),
            r#"sum(rate(http_requests_total{job="app",host=~"(?:web-1|web-7)",code=~"5.."}[5m])) / sum(rate(http_requests_total{host=~"web-2"}[5m]))"#
        );
    }

    #[test]
    fn escapes_dots_for_re2_inside_a_promql_string() {
        let canary = hosts(&["web-1.example.com"]);
        let out = render(r#"up{host=~"{{ canary_hosts }}"}"#, &vars(&canary, &[])).unwrap();
        // The PromQL string `web-1\\.example\\.com` is the regex `web-1\.example\.com`.
        assert_eq!(out, r#"up{host=~"web-1\\.example\\.com"}"#);
    }

    #[test]
    fn escapes_backslashes_and_quotes_twice_over() {
        let canary = hosts(&[r"dom\host", r#"q"uote"#]);
        let out = render(r#"{{canary_hosts}}"#, &vars(&canary, &[])).unwrap();
        // Regex `dom\\host` (a literal backslash) in a PromQL string: four backslashes.
        // A quote is no RE2 metacharacter: only the PromQL string escapes it.
        assert_eq!(out, r#"(?:dom\\\\host|q\"uote)"#);
    }

    #[test]
    fn escapes_every_re2_metacharacter() {
        assert_eq!(
            re2_escape(r".+*?()[]{}|^$\-a"),
            r"\.\+\*\?\(\)\[\]\{\}\|\^\$\\-a"
        );
        assert_eq!(re2_escape("web-1_a:9100"), "web-1_a:9100");
        assert_eq!(promql_string_escape(r#"a\b"c"#), r#"a\\b\"c"#);
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        let t = r#"sum by (le) (rate(x_bucket{a="}"}[1m])) } {"#;
        assert_eq!(render(t, &vars(&[], &[])).unwrap(), t);
        check_template(t).unwrap();
    }

    #[test]
    fn refuses_unknown_and_unclosed_placeholders() {
        let e = check_template("up{host=~\"{{ canary_host }}\"}").unwrap_err();
        assert_eq!(
            e,
            TemplateError::UnknownPlaceholder {
                name: "canary_host".into(),
                offset: 10
            }
        );
        assert!(e.to_string().contains("{{ canary_host }}"), "{e}");
        let e = check_template("rate(x[{{ window ]").unwrap_err();
        assert_eq!(e, TemplateError::Unclosed { offset: 7 });
        assert_eq!(e.to_string(), "unclosed {{ at byte 7");
        assert!(matches!(
            check_template("{{}}"),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
        let canary = hosts(&["a"]);
        assert_eq!(
            render("{{ canary_hosts }} {{ nope }}", &vars(&canary, &canary)).unwrap_err(),
            TemplateError::UnknownPlaceholder {
                name: "nope".into(),
                offset: 19
            }
        );
    }

    #[test]
    fn refuses_an_empty_host_list_only_where_used() {
        let canary = hosts(&["a"]);
        let e = render(
            "{{ canary_hosts }}/{{ baseline_hosts }}",
            &vars(&canary, &[]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            TemplateError::EmptyHostList {
                name: "baseline_hosts"
            }
        );
        assert!(e.to_string().contains("{{ baseline_hosts }}"), "{e}");
        assert_eq!(
            render("{{ canary_hosts }}", &vars(&canary, &[])).unwrap(),
            "a"
        );
    }

    #[test]
    fn refuses_unusable_host_names() {
        for bad in ["", "web\n1"] {
            let canary = hosts(&["ok", bad]);
            let e = render("{{ canary_hosts }}", &vars(&canary, &[])).unwrap_err();
            assert!(
                matches!(
                    e,
                    TemplateError::BadHost {
                        name: "canary_hosts",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn window_is_a_promql_duration() {
        let mut v = vars(&[], &[]);
        for (d, want) in [
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "1ms"),
        ] {
            v.window = d;
            assert_eq!(render("[{{ window }}]", &v).unwrap(), format!("[{want}]"));
        }
    }
}
