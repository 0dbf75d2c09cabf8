//! Who is on the other end of a mutual-TLS connection: the identities a certificate carries in
//! its subject alternative name (SAN), and the agent's list of client identities it trusts.
//!
//! A CA signing a certificate says only "this is one of ours"; the roles come from the
//! certificate itself. `rampart certs init` writes:
//!
//! | certificate | identity (SAN) | extended key usage |
//! |---|---|---|
//! | `controller.pem` | URI [`CONTROLLER_IDENTITY`] (`spiffe://rampart/controller`), DNS `controller`, `localhost`, IP `127.0.0.1` | serverAuth (the CI API) + clientAuth (calling agents) |
//! | `agent-NAME.pem` | DNS `NAME` (what the controller checks), URI `spiffe://rampart/agent/NAME`, DNS `localhost`, IP `127.0.0.1` | serverAuth only |
//!
//! - **The agent** lets in a client only when the TLS handshake succeeded (a trusted CA signed
//!   it, and rustls's client verifier requires the clientAuth usage whenever the certificate
//!   lists usages, so an agent's certificate cannot be presented as a client at all) **and** one
//!   of its identities is trusted ([`Trusted`], `--controller-identity`, default
//!   [`CONTROLLER_IDENTITY`]); anything else is `PERMISSION_DENIED`.
//! - **The controller** connecting to inventory host `H` verifies, as TLS does for any server
//!   name, that the agent's certificate carries `H` as a DNS SAN (or as an IP SAN when `H` is an
//!   IP address). A certificate of another host is refused, whatever address served it.
//!
//! An identity is a SAN value compared as written: a URI SAN exactly, a DNS SAN ignoring ASCII
//! case. Certificates from another PKI work when they carry such a name: put
//! `spiffe://rampart/controller` (or a name given to `--controller-identity`) in the
//! controller's certificate and the inventory host name in each agent's.

use x509_parser::extensions::GeneralName;

/// The identity `rampart certs init` gives the controller's certificate (a URI SAN), and the one
/// an agent trusts when given no `--controller-identity`.
pub const CONTROLLER_IDENTITY: &str = "spiffe://rampart/controller";

/// The URI SAN `rampart certs init` gives the agent certificate of host `name`.
pub fn agent_identity(name: &str) -> String {
    format!("spiffe://rampart/agent/{name}")
}

/// The longest identity accepted in configuration, and the longest shown in a message or log.
pub const MAX_IDENTITY: usize = 255;
/// At most this many trusted identities (a few controllers, a rotation).
pub const MAX_TRUSTED: usize = 16;
/// At most this many of a refused certificate's identities are shown.
const SHOWN: usize = 4;
/// Each shown identity is cut to this many characters.
const SHOWN_LEN: usize = 96;

/// One name of a certificate's subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// A URI (`spiffe://rampart/controller`).
    Uri(String),
    /// A DNS name.
    Dns(String),
    /// An IP address (v4 or v6), as text.
    Ip(String),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Uri(s) => write!(f, "URI:{s}"),
            San::Dns(s) => write!(f, "DNS:{s}"),
            San::Ip(s) => write!(f, "IP:{s}"),
        }
    }
}

/// The URI, DNS and IP names in the SAN of a DER certificate (other kinds are skipped); an error
/// when the certificate cannot be parsed.
pub fn sans(der: &[u8]) -> Result<Vec<San>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let Some(ext) = cert
        .subject_alternative_name()
        .map_err(|e| format!("the certificate's subject alternative name: {e}"))?
    else {
        return Ok(Vec::new());
    };
    Ok(ext
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(s) => Some(San::Uri(s.to_string())),
            GeneralName::DNSName(s) => Some(San::Dns(s.to_string())),
            GeneralName::IPAddress(b) => ip_text(b).map(San::Ip),
            _ => None,
        })
        .collect())
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(a).to_string())
        }
        _ => None,
    }
}

/// The client identities an agent trusts (`--controller-identity`, repeatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    identities: Vec<String>,
}

impl Default for Trusted {
    /// Only [`CONTROLLER_IDENTITY`].
    fn default() -> Self {
        Trusted {
            identities: vec![CONTROLLER_IDENTITY.to_string()],
        }
    }
}

impl Trusted {
    /// The identities as configured; none given means the default ([`CONTROLLER_IDENTITY`]).
    /// Each must be non-empty, at most [`MAX_IDENTITY`] bytes, without spaces or control
    /// characters.
    pub fn new(identities: Vec<String>) -> Result<Trusted, String> {
        if identities.is_empty() {
            return Ok(Trusted::default());
        }
        if identities.len() > MAX_TRUSTED {
            return Err(format!(
                "{} --controller-identity values (controller_identity in the config): at most \
                 {MAX_TRUSTED} are allowed",
                identities.len()
            ));
        }
        for id in &identities {
            if id.is_empty()
                || id.len() > MAX_IDENTITY
                || id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "--controller-identity (controller_identity in the config) {:?} is not an \
                     identity: give a subject alternative name of the controller's certificate \
                     (a URI such as {CONTROLLER_IDENTITY} or a DNS name; at most {MAX_IDENTITY} \
                     bytes, no spaces)",
                    shorten(id)
                ));
            }
        }
        Ok(Trusted { identities })
    }

    /// The trusted identities.
    pub fn identities(&self) -> &[String] {
        &self.identities
    }

    /// Whether one of `sans` is trusted: a URI SAN equal to a trusted identity, or a DNS SAN
    /// equal to one ignoring ASCII case. IP SANs never identify a client.
    pub fn admits(&self, sans: &[San]) -> bool {
        sans.iter().any(|san| {
            self.identities.iter().any(|id| match san {
                San::Uri(u) => u == id,
                San::Dns(d) => d.eq_ignore_ascii_case(id),
                San::Ip(_) => false,
            })
        })
    }
}

