//! Network modules: `uri` and `get_url`, with Ansible's arguments and results, over `ureq`
//! (rustls with ring and the webpki roots, plus a private CA from `ca_path`).
//!
//! Inputs: templated, type-checked arguments (see each `ModuleSpec`). Outputs: Ansible's result
//! objects. Every request runs under `timeout` (the whole call: connecting, sending, every read
//! of the body), follows at most [`MAX_REDIRECTS`] redirects and reads a bounded body.
//!
//! - `uri` makes one request (`method`, `headers`, `body` as `raw` text, `json` or
//!   `form-urlencoded`, `url_username`/`url_password` sent up front with `force_basic_auth`, else
//!   after a Basic challenge) and returns `status`, `url` (the final one), `redirected`, the
//!   response headers with Ansible's names (lower case, `-` as `_`: `content_type`), `elapsed`,
//!   `msg` (`OK (N bytes)`, N the Content-Length as sent, or `unknown`), `content` when
//!   `return_content`, `json` when the response is JSON, `body` for an accepted error status.
//!   It fails when the status is not in `status_code` (default `[200]`), with `msg`
//!   `Status code was S and not [..]: ...`; a request that gets no answer has status -1.
//!   `creates` / `removes` skip the request (`changed: false`). With `dest` the body is written
//!   there atomically. Check mode: Ansible's uri does not support it, so the task is skipped
//!   (its schema says `CheckMode::Skip`). Reversing: `uri` changes nothing on the host except
//!   `dest` (remove it, or copy the old content back); what a request did on the server is the
//!   server's to undo (a second request).
//! - `get_url` downloads an `http`, `https` or `file` URL to `dest` (a file, or a directory the
//!   URL's file name goes into): streamed to a temporary file in dest's directory with the SHA-1
//!   of Ansible's `checksum_src` and the digest of `checksum` computed on the way, verified, then
//!   renamed over dest ([`rampart_host::durable::rename_into_place`]). Idempotence as Ansible:
//!   with a `checksum` that an existing dest already has, nothing is downloaded (`file already
//!   exists`); without one an existing dest is asked for with `If-Modified-Since` (a 304 is `ok`)
//!   and otherwise downloaded and compared (same SHA-1: `ok`, nothing written); `force: true`
//!   always downloads. `checksum` is `ALG:HEX` (md5, sha1, sha224, sha256, sha384, sha512) or
//!   `ALG:URL` of a checksum file (`HEX  name` or BSD `ALG (name) = HEX` lines, the URL's file
//!   name looked up). Results: `dest`, `url`, `checksum_src` / `checksum_dest` (SHA-1, as
//!   Ansible's), `md5sum`, `status_code` (null for file URLs), `msg`, `elapsed`, and dest's path
//!   information (`mode`, `owner`, `size`, ...). Check mode, as Ansible: an http(s) URL is asked
//!   for with `HEAD` and reported as a change unless it answers 304; a file URL is read and
//!   compared; nothing is written. Reversing: restore the previous content from a copy (or remove
//!   a file that did not exist, `file: state=absent`).
//!
//! Deliberate differences from Ansible: the reason phrase in messages is the standard one for the
//! status (`HTTP Error 404: Not Found`), not the server's own text; `uri` bodies are capped at
//! [`URI_MAX_CONTENT`] and `get_url` downloads at `max_bytes` (Rampart's own argument, default
//! [`GET_URL_MAX_BYTES`]); `uri` with `dest` sends no `If-Modified-Since` and reports a change only
//! when the content differs (Ansible reports every write as a change and fails on the 304 its
//! second run gets); response text is decoded as UTF-8 (invalid bytes replaced); `src` (the
//! temporary file Ansible leaves named in the result) is not returned; no proxies, no `.netrc`,
//! no cookies sent; `form-multipart`, `src`, `unix_socket`, `backup` and `tmp_dest` are not
//! supported (the loader refuses them).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use rampart_host::digest::hex;
use rampart_host::durable::{parent_dir, rename_into_place, temp_path, write_atomic};
use serde_json::{Map, Value, json};
use sha2::digest::DynDigest;
use ureq::ResponseExt;

use rampart_playbook::modules::net as schema;

use super::files::{
    Mode, add_path_info, current_umask, ensure_mode, expand_user, opt_mode, os_msg, path_json,
};
use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_f64, arg_i64, arg_str, failed};

/// `uri`: makes one HTTP(S) request and returns the response's status, headers and body.
pub static URI: ModuleSpec = ModuleSpec {
    schema: &schema::URI,
    run: run_uri,
};

/// `get_url`: downloads an http, https or file URL to a file, verified and renamed into place.
pub static GET_URL: ModuleSpec = ModuleSpec {
    schema: &schema::GET_URL,
    run: run_get_url,
};

/// The most bytes of a response body `uri` reads (content, json, dest).
pub const URI_MAX_CONTENT: u64 = 16 * 1024 * 1024;
/// The most bytes `get_url` downloads when `max_bytes` is not given.
pub const GET_URL_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// The most redirects one request follows (urllib's limit, which Ansible has).
pub const MAX_REDIRECTS: u32 = 10;
/// Seconds a `uri` request may take when `timeout` is not given (Ansible's default).
const URI_DEFAULT_TIMEOUT: f64 = 30.0;
/// Seconds a `get_url` download may take when `timeout` is not given (Ansible's default).
const GET_URL_DEFAULT_TIMEOUT: f64 = 10.0;
/// The most bytes of a checksum file `get_url` reads.
const MAX_CHECKSUM_FILE: u64 = 1024 * 1024;
/// The longest `timeout` accepted: one day.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// The longest URL accepted.
const MAX_URL_LEN: usize = 8 * 1024;
/// Size of the chunks a body is copied in.
const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The HTTP client, shared with `release`
// ---------------------------------------------------------------------------------------------

/// How an HTTP client is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientOptions<'a> {
    /// The whole call: connect, send, read the body.
    pub timeout: Duration,
    /// Connecting alone, when shorter than `timeout`.
    pub connect_timeout: Option<Duration>,
    /// PEM certificates trusted besides the webpki roots (a private CA).
    pub ca_file: Option<&'a str>,
    /// The argument `ca_file` came from, for messages (`ca_file`, `ca_path`).
    pub ca_arg: &'a str,
    /// False: no certificate is checked (Ansible's `validate_certs: false`).
    pub validate_certs: bool,
    /// Redirects followed (0: a 3xx is the answer).
    pub max_redirects: u32,
}

/// A `ureq` agent for `opts`: rustls (ring) with the webpki roots or the certificates of
/// `ca_file`, HTTP error statuses returned as responses (not errors), the final URL kept.
pub(crate) fn http_agent(opts: &ClientOptions<'_>) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(ca) = opts.ca_file.filter(|c| !c.is_empty()) {
        let arg = opts.ca_arg;
        let pem = fs::read(ca).map_err(|e| format!("cannot read {arg} {ca}: {e}"))?;
        let mut certs: Vec<Certificate<'static>> = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(format!("cannot parse {arg} {ca}: {e}")),
            }
        }
        if certs.is_empty() {
            return Err(format!("{arg} {ca} holds no PEM certificate"));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    if !opts.validate_certs {
        tls = tls.disable_verification(true);
    }
    let connect = opts
        .connect_timeout
        .map_or(opts.timeout, |c| c.min(opts.timeout));
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(opts.timeout))
        .timeout_connect(Some(connect))
        .max_redirects(opts.max_redirects)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .tls_config(tls.build())
        .build()
        .into())
}

