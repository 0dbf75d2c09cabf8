//! Mutual TLS between the controller, the CLI and agents: the one place that loads PEM files into
//! tonic TLS configurations (rustls with the ring provider).
//!
//! Every file is read and checked when the configuration is built, so a wrong path or a file of
//! the wrong kind stops the process at start-up with a message naming the file, instead of
//! failing the first connection. Certificates and keys are also handed to rustls once at load
//! time (a key that does not belong to its certificate is refused here too).
//!
//! Several CA files (two during a rotation) are concatenated into one PEM bundle: tonic adds
//! every certificate of a multi-certificate PEM to the root store (`pem_reader_iter` +
//! `RootCertStore::add_parsable_certificates`), so peers signed by any of them are trusted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped (both sides).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// PEM files of one side of a mutual-TLS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This side's certificate (PEM; may hold the chain after the leaf).
    pub cert: PathBuf,
    /// This side's private key (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted).
    pub key: PathBuf,
    /// CAs trusted to sign the peer's certificate: one, or two during a rotation.
    pub ca: Vec<PathBuf>,
}

impl TlsFiles {
    /// From command-line flags: all three given (`Some`), none given (`None`), or an error that
    /// names the missing flags.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Vec<PathBuf>,
    ) -> Result<Option<TlsFiles>, String> {
        match (cert, key, ca.is_empty()) {
            (None, None, true) => Ok(None),
            (Some(cert), Some(key), false) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, no_ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (no_ca, "--tls-ca"),
                ]
                .into_iter()
                .filter_map(|(m, flag)| m.then_some(flag))
                .collect();
                Err(format!(
                    "mutual TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                    missing.join(", ")
                ))
            }
        }
    }
}

/// Agent side (and controller's agent-facing use): serve with `files.cert`/`key`, require a client
/// certificate signed by one of `files.ca`.
pub fn server_mutual(files: &TlsFiles) -> Result<ServerTlsConfig, String> {
    let identity = load_identity(&files.cert, &files.key)?;
    let cas = load_cas(&files.ca)?;
    check_server(
        &ServerTlsConfig::new().identity(identity.clone()),
        &files.cert,
        &files.key,
    )?;
    // Each CA alone, so a CA rustls cannot use is named (a bundle would silently skip it).
    for (path, pem) in files.ca.iter().zip(&cas) {
        let cfg = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(pem));
        Server::builder()
            .tls_config(cfg)
            .map_err(|e| format!("TLS CA certificate {}: {}", path.display(), chain(&e)))?;
    }
    let cfg = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(cas.concat()))
        .timeout(HANDSHAKE_TIMEOUT);
    check_server(&cfg, &files.cert, &files.key)?;
    Ok(cfg)
}

/// Server side without client certificates (the controller's CI-facing API: clients use bearer
/// tokens).
pub fn server_only(cert: &Path, key: &Path) -> Result<ServerTlsConfig, String> {
    let cfg = ServerTlsConfig::new()
        .identity(load_identity(cert, key)?)
        .timeout(HANDSHAKE_TIMEOUT);
    check_server(&cfg, cert, key)?;
    Ok(cfg)
}

/// Client side presenting `files.cert`/`key` and verifying the server against `files.ca`.
pub fn client_mutual(files: &TlsFiles) -> Result<ClientTlsConfig, String> {
    let identity = load_identity(&files.cert, &files.key)?;
    let cfg = client_ca_only(&files.ca)?.identity(identity);
    Endpoint::from_static("https://localhost")
        .tls_config(cfg.clone())
        .map_err(|e| {
            format!(
                "TLS certificate {} with key {}: {}",
                files.cert.display(),
                files.key.display(),
                chain(&e)
            )
        })?;
    Ok(cfg)
}

/// Client side verifying the server against `ca` only (the CLI calling the controller).
pub fn client_ca_only(ca: &[PathBuf]) -> Result<ClientTlsConfig, String> {
    let cas = load_cas(ca)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cas.concat()))
        .timeout(HANDSHAKE_TIMEOUT))
}

/// Builds the rustls server configuration once, so a key that does not match its certificate
/// (or that rustls cannot use) fails now.
fn check_server(cfg: &ServerTlsConfig, cert: &Path, key: &Path) -> Result<(), String> {
    Server::builder()
        .tls_config(cfg.clone())
        .map(drop)
        .map_err(|e| {
            format!(
                "TLS certificate {} with key {}: {}",
                cert.display(),
                key.display(),
                chain(&e)
            )
        })
}