/// A refused certificate's identities for a message or a log line: at most a few, each cut
/// short, so a hostile certificate cannot flood either (`(none)` when it has none).
pub fn describe(sans: &[San]) -> String {
    if sans.is_empty() {
        return "(none)".into();
    }
    let mut shown: Vec<String> = sans
        .iter()
        .take(SHOWN)
        .map(|s| shorten(&s.to_string()))
        .collect();
    if sans.len() > SHOWN {
        shown.push(format!("and {} more", sans.len() - SHOWN));
    }
    shown.join(", ")
}

/// `s` cut to [`SHOWN_LEN`] characters, control characters replaced.
fn shorten(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(SHOWN_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > SHOWN_LEN {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf of the previous `rampart certs init` (DNS `x`, `localhost`, IP 127.0.0.1; both
    /// usages), the same as `tls.rs`'s tests use.
    const OLD_LEAF: &str = "MIIBujCCAWGgAwIBAgIUd9MGXiyeh5VTsq+fsrYxExm63EkwCgYIKoZIzj0EAwIw\
        PzEfMB0GA1UEAwwWUmFtcGFydCBxdWljay1zdGFydCBDQTEcMBoGA1UECgwTUmFt\
        cGFydCBxdWljayBzdGFydDAeFw0yNjExMjYwMDAwMDBaFw0zNjExMjQwMDAwMDBa\
        MCoxCjAIBgNVBAMMAXgxHDAaBgNVBAoME1JhbXBhcnQgcXVpY2sgc3RhcnQwWTAT\
        BgcqhkjOPQIBBggqhkjOPQMBBwNCAATNKPytehMbXj6hooKoQAO4rFMChZ49fp4B\
        sA5qZXzutTX9Pd/HX3e28Cl3RG8OZQd1LgHIe31yB+0bJ8qjjqeIo1AwTjAdBgNV\
        HREEFjAUgglsb2NhbGhvc3SHBH8AAAGCAXgwDgYDVR0PAQH/BAQDAgWgMB0GA1Ud\
        JQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAKBggqhkjOPQQDAgNHADBEAiASTquQ\
        lzmoXv9ApVCYmTuqgzhDdHtngwHkZTaqVd9NEAIgD2E9EHujJA35wXg7SLBGzXDL\
        nO9jGAzojtww1rq9T7c=";

    fn der(b64: &str) -> Vec<u8> {
        crate::tls::base64_decode(b64).expect("base64")
    }

    #[test]
    fn sans_of_a_certificate() {
        let sans = sans(&der(OLD_LEAF)).unwrap();
        assert_eq!(
            sans,
            vec![
                San::Dns("localhost".into()),
                San::Ip("127.0.0.1".into()),
                San::Dns("x".into()),
            ]
        );
        assert!(super::sans(b"\x30\x03\x02\x01\x00").is_err());
        assert!(super::sans(b"").is_err());
    }

    #[test]
    fn trust_matches_uri_exactly_and_dns_ignoring_case() {
        let t = Trusted::default();
        assert_eq!(t.identities(), [CONTROLLER_IDENTITY]);
        assert!(t.admits(&[San::Uri(CONTROLLER_IDENTITY.into())]));
        assert!(!t.admits(&[San::Uri("spiffe://rampart/controller/x".into())]));
        assert!(!t.admits(&[San::Uri("SPIFFE://rampart/controller".into())]));
        assert!(!t.admits(&[San::Uri(agent_identity("web2"))]));
        assert!(!t.admits(&[]));
        let t = Trusted::new(vec!["ci.example.com".into(), "spiffe://x/y".into()]).unwrap();
        assert!(t.admits(&[San::Dns("CI.example.com".into())]));
        assert!(t.admits(&[San::Dns("a".into()), San::Uri("spiffe://x/y".into())]));
        assert!(!t.admits(&[San::Ip("ci.example.com".into())]));
        assert!(!t.admits(&[San::Uri(CONTROLLER_IDENTITY.into())]));
        assert_eq!(Trusted::new(vec![]).unwrap(), Trusted::default());
    }

    #[test]
    fn bad_configured_identities_are_refused() {
        for bad in ["", "a b", "x\ny", &"a".repeat(MAX_IDENTITY + 1)] {
            let e = Trusted::new(vec![bad.to_string()]).unwrap_err();
            assert!(e.contains("--controller-identity"), "{e}");
        }
        assert!(Trusted::new(vec!["a".repeat(MAX_IDENTITY)]).is_ok());
        let many: Vec<String> = (0..=MAX_TRUSTED)
            .map(|i| format!("spiffe://x/{i}"))
            .collect();
        assert!(Trusted::new(many[1..].to_vec()).is_ok());
        let e = Trusted::new(many).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }

    #[test]
    fn described_identities_are_bounded() {
        assert_eq!(describe(&[]), "(none)");
        let long = San::Uri(format!("spiffe://{}", "a".repeat(1000)));
        let d = describe(&[long]);
        assert!(
            d.chars().count() <= SHOWN_LEN + 1 && d.ends_with('…'),
            "{d}"
        );
        let many: Vec<San> = (0..100).map(|i| San::Dns(format!("h{i}\n"))).collect();
        let d = describe(&many);
        assert_eq!(d, "DNS:h0?, DNS:h1?, DNS:h2?, DNS:h3?, and 96 more");
    }
}