/// The `timeout` argument in seconds, bounded, or `default`.
fn timeout_arg(args: &Map<String, Value>, default: f64) -> Result<Duration, String> {
    let secs = arg_f64(args, "timeout").unwrap_or(default);
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_TIMEOUT_SECS {
        return Err(format!(
            "`timeout` must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}, not {secs}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The `headers` argument as (name, value) pairs, values as text.
fn headers_arg(args: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let Some(Value::Object(map)) = args.get("headers") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            other => other.to_string(),
        };
        if k.is_empty() || k.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f) {
            return Err(format!("header name {k:?} is not a valid HTTP header name"));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!("the value of header {k} holds a line break"));
        }
        out.push((k.clone(), v));
    }
    Ok(out)
}

/// Checks a URL's length and scheme (one of `schemes`); returns the lower-cased scheme.
fn check_url(url: &str, schemes: &[&str]) -> Result<String, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "the url is {} bytes long; at most {MAX_URL_LEN} are accepted",
            url.len()
        ));
    }
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    if !schemes.contains(&scheme.as_str()) {
        return Err(format!(
            "url {} must start with {}",
            mask_url(url),
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    Ok(scheme)
}

/// The URL with a password in its user information hidden, as Ansible's `mask_url`.
fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:********@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Standard base64 (for `Authorization: Basic`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Python's `urlencode` of one text (`quote_plus`): space as `+`, unreserved bytes kept.
fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An HTTP date (`If-Modified-Since`).
fn http_date(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// One request to make.
struct Request<'a> {
    method: &'a str,
    url: &'a str,
    headers: &'a [(String, String)],
    body: Option<Vec<u8>>,
    if_modified_since: Option<SystemTime>,
    /// `url_username` / `url_password`, and whether to send them before a challenge.
    auth: Option<(String, String)>,
    force_basic_auth: bool,
}

/// The text Ansible gives a request that got no answer (its status is -1):
/// `Request failed: <urlopen error [Errno 111] Connection refused>`.
fn request_failed(e: &ureq::Error) -> String {
    let io_text = |e: &io::Error| match e.raw_os_error() {
        Some(code) => format!("[Errno {code}] {}", os_msg(e)),
        None => e.to_string(),
    };
    let inner = match e {
        ureq::Error::Io(io) => io_text(io),
        ureq::Error::Timeout(_) => "timed out".to_string(),
        other => other.to_string(),
    };
    format!("Request failed: <urlopen error {inner}>")
}

/// Sends `req`; an error is the text of a request that got no answer. A 401 with a Basic
/// challenge is answered once with the credentials when they were not sent up front.
fn send(
    agent: &ureq::Agent,
    req: &Request<'_>,
) -> Result<ureq::http::Response<ureq::Body>, String> {
    let basic = req
        .auth
        .as_ref()
        .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
    let attempt = |with_auth: bool| {
        let mut b = ureq::http::Request::builder()
            .method(req.method)
            .uri(req.url);
        for (k, v) in req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if let Some(t) = req.if_modified_since {
            b = b.header("If-Modified-Since", http_date(t));
        }
        if with_auth && let Some(h) = &basic {
            b = b.header("Authorization", h.as_str());
        }
        let bad =
            |e: ureq::http::Error| format!("cannot make a request of {}: {e}", mask_url(req.url));
        // No body at all (not an empty one) when there is none: ureq follows redirects only
        // for requests without a body.
        let sent = match &req.body {
            Some(body) => agent.run(b.body(body.clone()).map_err(bad)?),
            None => agent.run(b.body(()).map_err(bad)?),
        };
        sent.map_err(|e| request_failed(&e))
    };
    let resp = attempt(req.force_basic_auth)?;
    let challenged = resp.status().as_u16() == 401
        && resp.headers().get_all("www-authenticate").iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.trim_start().to_ascii_lowercase().starts_with("basic"))
        });
    if challenged && basic.is_some() && !req.force_basic_auth {
        return attempt(true);
    }
    Ok(resp)
}

/// Ansible's `msg` for an answered request: `OK (N bytes)` for a success, else
/// `HTTP Error S: Reason`.
fn status_msg(resp: &ureq::http::Response<ureq::Body>) -> String {
    let status = resp.status();
    if status.as_u16() < 300 {
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        format!("OK ({len} bytes)")
    } else {
        format!(
            "HTTP Error {}: {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
    }
}

/// The response's headers as Ansible returns them: lower case, `-` as `_`, repeated headers
/// joined with `, `.
fn header_fields(resp: &ureq::http::Response<ureq::Body>, r: &mut ModuleResult) {
    for name in resp.headers().keys() {
        let values: Vec<String> = resp
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        r.insert(
            name.as_str().to_ascii_lowercase().replace('-', "_"),
            json!(values.join(", ")),
        );
    }
}

/// Reads at most `max` bytes of a body; more is an error naming the limit.
fn read_capped(body: ureq::Body, max: u64, url: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    body.into_reader()
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read the response of {}: {e}", mask_url(url)))?;
    if out.len() as u64 > max {
        return Err(format!(
            "the response of {} is larger than {max} bytes; use get_url for large downloads",
            mask_url(url)
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// uri
// ---------------------------------------------------------------------------------------------

/// Whether a media type is JSON as Ansible decides it (`json` or `javascript`, also as a `+`
/// suffix: `application/problem+json`).
fn is_json_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let sub = mime.split_once('/').map_or("", |(_, s)| s);
    let sub = sub.rsplit_once('+').map_or(sub, |(_, suffix)| suffix);
    matches!(sub.to_ascii_lowercase().as_str(), "json" | "javascript")
}

/// `status_code`: the accepted statuses (default `[200]`).
fn status_codes(args: &Map<String, Value>) -> Result<Vec<i64>, String> {
    let items = match args.get("status_code") {
        None | Some(Value::Null) => return Ok(vec![200]),
        Some(Value::Array(items)) => items.clone(),
        Some(one) => vec![one.clone()],
    };
    if items.len() > 100 {
        return Err("`status_code` lists more than 100 statuses".into());
    }
    items
        .iter()
        .map(|v| match v {
            Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
            Value::String(s) => s.trim().parse::<i64>().map_err(|_| ()),
            _ => Err(()),
        })
        .collect::<Result<Vec<_>, ()>>()
        .map_err(|()| {
            format!(
                "`status_code` must be a status or a list of statuses, not {}",
                Value::Array(items.clone())
            )
        })
}

/// The request body of `uri` for its `body_format`, and the Content-Type it implies.
fn uri_body(
    body: Option<&Value>,
    format: &str,
) -> Result<(Option<Vec<u8>>, Option<&'static str>), String> {
    let Some(body) = body.filter(|b| !b.is_null()) else {
        return Ok((None, None));
    };
    match format {
        "json" => {
            let text = match body {
                Value::String(s) => s.clone().into_bytes(),
                Value::Array(_) | Value::Object(_) => super::files::content_bytes(body),
                other => other.to_string().into_bytes(),
            };
            Ok((Some(text), Some("application/json")))
        }
        "form-urlencoded" => {
            let text = match body {
                Value::String(s) => s.clone(),
                Value::Object(map) => form_pairs(map.iter().map(|(k, v)| (k.clone(), v)))?,
                Value::Array(items) => {
                    let mut pairs = Vec::with_capacity(items.len());
                    for item in items {
                        match item.as_array().map(Vec::as_slice) {
                            Some([Value::String(k), v]) => pairs.push((k.clone(), v)),
                            _ => {
                                return Err(
                                    "failed to parse body as form_urlencoded: a list body must hold [key, value] pairs"
                                        .into(),
                                );
                            }
                        }
                    }
                    form_pairs(pairs.into_iter())?
                }
                _ => {
                    return Err(
                        "failed to parse body as form_urlencoded: the body must be a mapping, a list of pairs or text"
                            .into(),
                    );
                }
            };
            Ok((Some(text.into_bytes()), Some("application/x-www-form-urlencoded")))
        }
        _ => match body {
            Value::String(s) => Ok((Some(s.clone().into_bytes()), None)),
            Value::Number(n) => Ok((Some(n.to_string().into_bytes()), None)),
            _ => Err(
                "`body` must be text when `body_format` is raw; use body_format: json for a mapping or list"
                    .into(),
            ),
        },
    }
}

/// `k=v&k2=v2`, a list value giving one pair per element, as Python's `urlencode(doseq=True)`.
fn form_pairs<'a>(pairs: impl Iterator<Item = (String, &'a Value)>) -> Result<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        other => other.to_string(),
    };
    let mut out = Vec::new();
    for (k, v) in pairs {
        let values: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            other => vec![other],
        };
        for v in values.into_iter().filter(|v| !v.is_null()) {
            out.push(format!("{}={}", quote_plus(&k), quote_plus(&text(v))));
        }
    }
    Ok(out.join("&"))
}