/// An error and its sources, `: `-separated (tonic's own message is only "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    if format!("{e:?}").contains("KeyMismatch") {
        return "the private key does not belong to the certificate".into();
    }
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn load_identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    let cert_pem = load_certificates(cert, "certificate")?;
    let key_pem = load_key(key)?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// Every CA file's PEM text, each ending in a newline (ready to concatenate).
fn load_cas(ca: &[PathBuf]) -> Result<Vec<String>, String> {
    if ca.is_empty() {
        return Err("no CA certificate file given: pass at least one --tls-ca FILE".into());
    }
    ca.iter()
        .map(|p| {
            let mut pem = load_certificates(p, "CA certificate")?;
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            Ok(pem)
        })
        .collect()
}

/// A PEM file that holds at least one `CERTIFICATE`.
fn load_certificates(path: &Path, role: &str) -> Result<String, String> {
    let text = read_pem(path, role)?;
    let blocks = pem_blocks(&text).map_err(|e| format!("TLS {role} {}: {e}", path.display()))?;
    if !blocks.iter().any(|b| b.label == "CERTIFICATE") {
        let hint = if blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY")) {
            ": is it the key file?"
        } else {
            ""
        };
        return Err(format!(
            "TLS {role} {}: no certificate in it (no -----BEGIN CERTIFICATE----- block; {}{hint})",
            path.display(),
            describe(&blocks)
        ));
    }
    Ok(text)
}

/// A PEM file that holds an unencrypted private key.
fn load_key(path: &Path) -> Result<String, String> {
    let role = "private key";
    let text = read_pem(path, role)?;
    let blocks = pem_blocks(&text).map_err(|e| format!("TLS {role} {}: {e}", path.display()))?;
    if blocks.iter().any(|b| b.label == "ENCRYPTED PRIVATE KEY") {
        return Err(format!(
            "TLS {role} {}: the key is encrypted, which is not supported; write a decrypted copy \
             (`openssl pkey -in KEY -out KEY.plain`) readable only by this service",
            path.display()
        ));
    }
    if !blocks.iter().any(|b| {
        matches!(
            b.label.as_str(),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
        )
    }) {
        let hint = if blocks.iter().any(|b| b.label == "CERTIFICATE") {
            ": is it the certificate file?"
        } else {
            ""
        };
        return Err(format!(
            "TLS {role} {}: no private key in it (no -----BEGIN PRIVATE KEY----- block; {}{hint})",
            path.display(),
            describe(&blocks)
        ));
    }
    Ok(text)
}

fn read_pem(path: &Path, role: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("TLS {role} {}: no such file", path.display())
        }
        _ => format!("TLS {role} {}: cannot read it: {e}", path.display()),
    })?;
    String::from_utf8(bytes).map_err(|_| {
        format!(
            "TLS {role} {}: not PEM text (binary DER? convert it with `openssl x509 -inform der` \
             or `openssl pkey -inform der`)",
            path.display()
        )
    })
}

/// What a file holds, for error messages.
fn describe(blocks: &[PemBlock]) -> String {
    if blocks.is_empty() {
        return "it holds no PEM block at all".into();
    }
    let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
    format!("it holds only {}", labels.join(", "))
}

/// One well-formed `-----BEGIN LABEL-----` ... `-----END LABEL-----` block (rustls decodes it
/// again when the configuration is built).
#[derive(Debug)]
struct PemBlock {
    label: String,
}

/// The PEM blocks of `text` (text between blocks is ignored, as OpenSSL does); an error for an
/// unterminated block, bad base64, or a body that is not DER.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let line = line.trim();
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for (n, line) in lines.by_ref() {
            let line = line.trim();
            if line == end {
                closed = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(format!(
                    "line {}: `{line}` inside the {label} block (expected `{end}`)",
                    n + 1
                ));
            }
            if line.contains(':') {
                // RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`): a legacy encrypted key.
                return Err(format!(
                    "the {label} block has headers (line {}): encrypted PEM is not supported",
                    n + 1
                ));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(format!("the {label} block has no `{end}` line"));
        }
        let der = base64_decode(&body).ok_or_else(|| format!("the {label} block is not base64"))?;
        // Certificates and keys are DER SEQUENCEs.
        if der.first() != Some(&0x30) || der.len() < 2 {
            return Err(format!("the {label} block does not hold DER data"));
        }
        blocks.push(PemBlock {
            label: label.to_string(),
        });
    }
    Ok(blocks)
}

