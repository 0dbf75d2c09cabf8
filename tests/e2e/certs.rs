//! `rampart certs init` checked with OpenSSL itself: the CA signs every certificate, each names
//! 127.0.0.1, keys are private, and a second run without `--force` changes nothing. Roles: the
//! controller's certificate serves and is a client, with the identity
//! `spiffe://rampart/controller`; an agent's only serves (OpenSSL refuses it for client use) and
//! names its host.

use std::process::Command;

use rampart_tests::rampart;

fn openssl(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn certs_init_makes_a_ca_and_certificates_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let run = rampart(&[
        "certs",
        "init",
        tls.to_str().unwrap(),
        "--agent",
        "web-1",
        "--agent",
        "web-2",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in ["controller", "agent-web-1", "agent-web-2"] {
        let pem = format!("{name}.pem");
        let agent = name.strip_prefix("agent-");
        // Signed by the CA for serving; for client use only the controller's.
        let out = openssl(
            &["verify", "-CAfile", "ca.pem", "-purpose", "sslserver", &pem],
            &tls,
        );
        assert!(out.contains(": OK"), "{name} sslserver: {out}");
        let client = Command::new("openssl")
            .args(["verify", "-CAfile", "ca.pem", "-purpose", "sslclient", &pem])
            .current_dir(&tls)
            .output()
            .unwrap();
        assert_eq!(
            client.status.success(),
            agent.is_none(),
            "{name} for client use: {}",
            String::from_utf8_lossy(&client.stdout)
        );
        let text = openssl(&["x509", "-in", &pem, "-noout", "-text"], &tls);
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("DNS:localhost"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        match agent {
            None => {
                assert!(text.contains("URI:spiffe://rampart/controller"), "{text}");
                assert!(text.contains("TLS Web Client Authentication"), "{text}");
            }
            Some(host) => {
                assert!(text.contains(&format!("DNS:{host}")), "{text}");
                assert!(
                    text.contains(&format!("URI:spiffe://rampart/agent/{host}")),
                    "{text}"
                );
                assert!(!text.contains("TLS Web Client Authentication"), "{text}");
            }
        }
        // The key matches the certificate.
        let cert_key = openssl(&["x509", "-in", &pem, "-noout", "-pubkey"], &tls);
        let key = openssl(&["pkey", "-in", &format!("{name}.key"), "-pubout"], &tls);
        assert_eq!(cert_key, key, "{name}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tls.join(format!("{name}.key")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{name}.key");
    }
    let ca = openssl(&["x509", "-in", "ca.pem", "-noout", "-text"], &tls);
    assert!(ca.contains("CA:TRUE"), "{ca}");
    // A certificate from another CA does not verify against this one.
    let other = dir.path().join("other");
    assert_eq!(rampart(&["certs", "init", other.to_str().unwrap()]).code, 0);
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(tls.join("ca.pem"))
        .arg(other.join("agent-agent.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a foreign certificate verified");

    // Again without --force: refused, nothing changed.
    let before = std::fs::read(tls.join("ca.pem")).unwrap();
    let again = rampart(&["certs", "init", tls.to_str().unwrap()]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), before);
}