/// Redirects to follow for `follow_redirects` and the method (`safe`: GET and HEAD only).
fn redirects_for(follow: &str, method: &str) -> u32 {
    match follow {
        "none" | "no" => 0,
        "all" | "yes" => MAX_REDIRECTS,
        // safe, urllib2
        _ if method == "GET" || method == "HEAD" => MAX_REDIRECTS,
        _ => 0,
    }
}

/// The cookies a response sets, as Ansible's `cookies` (name → value) and `cookies_string`.
fn cookie_fields(resp: &ureq::http::Response<ureq::Body>, r: &mut ModuleResult) {
    let mut cookies = Map::new();
    for v in resp.headers().get_all("set-cookie") {
        let Ok(v) = v.to_str() else { continue };
        if let Some((name, value)) = v.split(';').next().and_then(|p| p.split_once('=')) {
            cookies.insert(name.trim().to_string(), json!(value.trim()));
        }
    }
    let string = cookies
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ");
    r.insert("cookies".into(), Value::Object(cookies));
    r.insert("cookies_string".into(), json!(string));
}

fn run_uri(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    match uri(args) {
        Ok(r) | Err(r) => r,
    }
}

fn uri(args: &Map<String, Value>) -> Result<ModuleResult, ModuleResult> {
    let url = arg_str(args, "url").unwrap_or_default();
    check_url(url, &["http", "https"]).map_err(failed)?;
    let method = arg_str(args, "method")
        .unwrap_or("GET")
        .to_ascii_uppercase();
    if method.is_empty() || method.len() > 32 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(failed(
            "Parameter 'method' needs to be a single word in uppercase, like GET or POST.",
        ));
    }
    let format = arg_str(args, "body_format").unwrap_or("raw");
    let (body, content_type) = uri_body(args.get("body"), format).map_err(failed)?;
    let mut headers = headers_arg(args).map_err(failed)?;
    if let Some(ct) = content_type
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("Content-Type".into(), ct.into()));
    }
    let accepted = status_codes(args).map_err(failed)?;
    let return_content = arg_bool(args, "return_content").unwrap_or(false);
    let timeout = timeout_arg(args, URI_DEFAULT_TIMEOUT).map_err(failed)?;
    let mode = opt_mode(args).map_err(failed)?;
    if let Some(creates) = arg_str(args, "creates")
        && fs::symlink_metadata(expand_user(creates)).is_ok()
    {
        let mut r = super::ok(false);
        r.insert(
            "stdout".into(),
            json!(format!("skipped, since '{creates}' exists")),
        );
        return Ok(r);
    }
    if let Some(removes) = arg_str(args, "removes")
        && fs::symlink_metadata(expand_user(removes)).is_err()
    {
        let mut r = super::ok(false);
        r.insert(
            "stdout".into(),
            json!(format!("skipped, since '{removes}' does not exist")),
        );
        return Ok(r);
    }
    let follow = arg_str(args, "follow_redirects").unwrap_or("safe");
    let agent = http_agent(&ClientOptions {
        timeout,
        connect_timeout: None,
        ca_file: arg_str(args, "ca_path"),
        ca_arg: "ca_path",
        validate_certs: arg_bool(args, "validate_certs").unwrap_or(true),
        max_redirects: redirects_for(follow, &method),
    })
    .map_err(failed)?;
    let auth = arg_str(args, "url_username")
        .filter(|u| !u.is_empty())
        .map(|u| {
            (
                u.to_string(),
                arg_str(args, "url_password").unwrap_or("").to_string(),
            )
        });
    let shown = mask_url(url);
    let codes = format!(
        "[{}]",
        accepted
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let start = Instant::now();
    let sent = send(
        &agent,
        &Request {
            method: &method,
            url,
            headers: &headers,
            body,
            if_modified_since: None,
            auth,
            force_basic_auth: arg_bool(args, "force_basic_auth").unwrap_or(false),
        },
    );
    let resp = match sent {
        Ok(resp) => resp,
        Err(msg) => {
            let mut r = super::ok(false);
            r.insert("redirected".into(), json!(false));
            r.insert("url".into(), json!(shown));
            r.insert("status".into(), json!(-1));
            r.insert("elapsed".into(), json!(start.elapsed().as_secs()));
            if accepted.contains(&-1) {
                r.insert("msg".into(), json!(msg));
                return Ok(r);
            }
            r.insert("failed".into(), json!(true));
            r.insert(
                "msg".into(),
                json!(format!("Status code was -1 and not {codes}: {msg}")),
            );
            return Err(r);
        }
    };
    let status = i64::from(resp.status().as_u16());
    let final_url = resp.get_uri().to_string();
    let redirected = url
        .parse::<ureq::http::Uri>()
        .map_or(final_url != url, |u| u != *resp.get_uri());
    let mut r = super::ok(false);
    header_fields(&resp, &mut r);
    if status < 400 {
        cookie_fields(&resp, &mut r);
    }
    if let Some(loc) = r.get("location").and_then(Value::as_str).map(String::from) {
        r.insert("location".into(), json!(join_url(&final_url, &loc)));
    }
    r.insert("msg".into(), json!(status_msg(&resp)));
    r.insert(
        "url".into(),
        json!(if redirected {
            mask_url(&final_url)
        } else {
            shown.clone()
        }),
    );
    r.insert("status".into(), json!(status));
    r.insert("redirected".into(), json!(redirected));
    r.insert("changed".into(), json!(false));
    let is_json = r
        .get("content_type")
        .and_then(Value::as_str)
        .is_some_and(is_json_type);
    let ok_status = accepted.contains(&status);
    let dest = arg_str(args, "dest").map(expand_user);
    let wants_body = is_json || return_content || !ok_status || dest.is_some() || status >= 400;
    let content = if wants_body {
        Some(
            read_capped(resp.into_body(), URI_MAX_CONTENT, url).map_err(|e| {
                let mut f = r.clone();
                f.insert("failed".into(), json!(true));
                f.insert("msg".into(), json!(e));
                f
            })?,
        )
    } else {
        None
    };
    r.insert("elapsed".into(), json!(start.elapsed().as_secs()));
    if let Some(dest) = dest {
        let dest = if dest.is_dir() {
            dest.join(url_filename(&final_url))
        } else {
            dest
        };
        if ok_status && status != 304 {
            let bytes = content.as_deref().unwrap_or_default();
            let changed = write_if_different(&dest, bytes, mode.as_ref()).map_err(|e| {
                let mut f = r.clone();
                f.insert("failed".into(), json!(true));
                f.insert("msg".into(), json!(e));
                f
            })?;
            r.insert("changed".into(), json!(changed));
            add_path_info(&mut r, &dest);
        }
        r.insert("path".into(), path_json(&dest));
    }
    let text = content.map(|c| String::from_utf8_lossy(&c).into_owned());
    if is_json
        && let Some(t) = &text
        && let Ok(v) = serde_json::from_str::<Value>(t)
    {
        r.insert("json".into(), v);
    }
    if !ok_status {
        let msg = r
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        r.insert(
            "msg".into(),
            json!(format!("Status code was {status} and not {codes}: {msg}")),
        );
        r.insert("failed".into(), json!(true));
        if return_content {
            r.insert("content".into(), json!(text));
        }
        return Err(r);
    }
    if return_content {
        r.insert("content".into(), json!(text));
    } else if status >= 400 {
        r.insert("body".into(), json!(text));
    }
    Ok(r)
}