/// Standard base64 with optional `=` padding; `None` for any other character.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet cannot be valid base64.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway quick-start leaf (`rampart certs init`), its key, its CA, and an unrelated key;
    /// trusted nowhere, only parsed here.
    const CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIBujCCAWGgAwIBAgIUd9MGXiyeh5VTsq+fsrYxExm63EkwCgYIKoZIzj0EAwIw
PzEfMB0GA1UEAwwWUmFtcGFydCBxdWljay1zdGFydCBDQTEcMBoGA1UECgwTUmFt
cGFydCBxdWljayBzdGFydDAeFw0yNjExMjYwMDAwMDBaFw0zNjExMjQwMDAwMDBa
MCoxCjAIBgNVBAMMAXgxHDAaBgNVBAoME1JhbXBhcnQgcXVpY2sgc3RhcnQwWTAT
BgcqhkjOPQIBBggqhkjOPQMBBwNCAATNKPytehMbXj6hooKoQAO4rFMChZ49fp4B
sA5qZXzutTX9Pd/HX3e28Cl3RG8OZQd1LgHIe31yB+0bJ8qjjqeIo1AwTjAdBgNV
HREEFjAUgglsb2NhbGhvc3SHBH8AAAGCAXgwDgYDVR0PAQH/BAQDAgWgMB0GA1Ud
JQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAKBggqhkjOPQQDAgNHADBEAiASTquQ
lzmoXv9ApVCYmTuqgzhDdHtngwHkZTaqVd9NEAIgD2E9EHujJA35wXg7SLBGzXDL
nO9jGAzojtww1rq9T7c=
-----END CERTIFICATE-----
";
    const KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeeffAkeUmdTvs7+t
8f7huCNw9hAeGHMDTmcNIYFEKaqhRANCAATNKPytehMbXj6hooKoQAO4rFMChZ49
fp4BsA5qZXzutTX9Pd/HX3e28Cl3RG8OZQd1LgHIe31yB+0bJ8qjjqeI
-----END PRIVATE KEY-----
";
    const CA: &str = r"-----BEGIN CERTIFICATE-----
MIIBxjCCAWugAwIBAgIUHnjoC5vLsTizKZScY4IeTj8puucwCgYIKoZIzj0EAwIw
PzEfMB0GA1UEAwwWUmFtcGFydCBxdWljay1zdGFydCBDQTEcMBoGA1UECgwTUmFt
cGFydCBxdWljayBzdGFydDAeFw0yNjExMjYwMDAwMDBaFw0zNjExMjQwMDAwMDBa
MD8xHzAdBgNVBAMMFlJhbXBhcnQgcXVpY2stc3RhcnQgQ0ExHDAaBgNVBAoME1Jh
bXBhcnQgcXVpY2sgc3RhcnQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATrba5I
nwSNYD/jDNCJxGKiEAKEMzYRFOuASjowLkKvePPHO/JHxgxFk+M9LPplvE0RXPOa
TOZz9N1beBbY9aRoo0UwQzAOBgNVHQ8BAf8EBAMCAYYwHQYDVR0OBBYEFKVjDtDm
sOKWRBbXEgb+e7+Fsx0PMBIGA1UdEwEB/wQIMAYBAf8CAQAwCgYIKoZIzj0EAwID
SQAwRgIhAL87LtySi3x5wKuNAHDDCRYzxI/xbx47vv9yBVaDA+m8AiEAyn5clb6A
9EjqB052DvplxOGIb0WfvmNULQR9EVPC90Y=
-----END CERTIFICATE-----
";
    const OTHER_KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLlIUN3SeDN9PMKR7
