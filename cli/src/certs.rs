//! `rampart certs init DIR`: a private CA, a controller certificate and agent certificates for a
//! quick start with mutual TLS, each with its role and identity (see [`rampart_rpc::identity`]).
//!
//! Output in DIR: `ca.pem` + `ca.key`, `controller.pem` + `controller.key`, and
//! `agent-<name>.pem` + `agent-<name>.key` per agent. Keys are ECDSA P-256 (ring), written 0600.
//! Roles: the controller's certificate serves (the CI API) and is a client (of the agents), with
//! the identity `spiffe://rampart/controller` (URI SAN) that agents trust by default; an agent's
//! certificate only serves, and names its host (DNS SAN `<name>`, which the controller checks
//! against the inventory, and URI SAN `spiffe://rampart/agent/<name>`), so it cannot call
//! another agent. Every leaf also names `localhost` and `127.0.0.1`. Nothing is overwritten
//! unless `force`: the files are made in a temp dir inside DIR and moved in only when all of
//! them are ready.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rampart_rpc::identity::{CONTROLLER_IDENTITY, agent_identity};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

/// Days a quick-start certificate is valid by default.
pub const DEFAULT_DAYS: u32 = 825;

/// What `certs init` should make.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Where the files go.
    pub dir: PathBuf,
    /// Agent names (one certificate each).
    pub agents: Vec<String>,
    /// Validity in days.
    pub days: u32,
    /// Replace existing files.
    pub force: bool,
}

/// The civil date `days` after 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Today's date plus `offset` days.
fn date(offset: i64) -> (i32, u8, u8) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 86_400) as i64);
    civil_from_days(today + offset)
}

fn params(names: Vec<String>, common_name: &str, days: u32) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(names).map_err(|e| format!("certificate names: {e}"))?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.distinguished_name
        .push(DnType::OrganizationName, "Rampart quick start");
    // From yesterday, so a clock a little behind still accepts it.
    let (y, m, d) = date(-1);
    p.not_before = date_time_ymd(y, m, d);
    let (y, m, d) = date(i64::from(days));
    p.not_after = date_time_ymd(y, m, d);
    Ok(p)
}

/// A leaf certificate to make: its file stem, host name, identity (URI SAN) and usages.
struct Leaf {
    file: String,
    name: String,
    uri: String,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

/// A file to write: its name and content; keys are private.
struct Output {
    name: String,
    text: String,
    private: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
}

/// Makes the CA and the certificates; returns the files written.
pub fn init(opts: &InitOptions) -> Result<Vec<PathBuf>, String> {
    if opts.days == 0 || opts.days > 3650 {
        return Err(format!("--days {} is out of range (1 to 3650)", opts.days));
    }
    let mut agents = opts.agents.clone();
    if agents.is_empty() {
        agents.push("agent".into());
    }
    if let Some(bad) = agents.iter().find(|a| !valid_name(a)) {
        return Err(format!(
            "agent name {bad:?} is not a host name (letters, digits, '-' and '.')"
        ));
    }
    let mut files = Vec::new();
    // The CA.
    let mut ca_params = params(Vec::new(), "Rampart quick-start CA", opts.days)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(|e| format!("generating the CA key: {e}"))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| format!("signing the CA: {e}"))?;
    files.push(Output {
        name: "ca.pem".into(),
        text: ca_cert.pem(),
        private: false,
    });
    files.push(Output {
        name: "ca.key".into(),
        text: ca_key.serialize_pem(),
        private: true,
    });
    let issuer = Issuer::new(ca_params, ca_key);
    // The leaves: the controller (server for the CI API, client of the agents) and each agent
    // (server only: an agent's certificate must not open a connection to another agent).
    let controller = Leaf {
        file: "controller".into(),
        name: "controller".into(),
        uri: CONTROLLER_IDENTITY.into(),
        usages: vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    let leaves = std::iter::once(controller).chain(agents.iter().map(|a| Leaf {
        file: format!("agent-{a}"),
        name: a.clone(),
        uri: agent_identity(a),
        usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
    }));
    for Leaf {
        file,
        name,
        uri,
        usages,
    } in leaves
    {
        // Its own name first: the name the controller checks for an agent.
        let mut names = vec![name.clone()];
        for n in ["localhost", "127.0.0.1"] {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
        let mut p = params(names, &name, opts.days)?;
        p.subject_alt_names.push(SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|e| format!("identity {uri}: {e}"))?,
        ));
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(|e| format!("generating the key of {name}: {e}"))?;
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| format!("signing the certificate of {name}: {e}"))?;
        files.push(Output {
            name: format!("{file}.pem"),
            text: cert.pem(),
            private: false,
        });
        files.push(Output {
            name: format!("{file}.key"),
            text: key.serialize_pem(),
            private: true,
        });
    }
    write_all(&opts.dir, &files, opts.force)
}

/// Writes every file into a temp dir inside `dir`, then moves them in: all or nothing.
fn write_all(dir: &Path, files: &[Output], force: bool) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let existing: Vec<String> = files
        .iter()
        .filter(|f| dir.join(&f.name).exists())
        .map(|f| f.name.clone())
        .collect();
    if !existing.is_empty() && !force {
        return Err(format!(
            "{} already holds {}: nothing was changed (give --force to replace them)",
            dir.display(),
            existing.join(", ")
        ));
    }
    let staging = dir.join(format!(".certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    let result = (|| {
        for f in files {
            let path = staging.join(&f.name);
            std::fs::write(&path, &f.text)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            let mode = if f.private { 0o600 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
        let mut written = Vec::new();
        for f in files {
            let to = dir.join(&f.name);
            std::fs::rename(staging.join(&f.name), &to)
                .map_err(|e| format!("moving {} into place: {e}", to.display()))?;
            written.push(to);
        }
        Ok(written)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn refuses_to_overwrite_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            dir: dir.path().to_path_buf(),
            agents: vec!["web-1".into()],
            days: 30,
            force: false,
        };
        let written = init(&opts).unwrap();
        assert_eq!(written.len(), 6);
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let err = init(&opts).unwrap_err();
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        let mode = std::fs::metadata(dir.path().join("agent-web-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let bad = InitOptions {
            agents: vec!["../x".into()],
            ..opts
        };
        assert!(init(&bad).unwrap_err().contains("not a host name"));
    }
}