/// A `Location` made absolute against the URL it came with.
fn join_url(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return loc.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..end]);
    if loc.starts_with('/') {
        return format!("{origin}{loc}");
    }
    let path = &rest[end..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{loc}")
}

/// Writes `bytes` to `dest` atomically when its content differs, then applies `mode`; returns
/// whether anything changed.
fn write_if_different(dest: &Path, bytes: &[u8], mode: Option<&Mode>) -> Result<bool, String> {
    let same = fs::read(dest).is_ok_and(|have| have == bytes);
    let mut changed = false;
    if !same {
        let current = fs::metadata(dest).ok().map(|m| m.mode() & 0o7777);
        let final_mode = match mode {
            Some(m) => Some(m.resolve(current.unwrap_or(0o666 & !current_umask()), false)?),
            None => None,
        };
        write_atomic(dest, bytes, final_mode)
            .map_err(|e| format!("failed to write {}: {}", dest.display(), os_msg(&e)))?;
        changed = true;
    }
    if let Some(m) = mode {
        changed |= ensure_mode(dest, m, false)?;
    }
    Ok(changed)
}

// ---------------------------------------------------------------------------------------------
// get_url
// ---------------------------------------------------------------------------------------------

/// A `checksum` algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Alg {
    fn parse(name: &str) -> Result<Alg, String> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "md5" => Alg::Md5,
            "sha1" => Alg::Sha1,
            "sha224" => Alg::Sha224,
            "sha256" => Alg::Sha256,
            "sha384" => Alg::Sha384,
            "sha512" => Alg::Sha512,
            other => {
                return Err(format!(
                    "checksum algorithm {other} is not supported; use md5, sha1, sha224, sha256, sha384 or sha512"
                ));
            }
        })
    }
    fn hasher(self) -> Box<dyn DynDigest> {
        match self {
            Alg::Md5 => Box::new(md5::Md5::default()),
            Alg::Sha1 => Box::new(sha1::Sha1::default()),
            Alg::Sha224 => Box::new(sha2::Sha224::default()),
            Alg::Sha256 => Box::new(sha2::Sha256::default()),
            Alg::Sha384 => Box::new(sha2::Sha384::default()),
            Alg::Sha512 => Box::new(sha2::Sha512::default()),
        }
    }
}

/// The digest of a file, as lowercase hex (None when it cannot be read).
fn file_digest(path: &Path, alg: Alg) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut h = alg.hasher();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(hex(&h.finalize()))
}

/// The file name of a URL's path (`index.html` when it has none), as Ansible's `url_filename`.
fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "index.html".to_string(),
    }
}

/// The file name a `Content-Disposition: attachment; filename="x"` header gives, if any.
fn disposition_filename(header: Option<&str>) -> Option<String> {
    let h = header?;
    let i = h.to_ascii_lowercase().find("filename=")?;
    let v = h[i + "filename=".len()..]
        .split(';')
        .next()?
        .trim()
        .trim_matches('"');
    let name = Path::new(v).file_name()?.to_string_lossy().into_owned();
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// The digest for `filename` in a checksum file (`HEX  name`, `HEX *name`, BSD
/// `ALG (name) = HEX`, or a file of one word), as Ansible's `parse_digest_lines`.
fn digest_in_checksum_file(text: &str, filename: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() == 1 && lines[0].split_whitespace().count() == 1 {
        return Some(lines[0].trim().to_string());
    }
    for line in lines {
        let (digest, path) = if let Some((head, digest)) = line.rsplit_once(") = ")
            && let Some((_, path)) = head.split_once('(')
        {
            (digest.trim(), path)
        } else {
            let Some((digest, path)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let path = path.trim_start();
            let path = path
                .strip_prefix('*')
                .unwrap_or(path)
                .trim_start_matches("./");
            (digest, path)
        };
        if path == filename && !digest.is_empty() {
            return Some(digest.to_string());
        }
    }
    None
}

/// What a download read: its size and digests, and the temporary file holding it (None in
/// check mode, or when nothing was asked to be kept).
struct Downloaded {
    tmp: Option<PathBuf>,
    size: u64,
    sha1: String,
    md5: String,
    digest: Option<String>,
}

/// Copies `reader` into a new temporary file beside `dest` (or nowhere when `keep` is false),
/// hashing on the way; more than `max` bytes, or fewer than a declared `expected_len`, is an
/// error and leaves no temporary file.
fn stream(
    reader: &mut dyn Read,
    dest: &Path,
    keep: bool,
    max: u64,
    expected_len: Option<u64>,
    alg: Option<Alg>,
) -> Result<Downloaded, String> {
    let mut file = None;
    if keep {
        let name = dest.file_name().unwrap_or(std::ffi::OsStr::new("download"));
        let tmp = temp_path(&parent_dir(dest), name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| {
                format!(
                    "failed to create temporary content file: {}: {}",
                    tmp.display(),
                    os_msg(&e)
                )
            })?;
        file = Some((tmp, f));
    }
    let result = copy_hashing(reader, file.as_mut().map(|(_, f)| f), max, alg);
    let result = result.and_then(|d| match expected_len {
        Some(want) if want != d.size => Err(format!(
            "Incomplete read: the server announced {want} bytes and sent {}",
            d.size
        )),
        _ => Ok(d),
    });
    let result = result.and_then(|d| match &file {
        Some((_, f)) => f
            .sync_all()
            .map(|()| d)
            .map_err(|e| format!("failed to create temporary content file: {}", os_msg(&e))),
        None => Ok(d),
    });
    match (result, file) {
        (Ok(mut d), Some((tmp, _))) => {
            d.tmp = Some(tmp);
            Ok(d)
        }
        (Ok(d), None) => Ok(d),
        (Err(e), Some((tmp, _))) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

fn copy_hashing(
    reader: &mut dyn Read,
    mut out: Option<&mut File>,
    max: u64,
    alg: Option<Alg>,
) -> Result<Downloaded, String> {
    let mut sha1 = Alg::Sha1.hasher();
    let mut md5 = Alg::Md5.hasher();
    let mut other = alg.map(Alg::hasher);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("failed to create temporary content file: {e}")),
        };
        size += n as u64;
        if size > max {
            return Err(format!(
                "the download is larger than max_bytes ({max} bytes); raise max_bytes if it is expected"
            ));
        }
        sha1.update(&buf[..n]);
        md5.update(&buf[..n]);
        if let Some(h) = other.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(f) = out.as_mut() {
            f.write_all(&buf[..n])
                .map_err(|e| format!("failed to create temporary content file: {}", os_msg(&e)))?;
        }
    }
    Ok(Downloaded {
        tmp: None,
        size,
        sha1: hex(&sha1.finalize()),
        md5: hex(&md5.finalize()),
        digest: other.map(|h| hex(&h.finalize())),
    })
}

/// A source opened for reading: its body, declared length, status and `msg`.
struct Opened {
    reader: Box<dyn Read>,
    expected_len: Option<u64>,
    /// The HTTP status (None for a file URL).
    status: Option<u16>,
    msg: String,
    /// The URL the body came from (after redirects).
    final_url: String,
    disposition: Option<String>,
}

/// Why a source could not be read.
enum OpenError {
    /// Not modified since dest's time (HTTP 304).
    NotModified,
    /// An answered request with another status than 200.
    Status(u16, String),
    /// No answer, or an unreadable file.
    Failed(String),
}

/// Settings of one `get_url` call.
struct Fetch<'a> {
    agent: &'a ureq::Agent,
    headers: &'a [(String, String)],
    auth: Option<(String, String)>,
    force_basic_auth: bool,
}