0RAkA42b8Fo/kPPIIZAQ3UM5U1yhRANCAASwLlrlkX1dh1d9C4c8emFHqK/U6j72
YB1XlK/Yg27aP+YH3etgh8969ETtGl67ZBxSpRhhmvUusMyHNQDcoy08
-----END PRIVATE KEY-----
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: write(dir, "leaf.pem", CERT),
            key: write(dir, "leaf.key", KEY),
            ca: vec![write(dir, "ca.pem", CA)],
        }
    }

    #[test]
    fn tls_configs_load_from_good_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        server_mutual(&f).unwrap();
        server_only(&f.cert, &f.key).unwrap();
        client_mutual(&f).unwrap();
        client_ca_only(&f.ca).unwrap();
        // Rotation: two CA files at once.
        let mut two = f.clone();
        two.ca.push(write(dir.path(), "ca2.pem", CA));
        server_mutual(&two).unwrap();
        client_mutual(&two).unwrap();
    }

    #[test]
    fn tls_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path());
        f.cert = dir.path().join("nope.pem");
        let e = server_mutual(&f).unwrap_err();
        assert!(e.contains("nope.pem") && e.contains("no such file"), "{e}");
        let mut f = files(dir.path());
        f.ca.push(dir.path().join("ca-next.pem"));
        let e = client_mutual(&f).unwrap_err();
        assert!(
            e.contains("CA certificate") && e.contains("ca-next.pem") && e.contains("no such file"),
            "{e}"
        );
    }

    #[test]
    fn tls_key_file_passed_as_cert_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path());
        f.cert = f.key.clone();
        let e = server_mutual(&f).unwrap_err();
        assert!(
            e.contains("leaf.key") && e.contains("no certificate in it") && e.contains("key file"),
            "{e}"
        );
        let mut f = files(dir.path());
        f.ca = vec![f.key.clone()];
        let e = client_ca_only(&f.ca).unwrap_err();
        assert!(
            e.contains("leaf.key") && e.contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn tls_cert_file_passed_as_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path());
        f.key = f.cert.clone();
        let e = client_mutual(&f).unwrap_err();
        assert!(
            e.contains("leaf.pem")
                && e.contains("no private key in it")
                && e.contains("certificate file"),
            "{e}"
        );
    }

    #[test]
    fn tls_garbage_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path());
        f.cert = write(dir.path(), "empty.pem", "");
        let e = server_only(&f.cert, &f.key).unwrap_err();
        assert!(e.contains("empty.pem") && e.contains("no PEM block"), "{e}");
        f.cert = write(
            dir.path(),
            "torn.pem",
            &CERT[..CERT.find("-----END").unwrap()],
        );
        let e = server_only(&f.cert, &f.key).unwrap_err();
        assert!(e.contains("torn.pem") && e.contains("no `-----END"), "{e}");
        f.cert = write(
            dir.path(),
            "bad64.pem",
            "-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n",
        );
        let e = server_only(&f.cert, &f.key).unwrap_err();
        assert!(e.contains("bad64.pem") && e.contains("not base64"), "{e}");
        f.cert = {
            let p = dir.path().join("der.pem");
            std::fs::write(&p, [0x30u8, 0x82, 0xff, 0xfe]).unwrap();
            p
        };
        let e = server_only(&f.cert, &f.key).unwrap_err();
        assert!(e.contains("der.pem") && e.contains("not PEM text"), "{e}");
        let e = client_ca_only(&[]).unwrap_err();
        assert!(e.contains("--tls-ca"), "{e}");
    }

    #[test]
    fn tls_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path());
        f.key = write(dir.path(), "other.key", OTHER_KEY);
        let e = server_mutual(&f).unwrap_err();
        let want = "does not belong to the certificate";
        assert!(
            e.contains("leaf.pem") && e.contains("other.key") && e.contains(want),
            "{e}"
        );
        let e = client_mutual(&f).unwrap_err();
        assert!(
            e.contains("leaf.pem") && e.contains("other.key") && e.contains(want),
            "{e}"
        );
    }

    #[test]
    fn tls_flags_all_or_none() {
        assert_eq!(TlsFiles::from_flags(None, None, vec![]), Ok(None));
        let e = TlsFiles::from_flags(Some("c".into()), None, vec![]).unwrap_err();
        assert!(e.contains("--tls-key") && e.contains("--tls-ca"), "{e}");
        assert!(!e.ends_with("--tls-cert"), "{e}");
        let f = TlsFiles::from_flags(Some("c".into()), Some("k".into()), vec!["a".into()])
            .unwrap()
            .unwrap();
        assert_eq!(f.ca, vec![PathBuf::from("a")]);
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert!(base64_decode("T").is_none());
        assert!(base64_decode("T*==").is_none());
    }
}
