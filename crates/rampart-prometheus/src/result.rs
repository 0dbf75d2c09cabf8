//! What a query returns ([`QueryResult`], [`Sample`], [`Series`], [`Point`]) and the decoding
//! of the API's JSON answers into them.
//!
//! Inputs: an answer's HTTP status and body. Outputs: the typed result, or what was wrong with
//! the answer (Prometheus's own error, or a malformed answer). Values arrive as strings and are
//! read explicitly: numbers, `NaN`, `+Inf`, `-Inf`; anything else is malformed.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::error::PromError;

/// One value at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix time in seconds (with milliseconds as fractions).
    pub t: f64,
    /// The value (`NaN` and infinities included).
    pub v: f64,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels (`__name__` included when the expression kept it).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub point: Point,
}

/// One series of a range vector (a matrix): its points in time order. Steps with no data are
/// absent, not `NaN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its points.
    pub points: Vec<Point>,
}

impl Series {
    /// Its values, in time order.
    pub fn values(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.v).collect()
    }
}

/// The result of an instant query, by `resultType`.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// `scalar`: one number (`1+1`, `scalar(…)`).
    Scalar(Point),
    /// `vector`: one sample per series (possibly none: no data).
    Vector(Vec<Sample>),
    /// `matrix`: series of points (a range selector `x[5m]` evaluated at one time).
    Matrix(Vec<Series>),
    /// `string`: a string literal.
    String(String),
}

impl QueryResult {
    /// What it is, for messages: `a scalar`, `a vector of 3 samples`, `a matrix of 2 series`.
    pub fn describe(&self) -> String {
        match self {
            QueryResult::Scalar(_) => "a scalar".to_string(),
            QueryResult::Vector(s) if s.len() == 1 => "a vector of 1 sample".to_string(),
            QueryResult::Vector(s) => format!("a vector of {} samples", s.len()),
            QueryResult::Matrix(s) if s.len() == 1 => "a matrix of 1 series".to_string(),
            QueryResult::Matrix(s) => format!("a matrix of {} series", s.len()),
            QueryResult::String(_) => "a string".to_string(),
        }
    }

    /// The one value of a scalar or of a vector of one sample; `None` for an empty vector (no
    /// data: the selector matched nothing). `NaN` is returned as it is: the caller decides what
    /// it means. A vector of several samples, a matrix or a string is an
    /// [`PromError::UnexpectedShape`] naming what it is.
    pub fn single_value(&self) -> Result<Option<f64>, PromError> {
        match self {
            QueryResult::Scalar(p) => Ok(Some(p.v)),
            QueryResult::Vector(s) if s.is_empty() => Ok(None),
            QueryResult::Vector(s) if s.len() == 1 => Ok(Some(s[0].point.v)),
            other => Err(PromError::UnexpectedShape {
                expected: "a scalar or a vector of at most one sample",
                found: other.describe(),
            }),
        }
    }

    /// A vector's values by the value of `label` (`host` → value); a sample without the label
    /// is listed under `""`, as PromQL treats a missing label. Anything but a vector, or two
    /// samples with the same value of `label`, is an [`PromError::UnexpectedShape`].
    pub fn by_label(&self, label: &str) -> Result<BTreeMap<String, f64>, PromError> {
        let QueryResult::Vector(samples) = self else {
            return Err(PromError::UnexpectedShape {
                expected: "a vector",
                found: self.describe(),
            });
        };
        let mut out = BTreeMap::new();
        for s in samples {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            if out.insert(key.clone(), s.point.v).is_some() {
                return Err(PromError::UnexpectedShape {
                    expected: "one sample per value of the label",
                    found: format!("several samples with {label}={key:?}"),
                });
            }
        }
        Ok(out)
    }
}

/// Reads a sample value as the API writes it: a decimal number, `NaN`, `+Inf` or `-Inf`.
/// Rust's other spellings (`inf`, `infinity`, `nan`) are not Prometheus's and are refused.
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => {
            let numeric = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
            match s.parse::<f64>() {
                Ok(v) if numeric => Ok(v),
                _ => Err(format!("sample value {:?} is not a number", cut(s, 40))),
            }
        }
    }
}

/// What an answer says when it is not a result: Prometheus's error, or why it is unreadable.
/// The client adds the endpoint to make a [`PromError`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnswerError {
    /// An HTTP error status or `"status":"error"`.
    Api {
        status: u16,
        error_type: Option<String>,
        message: String,
    },
    /// Not the documented JSON.
    Malformed(String),
}

/// The longest excerpt of a body that is not Prometheus's JSON kept in an error (characters).
const EXCERPT: usize = 200;

/// The JSON envelope of every answer.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    data: Option<RawData>,
}

/// The envelope of an error answer (its `data`, if any, ignored).
#[derive(Deserialize)]
struct ErrorEnvelope {
    status: String,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

/// `[unix seconds, "value"]`.
type RawPoint = (f64, String);

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum RawData {
    Scalar(RawPoint),
    Vector(Vec<RawSample>),
    Matrix(Vec<RawSeries>),
    String(RawPoint),
}

#[derive(Deserialize)]
struct RawSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: Option<RawPoint>,
    histogram: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<RawPoint>,
    histograms: Option<IgnoredAny>,
}