impl Fetch<'_> {
    fn open(
        &self,
        url: &str,
        method: &str,
        since: Option<SystemTime>,
    ) -> Result<Opened, OpenError> {
        if let Some(path) = strip_scheme(url, "file") {
            let path = percent_decode(path);
            let f = File::open(&path).map_err(|e| {
                OpenError::Failed(format!(
                    "Request failed: <urlopen error [Errno {}] {}: '{path}'>",
                    e.raw_os_error().unwrap_or(0),
                    os_msg(&e)
                ))
            })?;
            let len = f.metadata().map(|m| m.len()).ok();
            return Ok(Opened {
                reader: Box::new(f),
                expected_len: None,
                status: None,
                msg: format!(
                    "OK ({} bytes)",
                    len.map_or("unknown".into(), |l| l.to_string())
                ),
                final_url: url.to_string(),
                disposition: None,
            });
        }
        let resp = send(
            self.agent,
            &Request {
                method,
                url,
                headers: self.headers,
                body: None,
                if_modified_since: since,
                auth: self.auth.clone(),
                force_basic_auth: self.force_basic_auth,
            },
        )
        .map_err(OpenError::Failed)?;
        let status = resp.status().as_u16();
        if status == 304 {
            return Err(OpenError::NotModified);
        }
        if status != 200 {
            return Err(OpenError::Status(status, status_msg(&resp)));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let compressed =
            header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let expected_len = if compressed || method == "HEAD" {
            None
        } else {
            header("content-length").and_then(|l| l.trim().parse().ok())
        };
        let disposition = header("content-disposition");
        let msg = status_msg(&resp);
        let final_url = resp.get_uri().to_string();
        Ok(Opened {
            reader: Box::new(resp.into_body().into_reader()),
            expected_len,
            status: Some(status),
            msg,
            final_url,
            disposition,
        })
    }
}

fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = url.split_once("://")?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// `%XX` escapes of a file URL's path decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run_get_url(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    match get_url(args, ctx.check) {
        Ok(r) | Err(r) => r,
    }
}

/// The `checksum` argument: the algorithm and the expected digest (fetched when it is a URL).
fn checksum_arg(
    args: &Map<String, Value>,
    url: &str,
    fetch: &Fetch<'_>,
) -> Result<Option<(Alg, String)>, String> {
    let Some(spec) = arg_str(args, "checksum").filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let Some((alg, value)) = spec.split_once(':') else {
        return Err("The checksum parameter has to be in format <algorithm>:<checksum>".into());
    };
    let alg = Alg::parse(alg)?;
    let mut value = value.to_string();
    let lower = value.to_ascii_lowercase();
    if ["http://", "https://", "file://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        let mut opened = match fetch.open(&value, "GET", None) {
            Ok(o) => o,
            Err(OpenError::Failed(m)) => return Err(m),
            Err(OpenError::Status(_, m)) => {
                return Err(format!(
                    "Request failed for the checksum file {}: {m}",
                    mask_url(&value)
                ));
            }
            Err(OpenError::NotModified) => {
                return Err("Request failed: HTTP Error 304: Not Modified".into());
            }
        };
        let mut text = Vec::new();
        opened
            .reader
            .by_ref()
            .take(MAX_CHECKSUM_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read the checksum file {}: {e}", mask_url(&value)))?;
        if text.len() as u64 > MAX_CHECKSUM_FILE {
            return Err(format!(
                "the checksum file {} is larger than {MAX_CHECKSUM_FILE} bytes",
                mask_url(&value)
            ));
        }
        let filename = url_filename(url);
        value = digest_in_checksum_file(&String::from_utf8_lossy(&text), &filename).ok_or_else(
            || {
                format!(
                    "Unable to find a checksum for file '{filename}' in '{}'",
                    mask_url(&value)
                )
            },
        )?;
    }
    let digest: String = value
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect::<String>()
        .to_ascii_lowercase();
    if digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("The checksum format is invalid".into());
    }
    Ok(Some((alg, digest)))
}

