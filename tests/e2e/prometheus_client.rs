//! `rampart-prometheus`'s client against a real Prometheus (`rampart_tests::prometheus`, with no
//! scrape job): every result type, `NaN` and `±Inf` as values, no data apart from values, a
//! parse error as Prometheus's own `bad_data`, a range query, the query templates' escaping
//! checked by Prometheus's RE2, and a Prometheus SIGKILLed mid-test giving an unreachable error,
//! never a value.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rampart_prometheus::template::promql_string_escape;
use rampart_prometheus::{
    Client, ClientConfig, PromError, QueryResult, TemplateVars, check_template, render,
};
use rampart_tests::prometheus::Prometheus;

fn client(prom: &Prometheus) -> Client {
    let mut config = ClientConfig::new(format!("http://{}", prom.addr));
    config.timeout = Duration::from_secs(10);
    Client::new(&config).expect("client")
}

fn value(c: &Client, promql: &str) -> Option<f64> {
    c.query(promql, None)
        .unwrap_or_else(|e| panic!("{promql}: {e}"))
        .single_value()
        .unwrap_or_else(|e| panic!("{promql}: {e}"))
}

#[test]
fn queries_a_real_prometheus_then_sees_it_unreachable() {
    let prom = Prometheus::start(&[], &[]);
    let c = client(&prom);

    // A vector of one sample without labels.
    let r = c.query("vector(1)", None).unwrap();
    let QueryResult::Vector(samples) = &r else {
        panic!("vector(1): {r:?}")
    };
    assert_eq!(samples.len(), 1);
    assert!(samples[0].labels.is_empty(), "{samples:?}");
    assert_eq!(r.single_value().unwrap(), Some(1.0));

    // Scalars.
    for promql in ["scalar(vector(2))", "1+1"] {
        let r = c.query(promql, None).unwrap();
        assert!(
            matches!(r, QueryResult::Scalar(p) if p.v == 2.0),
            "{promql}: {r:?}"
        );
    }

    // NaN and infinities are values, not errors and not no data.
    assert!(value(&c, "0/0").expect("0/0 has a value").is_nan());
    assert_eq!(value(&c, "1/0"), Some(f64::INFINITY));
    assert_eq!(value(&c, "-1/0"), Some(f64::NEG_INFINITY));

    // No data: a selector matching nothing is an empty vector. (`absent_over_time` of it is
    // the opposite: one sample of value 1.)
    let none = r#"nonexistent_metric{host=~"web-1\\.example\\.com"}"#;
    assert_eq!(
        c.query(none, None).unwrap(),
        QueryResult::Vector(Vec::new())
    );
    assert_eq!(value(&c, none), None);
    assert_eq!(
        value(&c, "absent_over_time(nonexistent_metric[1m])"),
        Some(1.0)
    );

    // A string and a matrix (a subquery evaluated at one time).
    assert_eq!(
        c.query(r#""hello""#, None).unwrap(),
        QueryResult::String("hello".into())
    );
    let r = c.query("vector(3)[10s:1s]", None).unwrap();
    let QueryResult::Matrix(series) = &r else {
        panic!("subquery: {r:?}")
    };
    assert_eq!(series.len(), 1);
    assert!(series[0].values().iter().all(|v| *v == 3.0), "{series:?}");
    assert!(r.single_value().is_err());

    // `time` is sent: `time()` evaluated at a given instant is that instant.
    let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
    let r = c.query("time()", Some(at)).unwrap();
    assert_eq!(r.single_value().unwrap(), Some(1_700_000_000.25));

    // A parse error is Prometheus's own 400 bad_data.
    let e = c.query("sum(", None).unwrap_err();
    let PromError::Api {
        status,
        error_type,
        message,
        ..
    } = &e
    else {
        panic!("sum(: {e:?}")
    };
    assert_eq!(
        (*status, error_type.as_deref()),
        (400, Some("bad_data")),
        "{e}"
    );
    assert!(message.contains("parse error"), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "prometheus at http://{}/api/v1/query refused",
            prom.addr
        )),
        "{e}"
    );

    // A range of 10 s every second: one series of 11 points 1 s apart, valued at their time.
    let end = SystemTime::now();
    let start = end - Duration::from_secs(10);
    let series = c
        .query_range("vector(time())", start, end, Duration::from_secs(1))
        .unwrap();
    assert_eq!(series.len(), 1, "{series:?}");
    let points = &series[0].points;
    assert_eq!(points.len(), 11, "{points:?}");
    for w in points.windows(2) {
        assert!((w[1].t - w[0].t - 1.0).abs() < 1e-6, "{points:?}");
    }
    for p in points {
        assert!((p.v - p.t).abs() < 1e-6, "{p:?}");
    }
    let first = start.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        (points[0].t - first).abs() < 0.002,
        "{} vs {first}",
        points[0].t
    );

    // The templates' host escaping, judged by Prometheus's own PromQL strings and RE2: a
    // label_replace whose anchored regex is the rendered alternation.
    let template = r#"label_replace(label_replace(vector(1), "host", "HOST", "", ""), "matched", "yes", "host", "{{ canary_hosts }}")"#;
    check_template(template).unwrap();
    let canary = vec!["web-1.example.com".to_string(), r"dom\host".to_string()];
    let baseline = vec!["web-2.example.com".to_string()];
    let vars = TemplateVars {
        canary_hosts: &canary,
        baseline_hosts: &baseline,
        window: Duration::from_secs(90),
    };
    let rendered = render(template, &vars).unwrap();
    for (host, matches) in [
        ("web-1.example.com", true),
        (r"dom\host", true),
        ("web-1Xexample.com", false),
        ("web-1.example.com.evil", false),
        ("web-2.example.com", false),
        ("dom", false),
    ] {
        let promql = rendered.replacen("HOST", &promql_string_escape(host), 1);
        let r = c
            .query(&promql, None)
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        let QueryResult::Vector(s) = &r else {
            panic!("{promql}: {r:?}")
        };
        assert_eq!(s.len(), 1, "{promql}: {r:?}");
        let mut want = BTreeMap::from([("host".to_string(), host.to_string())]);
        if matches {
            want.insert("matched".to_string(), "yes".to_string());
        }
        assert_eq!(s[0].labels, want, "{host}: {promql}");
    }
    let window = render("rate(x[{{ window }}])", &vars).unwrap();
    assert_eq!(value(&c, &window), None, "{window}");

    // Prometheus SIGKILLed: no value, ever; an unreachable error naming the endpoint.
    let pid = prom.pid();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL prometheus");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(rampart_tests::process_state(pid), None | Some('Z')) {
        assert!(
            Instant::now() < deadline,
            "prometheus {pid} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for promql in ["vector(1)", "1+1"] {
        match c.query(promql, None) {
            Err(PromError::Unreachable { url, reason }) => {
                assert_eq!(url, format!("http://{}/api/v1/query", prom.addr));
                // The first query may find the client's kept-alive connection reset by the
                // kill rather than a refused new one: either way the server is gone.
                assert!(
                    reason.contains("refused") || reason.contains("reset"),
                    "{reason}"
                );
            }
            other => panic!("{promql} after SIGKILL: {other:?}"),
        }
    }
    assert!(matches!(
        c.query_range("vector(1)", start, end, Duration::from_secs(1)),
        Err(PromError::Unreachable { .. })
    ));

    // Over 11,000 points per series is refused before any request: the error is the limit's,
    // not the dead server's.
    let e = c
        .query_range(
            "vector(1)",
            end - Duration::from_secs(11_000),
            end,
            Duration::from_secs(1),
        )
        .unwrap_err();
    assert_eq!(
        e,
        PromError::TooManyPoints {
            points: 11_001,
            limit: 11_000
        }
    );
}