fn point((t, v): RawPoint) -> Result<Point, String> {
    if !t.is_finite() {
        return Err(format!("timestamp {t} is not finite"));
    }
    Ok(Point {
        t,
        v: parse_value(&v)?,
    })
}

/// Decodes an answer of `/api/v1/query` or `/api/v1/query_range`.
pub(crate) fn decode(status: u16, body: &[u8]) -> Result<QueryResult, AnswerError> {
    if !(200..300).contains(&status) {
        return Err(api_error(status, body));
    }
    let env: Envelope = serde_json::from_slice(body)
        .map_err(|e| AnswerError::Malformed(format!("not the api's json ({})", cut_err(&e))))?;
    if env.status != "success" {
        return Err(AnswerError::Api {
            status,
            error_type: env.error_type,
            message: env.error.map_or_else(
                || format!("status {:?} without an error", cut(&env.status, 40)),
                |e| cut(&e, 4 * EXCERPT),
            ),
        });
    }
    let data = env
        .data
        .ok_or_else(|| AnswerError::Malformed("a success without data".into()))?;
    convert(data).map_err(AnswerError::Malformed)
}

fn convert(data: RawData) -> Result<QueryResult, String> {
    Ok(match data {
        RawData::Scalar(p) => QueryResult::Scalar(point(p)?),
        RawData::String((_, s)) => QueryResult::String(s),
        RawData::Vector(samples) => QueryResult::Vector(
            samples
                .into_iter()
                .map(|s| {
                    let value = match (s.value, s.histogram) {
                        (Some(v), _) => v,
                        (None, Some(_)) => {
                            return Err("a native histogram sample (not supported)".to_string());
                        }
                        (None, None) => return Err("a sample without a value".to_string()),
                    };
                    Ok(Sample {
                        labels: s.metric,
                        point: point(value)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        RawData::Matrix(series) => QueryResult::Matrix(
            series
                .into_iter()
                .map(|s| {
                    if s.histograms.is_some() {
                        return Err("a native histogram series (not supported)".to_string());
                    }
                    Ok(Series {
                        labels: s.metric,
                        points: s.values.into_iter().map(point).collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// An error status's body: Prometheus's JSON error, or a short excerpt of whatever it is (a
/// proxy's HTML page).
fn api_error(status: u16, body: &[u8]) -> AnswerError {
    if let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body)
        && (env.error_type.is_some() || env.error.is_some())
    {
        return AnswerError::Api {
            status,
            error_type: env.error_type,
            message: env.error.map_or_else(
                || format!("status {:?}", cut(&env.status, 40)),
                |e| cut(&e, 4 * EXCERPT),
            ),
        };
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * EXCERPT)]);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    AnswerError::Api {
        status,
        error_type: None,
        message: if text.is_empty() {
            "an empty body".to_string()
        } else {
            format!("body: {}", cut(&text, EXCERPT))
        },
    }
}

/// `s` cut to `max` characters (with `…` when cut), control characters replaced.
fn cut(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn cut_err(e: &serde_json::Error) -> String {
    cut(&e.to_string(), EXCERPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> QueryResult {
        decode(200, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    fn malformed(body: &str) -> String {
        match decode(200, body.as_bytes()) {
            Err(AnswerError::Malformed(r)) => r,
            other => panic!("{body}: expected malformed, got {other:?}"),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn decodes_a_scalar() {
        let r = ok(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1435781451.781,"2"]}}"#,
        );
        assert_eq!(
            r,
            QueryResult::Scalar(Point {
                t: 1435781451.781,
                v: 2.0
            })
        );
        assert_eq!(r.single_value().unwrap(), Some(2.0));
    }

    #[test]
    fn decodes_a_vector() {
        let r = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","host":"web-1","job":"app"},"value":[1700000000,"1"]},
            {"metric":{"host":"web-2"},"value":[1700000000.5,"0.046"]}]},"warnings":["w"]}"#,
        );
        let QueryResult::Vector(s) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].labels,
            labels(&[("__name__", "up"), ("host", "web-1"), ("job", "app")])
        );
        assert_eq!(
            s[1].point,
            Point {
                t: 1700000000.5,
                v: 0.046
            }
        );
        assert_eq!(r.describe(), "a vector of 2 samples");
        let by_host = r.by_label("host").unwrap();
        assert_eq!(by_host.get("web-1"), Some(&1.0));
        assert_eq!(by_host.get("web-2"), Some(&0.046));
        let e = r.single_value().unwrap_err();
        assert_eq!(
            e.to_string(),
            "query result is a vector of 2 samples, expected a scalar or a vector of at most one sample"
        );
        assert!(matches!(
            r.by_label("code").unwrap_err(),
            PromError::UnexpectedShape { .. }
        ));
    }

    #[test]
    fn an_empty_vector_is_no_data() {
        let r = ok(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#);
        assert_eq!(r, QueryResult::Vector(vec![]));
        assert_eq!(r.single_value().unwrap(), None);
        assert!(r.by_label("host").unwrap().is_empty());
    }

    #[test]
    fn decodes_a_matrix() {
        let r = ok(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"host":"web-1"},"values":[[10,"1"],[11,"NaN"],[12.5,"+Inf"]]},
            {"metric":{},"values":[]}]}}"#,
        );
        let QueryResult::Matrix(series) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels, labels(&[("host", "web-1")]));
        let v = series[0].values();
        assert_eq!(v[0], 1.0);
        assert!(v[1].is_nan());
        assert_eq!(v[2], f64::INFINITY);
        assert_eq!(series[0].points[2].t, 12.5);
        assert!(series[1].points.is_empty());
        assert!(r.single_value().is_err());
        assert!(r.by_label("host").is_err());
    }

    #[test]
    fn decodes_a_string() {
        let r = ok(
            r#"{"status":"success","data":{"resultType":"string","result":[1700000000,"hello"]}}"#,
        );
        assert_eq!(r, QueryResult::String("hello".into()));
        assert_eq!(
            r.single_value().unwrap_err().to_string(),
            "query result is a string, expected a scalar or a vector of at most one sample"
        );
    }

    #[test]
    fn reads_nan_and_infinities_as_prometheus_writes_them() {
        let r = ok(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#);
        assert!(r.single_value().unwrap().unwrap().is_nan());
        assert_eq!(parse_value("+Inf").unwrap(), f64::INFINITY);
        assert_eq!(parse_value("-Inf").unwrap(), f64::NEG_INFINITY);
        assert_eq!(parse_value("1e+06").unwrap(), 1e6);
        assert_eq!(parse_value("-0.5").unwrap(), -0.5);
        assert_eq!(parse_value("1.25e+38").unwrap(), 1.25e38);
        for bad in [
            "", "inf", "Inf", "nan", "infinity", "+inf", "1,5", "0x10", " 1", "1 ", "e", "--1",
        ] {
            assert!(parse_value(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_malformed_answers() {
        assert!(malformed("not json").starts_with("not the api's json"));
        assert!(malformed("").starts_with("not the api's json"));
        assert!(malformed(r#"{"status":"success"}"#).contains("without data"));
        let r = malformed(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
        );
        assert_eq!(r, r#"sample value "abc" is not a number"#);
        let r = malformed(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}"#,
        );
        assert!(r.starts_with("not the api's json"), "{r}");
        let r = malformed(r#"{"status":"success","data":{"resultType":"tensor","result":[]}}"#);
        assert!(r.starts_with("not the api's json"), "{r}");
        let r = malformed(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#,
        );
        assert_eq!(r, "a sample without a value");
        let r = malformed(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#,
        );
        assert!(r.contains("native histogram"), "{r}");
        let r = malformed(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"1"]}]}}"#,
        );
        assert!(r.starts_with("not the api's json"), "{r}");
        // A long garbage body is not copied whole into the message.
        let r = malformed(&format!("{{\"status\":{}", "9".repeat(10_000)));
        assert!(r.len() < 400, "{r}");
    }

    #[test]
    fn decodes_prometheus_error_bodies() {
        let e = decode(
            400,
            br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unclosed left parenthesis"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            AnswerError::Api {
                status: 400,
                error_type: Some("bad_data".into()),
                message:
                    r#"invalid parameter "query": 1:5: parse error: unclosed left parenthesis"#
                        .into()
            }
        );
        for (status, kind) in [(422, "execution"), (503, "timeout"), (503, "unavailable")] {
            let body = format!(r#"{{"status":"error","errorType":"{kind}","error":"boom"}}"#);
            let e = decode(status, body.as_bytes()).unwrap_err();
            assert_eq!(
                e,
                AnswerError::Api {
                    status,
                    error_type: Some(kind.into()),
                    message: "boom".into()
                }
            );
        }
        // A 200 with an error status is still an error.
        let e = decode(
            200,
            br#"{"status":"error","errorType":"internal","error":"x"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, AnswerError::Api { status: 200, .. }), "{e:?}");
    }

    #[test]
    fn a_non_json_error_body_becomes_a_short_message() {
        let page = format!(
            "<html>\n<body>502 Bad Gateway</body>{}</html>",
            "x".repeat(100_000)
        );
        let AnswerError::Api {
            status,
            error_type,
            message,
        } = decode(502, page.as_bytes()).unwrap_err()
        else {
            panic!()
        };
        assert_eq!((status, error_type), (502, None));
        assert!(
            message.starts_with("body: <html> <body>502 Bad Gateway"),
            "{message}"
        );
        assert!(message.chars().count() <= 220, "{message}");
        let e = decode(503, b"").unwrap_err();
        assert_eq!(
            e,
            AnswerError::Api {
                status: 503,
                error_type: None,
                message: "an empty body".into()
            }
        );
        // Invalid UTF-8 in a body is no panic.
        assert!(matches!(
            decode(500, &[0xff, 0xfe, b'a']).unwrap_err(),
            AnswerError::Api { status: 500, .. }
        ));
    }
}