fn get_url(args: &Map<String, Value>, check: bool) -> Result<ModuleResult, ModuleResult> {
    let url = arg_str(args, "url").unwrap_or_default();
    let dest_arg = arg_str(args, "dest").unwrap_or_default();
    let shown = mask_url(url);
    let mut r = super::ok(false);
    r.insert("checksum_dest".into(), Value::Null);
    r.insert("checksum_src".into(), Value::Null);
    r.insert("dest".into(), json!(dest_arg));
    r.insert("elapsed".into(), json!(0));
    r.insert("url".into(), json!(shown));
    let fail = |r: &ModuleResult, msg: String| {
        let mut f = r.clone();
        f.insert("failed".into(), json!(true));
        f.insert("msg".into(), json!(msg));
        f
    };
    check_url(url, &["http", "https", "file"]).map_err(|e| fail(&r, e))?;
    let mode = opt_mode(args).map_err(|e| fail(&r, e))?;
    let force = arg_bool(args, "force").unwrap_or(false);
    let timeout = timeout_arg(args, GET_URL_DEFAULT_TIMEOUT).map_err(|e| fail(&r, e))?;
    let max = match arg_i64(args, "max_bytes") {
        None => GET_URL_MAX_BYTES,
        Some(v) => u64::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
            fail(
                &r,
                format!("`max_bytes` must be a positive number, not {v}"),
            )
        })?,
    };
    let headers = headers_arg(args).map_err(|e| fail(&r, e))?;
    let agent = http_agent(&ClientOptions {
        timeout,
        connect_timeout: None,
        ca_file: arg_str(args, "ca_path"),
        ca_arg: "ca_path",
        validate_certs: arg_bool(args, "validate_certs").unwrap_or(true),
        max_redirects: MAX_REDIRECTS,
    })
    .map_err(|e| fail(&r, e))?;
    let fetch = Fetch {
        agent: &agent,
        headers: &headers,
        auth: arg_str(args, "url_username")
            .filter(|u| !u.is_empty())
            .map(|u| {
                (
                    u.to_string(),
                    arg_str(args, "url_password").unwrap_or("").to_string(),
                )
            }),
        force_basic_auth: arg_bool(args, "force_basic_auth").unwrap_or(false),
    };
    let checksum = checksum_arg(args, url, &fetch).map_err(|e| fail(&r, e))?;
    let mut dest = expand_user(dest_arg);
    let dest_is_dir = dest.is_dir();
    let mut since = None;
    if !dest_is_dir && fs::metadata(&dest).is_ok() {
        let matches = checksum
            .as_ref()
            .is_some_and(|(alg, want)| file_digest(&dest, *alg).as_deref() == Some(want));
        if !force && matches {
            let changed = match &mode {
                Some(m) => ensure_mode(&dest, m, check).map_err(|e| fail(&r, e))?,
                None => false,
            };
            r.insert("changed".into(), json!(changed));
            let msg = if changed {
                "file already exists but file attributes changed"
            } else {
                "file already exists"
            };
            r.insert("msg".into(), json!(msg));
            add_path_info(&mut r, &dest);
            return Ok(r);
        }
        if !force && checksum.is_none() {
            since = fs::metadata(&dest).and_then(|m| m.modified()).ok();
        }
    }
    if !dest_is_dir {
        let dir = parent_dir(&dest);
        if fs::metadata(&dir).is_err() {
            return Err(fail(
                &r,
                format!("Destination {} does not exist", dir.display()),
            ));
        }
    }
    let start = Instant::now();
    let is_http = strip_scheme(url, "file").is_none();
    let method = if check && is_http { "HEAD" } else { "GET" };
    let opened = match fetch.open(url, method, since) {
        Ok(o) => o,
        Err(OpenError::NotModified) => {
            let mut ok = super::ok(false);
            ok.insert("dest".into(), path_json(&dest));
            ok.insert("elapsed".into(), json!(start.elapsed().as_secs()));
            ok.insert("msg".into(), json!("HTTP Error 304: Not Modified"));
            ok.insert("status_code".into(), json!(304));
            ok.insert("url".into(), json!(shown));
            add_path_info(&mut ok, &dest);
            return Ok(ok);
        }
        Err(OpenError::Status(status, msg)) => {
            let mut f = fail(&r, "Request failed".into());
            f.remove("checksum_dest");
            f.remove("checksum_src");
            f.insert("status_code".into(), json!(status));
            f.insert("response".into(), json!(msg));
            f.insert("elapsed".into(), json!(start.elapsed().as_secs()));
            return Err(f);
        }
        Err(OpenError::Failed(msg)) => {
            let mut f = fail(&r, msg);
            f.remove("checksum_dest");
            f.remove("checksum_src");
            return Err(f);
        }
    };
    if dest_is_dir {
        let name = disposition_filename(opened.disposition.as_deref())
            .unwrap_or_else(|| url_filename(&opened.final_url));
        dest = dest.join(name);
        r.insert("dest".into(), path_json(&dest));
    }
    if fs::metadata(&dest).is_ok_and(|m| m.is_dir()) {
        return Err(fail(
            &r,
            format!("Destination {} is a directory", dest.display()),
        ));
    }
    let Opened {
        mut reader,
        expected_len,
        status,
        msg,
        ..
    } = opened;
    let keep = !check;
    let got = stream(
        &mut reader,
        &dest,
        keep,
        max,
        expected_len,
        checksum.as_ref().map(|(alg, _)| *alg),
    )
    .map_err(|e| fail(&r, e))?;
    r.insert("elapsed".into(), json!(start.elapsed().as_secs()));
    r.insert("checksum_src".into(), json!(got.sha1));
    let dest_sha1 = file_digest(&dest, Alg::Sha1);
    r.insert("checksum_dest".into(), json!(dest_sha1));
    let remove_tmp = |d: &Downloaded| {
        if let Some(t) = &d.tmp {
            let _ = fs::remove_file(t);
        }
    };
    if check {
        let changed = if is_http {
            // HEAD read no body: Ansible compares the SHA-1 of nothing with dest's.
            dest_sha1.as_deref() != Some(EMPTY_SHA1)
        } else {
            dest_sha1.as_deref() != Some(got.sha1.as_str())
        };
        r.insert("changed".into(), json!(changed));
        r.insert("msg".into(), json!(msg));
        return Ok(r);
    }
    if let Some((_, want)) = &checksum
        && got.digest.as_deref() != Some(want.as_str())
    {
        remove_tmp(&got);
        return Err(fail(
            &r,
            format!(
                "The checksum for {} did not match {want}; it was {}.",
                dest.display(),
                got.digest.clone().unwrap_or_default()
            ),
        ));
    }
    let mut changed = false;
    if dest_sha1.as_deref() != Some(got.sha1.as_str()) {
        let tmp = got.tmp.clone().unwrap_or_default();
        install_download(&tmp, &dest, mode.as_ref()).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            fail(&r, e)
        })?;
        changed = true;
    } else {
        remove_tmp(&got);
    }
    if let Some(m) = &mode {
        changed |= ensure_mode(&dest, m, false).map_err(|e| fail(&r, e))?;
    }
    r.insert("changed".into(), json!(changed));
    r.insert("md5sum".into(), json!(got.md5));
    r.insert("msg".into(), json!(msg));
    r.insert("status_code".into(), json!(status));
    add_path_info(&mut r, &dest);
    Ok(r)
}

/// SHA-1 of no bytes.
const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

/// Gives the downloaded temporary file dest's mode (or `mode`, or the default for a new file)
/// and owner, then renames it over dest.
fn install_download(tmp: &Path, dest: &Path, mode: Option<&Mode>) -> Result<(), String> {
    let existing = fs::metadata(dest).ok();
    let current = existing.as_ref().map(|m| m.mode() & 0o7777);
    let base = current.unwrap_or(0o666 & !current_umask());
    let final_mode = match mode {
        Some(m) => m.resolve(base, false)?,
        None => base,
    };
    if let Some(meta) = &existing {
        // Keeping the owner needs privileges; without them the agent's own owner stays.
        let _ = std::os::unix::fs::chown(tmp, Some(meta.uid()), Some(meta.gid()));
    }
    fs::set_permissions(tmp, Permissions::from_mode(final_mode))
        .map_err(|e| format!("cannot set the mode of {}: {}", tmp.display(), os_msg(&e)))?;
    rename_into_place(tmp, dest).map_err(|e| {
        format!(
            "failed to copy {} to {}: {}",
            tmp.display(),
            dest.display(),
            os_msg(&e)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::Call;
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PAYLOAD: &[u8] = b"payload\n";
    const PAYLOAD_SHA1: &str = "997e49bbf4ad5ee847d0e77aa30648c70c71323c";
    const PAYLOAD_SHA256: &str = "d4e4877bac978b7952f0d544fc52ebff5411d351d129f1f056fa43f11da9af2b";

    /// A plain HTTP server on 127.0.0.1 for one test (stopped with the test process):
    /// `/file.txt` (304 to `If-Modified-Since`), `/plain.txt` (ignores it), `/json`, `/echo`
    /// (returns the request body with its Content-Type), `/redirect` (302 to `/json`), `/auth`
    /// (Basic user:pass), `/sums` (a checksum file), `/short` (promises more than it sends);
    /// anything else is 404.
    struct Server {
        port: u16,
        hits: Arc<AtomicUsize>,
    }

    impl Server {
        fn start() -> Server {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let hits = Arc::new(AtomicUsize::new(0));
            let counter = hits.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(200) {
                    let Ok(mut stream) = stream else { continue };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request = String::new();
                    let _ = reader.read_line(&mut request);
                    let mut headers = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) <= 2 {
                            break;
                        }
                        if let Some((k, v)) = line.trim_end().split_once(':') {
                            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    };
                    let len: usize = header("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    let _ = reader.read_exact(&mut body);
                    let mut words = request.split_whitespace();
                    let method = words.next().unwrap_or("").to_string();
                    let path = words.next().unwrap_or("").to_string();
                    let send = |stream: &mut std::net::TcpStream,
                                status: &str,
                                extra: &str,
                                body: &[u8],
                                len: usize| {
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n"
                        );
                        let _ = stream.write_all(head.as_bytes());
                        if method != "HEAD" {
                            let _ = stream.write_all(body);
                        }
                    };
                    let sums = format!("{PAYLOAD_SHA256}  file.txt\n");
                    match path.as_str() {
                        "/file.txt" if header("if-modified-since").is_some() => {
                            send(&mut stream, "304 Not Modified", "", b"", 0);
                        }
                        "/file.txt" | "/plain.txt" => {
                            send(&mut stream, "200 OK", "", PAYLOAD, PAYLOAD.len());
                        }
                        "/json" => send(
                            &mut stream,
                            "200 OK",
                            "Content-Type: application/json\r\nSet-Cookie: id=7; Path=/\r\n",
                            b"{\"a\": 1}",
                            8,
                        ),
                        "/echo" => {
                            let ct = header("content-type").unwrap_or_default();
                            let extra = format!("Content-Type: {ct}\r\nX-Method: {method}\r\n");
                            send(&mut stream, "200 OK", &extra, &body, body.len());
                        }
                        "/redirect" => {
                            send(&mut stream, "302 Found", "Location: /json\r\n", b"moved", 5)
                        }
                        "/auth"
                            if header("authorization").as_deref() == Some("Basic dXNlcjpwYXNz") =>
                        {
                            send(&mut stream, "200 OK", "", b"secret", 6);
                        }
                        "/auth" => send(
                            &mut stream,
                            "401 Unauthorized",
                            "WWW-Authenticate: Basic realm=\"x\"\r\n",
                            b"",
                            0,
                        ),
                        "/sums" => send(&mut stream, "200 OK", "", sums.as_bytes(), sums.len()),
                        "/short" => send(&mut stream, "200 OK", "", b"pay", 100),
                        _ => send(&mut stream, "404 Not Found", "", b"nothing here", 12),
                    }
                }
            });
            Server { port, hits }
        }
        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn run(spec: &ModuleSpec, args: Value) -> ModuleResult {
        Call::default().run(spec, args)
    }
    fn check(spec: &ModuleSpec, args: Value) -> ModuleResult {
        Call {
            check: true,
            ..Call::default()
        }
        .run(spec, args)
    }
    fn changed(r: &ModuleResult) -> bool {
        r["changed"].as_bool().unwrap()
    }
    fn is_failed(r: &ModuleResult) -> bool {
        r.get("failed").and_then(Value::as_bool).unwrap_or(false)
    }
    fn msg(r: &ModuleResult) -> String {
        r.get("msg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }
    /// Only the named files are in `dir` (no temporary file left behind).
    fn only(dir: &Path, names: &[&str]) {
        let mut have: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        have.sort();
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(have, want);
    }

    #[test]
    fn get_url_downloads_then_is_ok_without_rewriting() {
        let srv = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("got.txt");
        for path in ["/file.txt", "/plain.txt"] {
            let _ = fs::remove_file(&dest);
            let args = json!({"url": srv.url(path), "dest": dest, "mode": "0640"});
            let r = run(&GET_URL, args.clone());
            assert!(changed(&r), "{r:?}");
            assert_eq!(fs::read(&dest).unwrap(), PAYLOAD);
            assert_eq!(mode_of(&dest), 0o640);
            assert_eq!(r["checksum_src"], json!(PAYLOAD_SHA1));
            assert_eq!(r["checksum_dest"], Value::Null);
            assert_eq!(r["status_code"], json!(200));
            assert_eq!(r["msg"], json!("OK (8 bytes)"));
            let inode = fs::metadata(&dest).unwrap().ino();
            // /file.txt answers 304 to If-Modified-Since; /plain.txt is downloaded and compared.
            let again = run(&GET_URL, args);
            assert!(!changed(&again) && !is_failed(&again), "{again:?}");
            assert_eq!(fs::metadata(&dest).unwrap().ino(), inode, "dest rewritten");
            only(dir.path(), &["got.txt"]);
        }
    }

    #[test]
    fn get_url_with_a_matching_checksum_does_not_download() {
        let srv = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let args = json!({"url": srv.url("/plain.txt"), "dest": dest,
            "checksum": format!("sha256:{PAYLOAD_SHA256}")});
        assert!(changed(&run(&GET_URL, args.clone())));
        let hits = srv.hits();
        let r = run(&GET_URL, args);
        assert!(!changed(&r));
        assert_eq!(msg(&r), "file already exists");
        assert_eq!(srv.hits(), hits, "downloaded again");
        // A checksum file: the URL's file name is looked up in it.
        let dest2 = dir.path().join("g");
        let r = run(
            &GET_URL,
            json!({"url": srv.url("/file.txt"), "dest": dest2,
                "checksum": format!("sha256:{}", srv.url("/sums"))}),
        );
        assert!(changed(&r), "{r:?}");
        let r = run(
            &GET_URL,
            json!({"url": srv.url("/plain.txt"), "dest": dir.path().join("h"),
                "checksum": format!("sha256:{}", srv.url("/sums"))}),
        );
        assert!(is_failed(&r));
        assert!(
            msg(&r).contains("Unable to find a checksum for file 'plain.txt'"),
            "{r:?}"
        );
    }

    #[test]
    fn get_url_refuses_a_wrong_checksum_and_leaves_nothing() {
        let srv = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bad.txt");
        let r = run(
            &GET_URL,
            json!({"url": srv.url("/plain.txt"), "dest": dest, "checksum": format!("sha256:{}", "0".repeat(64))}),
        );
        assert!(is_failed(&r));
        assert!(
            msg(&r).contains(&format!("it was {PAYLOAD_SHA256}")),
            "{r:?}"
        );
        only(dir.path(), &[]);
        for bad in ["sha256", "crc32:00", "sha256:zz"] {
            let r = run(
                &GET_URL,
                json!({"url": srv.url("/plain.txt"), "dest": dest, "checksum": bad}),
            );
            assert!(is_failed(&r), "{bad}");
        }
        only(dir.path(), &[]);
    }

    #[test]
    fn get_url_failures_leave_no_file() {
        let srv = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let r = run(&GET_URL, json!({"url": srv.url("/missing"), "dest": dest}));
        assert!(is_failed(&r));
        assert_eq!(msg(&r), "Request failed");
        assert_eq!(r["status_code"], json!(404));
        let r = run(&GET_URL, json!({"url": srv.url("/short"), "dest": dest}));
        assert!(is_failed(&r), "{r:?}");
        let r = run(
            &GET_URL,
            json!({"url": srv.url("/plain.txt"), "dest": dest, "max_bytes": 4}),
        );
        assert!(is_failed(&r));
        assert!(msg(&r).contains("max_bytes"), "{r:?}");
        let r = run(
            &GET_URL,
            json!({"url": "http://127.0.0.1:1/x", "dest": dest, "timeout": 5}),
        );
        assert!(is_failed(&r));
        assert!(
            msg(&r).starts_with("Request failed: <urlopen error"),
            "{r:?}"
        );
        let r = run(
            &GET_URL,
            json!({"url": srv.url("/plain.txt"), "dest": dir.path().join("no/x")}),
        );
        assert!(
            msg(&r).starts_with("Destination") && msg(&r).ends_with("does not exist"),
            "{r:?}"
        );
        let r = run(&GET_URL, json!({"url": "ftp://127.0.0.1/x", "dest": dest}));
        assert!(is_failed(&r));
        only(dir.path(), &[]);
    }

    #[test]
    fn get_url_file_urls_and_directory_dests() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.txt");
        fs::write(&src, PAYLOAD).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let args = json!({"url": format!("file://{}", src.display()), "dest": out});
        let r = run(&GET_URL, args.clone());
        assert!(changed(&r), "{r:?}");
        assert_eq!(r["status_code"], Value::Null);
        assert_eq!(r["dest"], json!(out.join("src.txt")));
        assert_eq!(fs::read(out.join("src.txt")).unwrap(), PAYLOAD);
        assert!(!changed(&run(&GET_URL, args)));
        let r = run(
            &GET_URL,
            json!({"url": format!("file://{}/none", dir.path().display()), "dest": out}),
        );
        assert!(is_failed(&r));
        assert!(msg(&r).contains("No such file or directory"), "{r:?}");
    }

    #[test]
    fn get_url_check_mode_writes_nothing() {
        let srv = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let r = check(
            &GET_URL,
            json!({"url": srv.url("/plain.txt"), "dest": dest}),
        );
        assert!(changed(&r) && !is_failed(&r), "{r:?}");
        only(dir.path(), &[]);
        let r = check(&GET_URL, json!({"url": srv.url("/missing"), "dest": dest}));
        assert!(is_failed(&r));
        // A file URL is read and compared: same content is no change.
        let src = dir.path().join("src");
        fs::write(&src, PAYLOAD).unwrap();
        fs::write(&dest, PAYLOAD).unwrap();
        let r = check(
            &GET_URL,
            json!({"url": format!("file://{}", src.display()), "dest": dest}),
        );
        assert!(!changed(&r), "{r:?}");
        fs::write(&dest, b"old").unwrap();
        let r = check(
            &GET_URL,
            json!({"url": format!("file://{}", src.display()), "dest": dest, "mode": "0600"}),
        );
        assert!(changed(&r));
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        only(dir.path(), &["f", "src"]);
    }

    #[test]
    fn uri_returns_status_content_json_and_headers() {
        let srv = Server::start();
        let r = run(
            &URI,
            json!({"url": srv.url("/json"), "return_content": true}),
        );
        assert!(!is_failed(&r), "{r:?}");
        assert_eq!(r["status"], json!(200));
        assert_eq!(r["json"], json!({"a": 1}));
        assert_eq!(r["content"], json!("{\"a\": 1}"));
        assert_eq!(r["content_type"], json!("application/json"));
        assert_eq!(r["content_length"], json!("8"));
        assert_eq!(r["msg"], json!("OK (8 bytes)"));
        assert_eq!(r["redirected"], json!(false));
        assert_eq!(r["cookies"], json!({"id": "7"}));
        assert!(!changed(&r));
        // JSON is parsed without return_content, content is not returned.
        let r = run(&URI, json!({"url": srv.url("/json")}));
        assert_eq!(r["json"], json!({"a": 1}));
        assert!(!r.contains_key("content"));
    }

    #[test]
    fn uri_fails_on_unexpected_statuses_and_no_answer() {
        let srv = Server::start();
        let r = run(&URI, json!({"url": srv.url("/missing")}));
        assert!(is_failed(&r));
        assert_eq!(r["status"], json!(404));
        assert_eq!(
            msg(&r),
            "Status code was 404 and not [200]: HTTP Error 404: Not Found"
        );
        let r = run(
            &URI,
            json!({"url": srv.url("/missing"), "status_code": [404, "200"]}),
        );
        assert!(!is_failed(&r), "{r:?}");
        assert_eq!(r["body"], json!("nothing here"));
        let r = run(&URI, json!({"url": "http://127.0.0.1:1/", "timeout": 5}));
        assert!(is_failed(&r));
        assert_eq!(r["status"], json!(-1));
        assert!(
            msg(&r).starts_with(
                "Status code was -1 and not [200]: Request failed: <urlopen error [Errno 111]"
            ),
            "{r:?}"
        );
        for bad in [
            json!({"url": srv.url("/"), "method": "GET POST"}),
            json!({"url": srv.url("/"), "status_code": ["x"]}),
            json!({"url": srv.url("/"), "timeout": 0}),
            json!({"url": "gopher://x/"}),
            json!({"url": srv.url("/"), "body": {"a": 1}}),
            json!({"url": srv.url("/"), "headers": {"a\nb": "x"}}),
        ] {
            assert!(is_failed(&run(&URI, bad.clone())), "{bad}");
        }
    }

    #[test]
    fn uri_redirects_follow_the_policy() {
        let srv = Server::start();
        let r = run(&URI, json!({"url": srv.url("/redirect")}));
        assert!(!is_failed(&r), "{r:?}");
        assert_eq!(r["redirected"], json!(true));
        assert_eq!(r["url"], json!(srv.url("/json")));
        let r = run(
            &URI,
            json!({"url": srv.url("/redirect"), "follow_redirects": "none"}),
        );
        assert!(is_failed(&r));
        assert_eq!(r["status"], json!(302));
        assert_eq!(r["location"], json!(srv.url("/json")));
        // safe: a POST is not redirected.
        let r = run(
            &URI,
            json!({"url": srv.url("/redirect"), "method": "POST", "status_code": 302}),
        );
        assert!(!is_failed(&r), "{r:?}");
    }

    #[test]
    fn uri_sends_bodies_and_credentials() {
        let srv = Server::start();
        let r = run(
            &URI,
            json!({"url": srv.url("/echo"), "method": "post", "body_format": "json",
                "body": {"x": [1, "a"]}, "return_content": true}),
        );
        assert_eq!(r["x_method"], json!("POST"));
        assert_eq!(r["json"], json!({"x": [1, "a"]}));
        assert_eq!(r["content"], json!("{\"x\": [1, \"a\"]}"));
        let r = run(
            &URI,
            json!({"url": srv.url("/echo"), "method": "PUT", "body_format": "form-urlencoded",
                "body": {"name": "a b&c", "v": [1, 2]}, "return_content": true}),
        );
        assert_eq!(r["content"], json!("name=a+b%26c&v=1&v=2"));
        assert_eq!(
            r["content_type"],
            json!("application/x-www-form-urlencoded")
        );
        assert_eq!(
            run(&URI, json!({"url": srv.url("/auth")}))["status"],
            json!(401)
        );
        for force in [true, false] {
            let r = run(
                &URI,
                json!({"url": srv.url("/auth"), "url_username": "user", "url_password": "pass",
                    "force_basic_auth": force, "return_content": true}),
            );
            assert_eq!(r["content"], json!("secret"), "{r:?}");
        }
    }

    #[test]
    fn uri_dest_creates_and_removes() {
        let srv = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("doc.json");
        let args = json!({"url": srv.url("/json"), "dest": dest, "mode": "0600"});
        let r = run(&URI, args.clone());
        assert!(changed(&r), "{r:?}");
        assert_eq!(fs::read(&dest).unwrap(), b"{\"a\": 1}");
        assert_eq!(mode_of(&dest), 0o600);
        assert!(!changed(&run(&URI, args)));
        let hits = srv.hits();
        let r = run(&URI, json!({"url": srv.url("/json"), "creates": dest}));
        assert!(!changed(&r));
        assert_eq!(
            r["stdout"],
            json!(format!("skipped, since '{}' exists", dest.display()))
        );
        let r = run(
            &URI,
            json!({"url": srv.url("/json"), "removes": dir.path().join("none")}),
        );
        assert!(r["stdout"].as_str().unwrap().ends_with("does not exist"));
        assert_eq!(srv.hits(), hits);
        only(dir.path(), &["doc.json"]);
    }

    #[test]
    fn helpers_match_ansible() {
        assert_eq!(url_filename("http://h/a/b.tgz?x=1"), "b.tgz");
        assert_eq!(url_filename("http://h/"), "index.html");
        assert_eq!(url_filename("http://h"), "index.html");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(mask_url("https://u:secret@h/x"), "https://u:********@h/x");
        assert_eq!(join_url("http://h:1/a/b", "c"), "http://h:1/a/c");
        assert_eq!(join_url("http://h:1/a/b", "/c"), "http://h:1/c");
        assert!(is_json_type("application/problem+json; charset=utf-8"));
        assert!(is_json_type("text/javascript"));
        assert!(!is_json_type("text/html"));
        let sums = "abc  other.tgz\ndef *a.tgz\nSHA256 (b.tgz) = 123\n";
        assert_eq!(
            digest_in_checksum_file(sums, "a.tgz").as_deref(),
            Some("def")
        );
        assert_eq!(
            digest_in_checksum_file(sums, "b.tgz").as_deref(),
            Some("123")
        );
        assert_eq!(
            digest_in_checksum_file("fff\n", "any").as_deref(),
            Some("fff")
        );
        assert_eq!(digest_in_checksum_file(sums, "c.tgz"), None);
        assert_eq!(
            disposition_filename(Some("attachment; filename=\"../x.tgz\"")).as_deref(),
            Some("x.tgz")
        );
        assert_eq!(percent_decode("/a%20b/%zz"), "/a b/%zz");
    }
}
