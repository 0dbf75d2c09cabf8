//! The `rampart` CLI's side of the controller's gRPC API (`rampart.v1.Controller`, see
//! `proto/proto/rampart/v1/controller.proto`): how to reach and authenticate to the controller,
//! and the exit codes every controller command shares.
//!
//! - [`deploy`]: `rampart deploy`, `rampart rollback` and `rampart watch`: uploads, the event
//!   stream rendered as text or JSON lines, re-attaching with `Watch` when the stream breaks;
//! - [`query`]: `rampart status`, `history`, `deployment show`, `approve`, `abort`,
//!   `forensics get`, `incidents`.
//!
//! Exit codes (ARCHITECTURE.md): 0 deployed and healthy (or check mode passed), 1 failed and rolled
//! back (also failed with nothing changed, and aborted), 2 usage or configuration error (also: the
//! controller cannot be reached), 3 authentication failure, 4 rollback failed (CRITICAL), 5 the
//! deployment lock was not acquired in time.

pub mod deploy;
pub mod query;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::controller_client::ControllerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The controller URL used when neither `--controller` nor `RAMPART_CONTROLLER` is given.
pub const DEFAULT_CONTROLLER: &str = "https://127.0.0.1:7430";
/// How long establishing a connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment variable: the controller URL.
pub const ENV_CONTROLLER: &str = "RAMPART_CONTROLLER";
/// Environment variable: the file holding the token.
pub const ENV_TOKEN_FILE: &str = "RAMPART_TOKEN_FILE";
/// Environment variable: the token itself (used when no token file is given).
pub const ENV_TOKEN: &str = "RAMPART_TOKEN";
/// Environment variable: the CA certificate that signed the controller's certificate.
pub const ENV_CA: &str = "RAMPART_CA";

/// How to reach the controller; flattened into every controller subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControllerArgs {
    /// The controller's gRPC URL: https://HOST:PORT, or http://HOST:PORT for a controller run
    /// with --insecure-dev (plaintext). [env: RAMPART_CONTROLLER] [default: https://127.0.0.1:7430]
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// The file holding the bearer token (surrounding whitespace ignored). Without it, the token
    /// itself is read from RAMPART_TOKEN. [env: RAMPART_TOKEN_FILE]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the controller's certificate; required for
    /// https:// URLs (`rampart certs init DIR` writes DIR/ca.pem). [env: RAMPART_CA]
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of text (one object per line for event streams).
    #[arg(long)]
    pub json: bool,
}

pub use crate::error::CliError;
pub use crate::exit::Exit;
pub use rampart_rpc::{error_chain, is_transport as is_transport_error};

/// Adds `authorization: Bearer <token>` to every request. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl BearerAuth {
    /// The interceptor for `token`; refuses a token that cannot travel in a header.
    pub fn new(token: &str) -> Result<Self, CliError> {
        let mut header: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
            CliError::usage(
                "the token contains characters that cannot travel in a gRPC header \
                 (only visible ASCII is allowed)",
            )
        })?;
        header.set_sensitive(true);
        Ok(BearerAuth { header })
    }
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(req)
    }
}

/// A controller client whose every request carries the bearer token.
pub type Client = ControllerClient<InterceptedService<Channel, BearerAuth>>;

/// Where the controller is and how to talk to it, resolved from [`ControllerArgs`] and the
/// environment before any network call.
#[derive(Clone)]
pub struct Controller {
    url: String,
    endpoint: Endpoint,
    auth: BearerAuth,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Reads an environment variable, treating an empty value as unset.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Loads the bearer token: from `token_file` (or the file `RAMPART_TOKEN_FILE` names), else from
/// `RAMPART_TOKEN`; `env` looks variables up. Surrounding whitespace is trimmed.
pub fn load_token(
    token_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, CliError> {
    let file = token_file
        .map(Path::to_path_buf)
        .or_else(|| env(ENV_TOKEN_FILE).map(PathBuf::from));
    if let Some(file) = file {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            CliError::usage(format!(
                "cannot read the token file {}: {e}",
                file.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::usage(format!(
                "the token file {} is empty",
                file.display()
            )));
        }
        return Ok(token.to_string());
    }
    match env(ENV_TOKEN) {
        Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(CliError::usage(
            "no token: pass --token-file FILE (or set RAMPART_TOKEN_FILE to that file), or set \
             RAMPART_TOKEN to the token itself; the controller's configuration lists its tokens",
        )),
    }
}

impl Controller {
    /// Resolves the arguments with the process environment: the URL, the token and, for
    /// https://, the CA. Prints a warning on stderr for plaintext http:// URLs.
    pub fn from_args(args: &ControllerArgs) -> Result<Self, CliError> {
        Self::from_args_with(args, &env_var)
    }

    /// As [`Controller::from_args`], looking environment variables up with `env`.
    pub fn from_args_with(
        args: &ControllerArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CliError> {
        let url = args
            .controller
            .clone()
            .or_else(|| env(ENV_CONTROLLER))
            .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string());
        let url = url.trim().trim_end_matches('/').to_string();
        let token = load_token(args.token_file.as_deref(), env)?;
        let auth = BearerAuth::new(&token)?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| CliError::usage(format!("bad controller URL `{url}`: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            // Notice a dead connection under a long, quiet deployment stream.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let endpoint = if url.starts_with("https://") {
            let ca = args
                .ca
                .clone()
                .or_else(|| env(ENV_CA).map(PathBuf::from))
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "{url} is https: pass --ca FILE (or set RAMPART_CA), the CA certificate \
                         that signed the controller's certificate; `rampart certs init DIR` \
                         writes it as DIR/ca.pem"
                    ))
                })?;
            let tls = rampart_rpc::tls::client_ca_only(&[ca]).map_err(CliError::usage)?;
            endpoint
                .tls_config(tls)
                .map_err(|e| CliError::usage(format!("TLS settings for {url}: {e}")))?
        } else if url.starts_with("http://") {
            eprintln!(
                "rampart: WARNING: plaintext connection to {url}: the token and everything else \
                 travel unencrypted (the controller must run with --insecure-dev)"
            );
            endpoint
        } else {
            return Err(CliError::usage(format!(
                "bad controller URL `{url}`: expected https://HOST:PORT (or http://HOST:PORT for \
                 a controller run with --insecure-dev)"
            )));
        };
        Ok(Controller {
            url,
            endpoint,
            auth,
        })
    }

    /// The controller's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects (at most [`CONNECT_TIMEOUT`]) and returns a client that sends the token.
    pub async fn connect(&self) -> Result<Client, CliError> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| CliError::transport(&self.url, &e))?;
        Ok(
            ControllerClient::with_interceptor(channel, self.auth.clone())
                .max_decoding_message_size(rampart_rpc::MAX_MESSAGE),
        )
    }

    /// Maps a status from this controller (see [`CliError::from_status`]).
    pub fn error(&self, what: &str, s: &tonic::Status) -> CliError {
        CliError::from_status(what, &self.url, s)
    }
}

/// Runs a command's async body on a current-thread runtime and turns its result into the process
/// exit code, printing the error on stderr.
pub fn block_on<F>(fut: F) -> Exit
where
    F: std::future::Future<Output = Result<Exit, CliError>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart: cannot start the async runtime: {e}");
            return Exit::Usage;
        }
    };
    match rt.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rampart: {}", e.message);
            e.exit
        }
    }
}

/// Reports a failure that happened before the runtime started; returns its exit code.
pub fn fail(e: CliError) -> Exit {
    eprintln!("rampart: {}", e.message);
    e.exit
}

/// The name of a protobuf enum value without its prefix, lowercase: `rolled_back`.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// `rolled_back`, `succeeded`, ...
pub fn outcome_name(o: pb::DeploymentOutcome) -> String {
    enum_name(o.as_str_name(), "DEPLOYMENT_OUTCOME_")
}

/// `deploy` or `rollback`.
pub fn kind_name(k: pb::DeploymentKind) -> String {
    enum_name(k.as_str_name(), "DEPLOYMENT_KIND_")
}

/// `queued`, `awaiting_approval`, `running`, `rescuing`, `finished`.
pub fn state_name(s: pb::DeploymentState) -> String {
    enum_name(s.as_str_name(), "DEPLOYMENT_STATE_")
}

/// `pending`, `succeeded`, `rolled_back`, ...
pub fn host_state_name(s: pb::HostState) -> String {
    enum_name(s.as_str_name(), "HOST_STATE_")
}

/// A host's state as people read it: in a finished deployment, a host still `pending` was
/// never touched.
pub fn host_state_label(s: pb::HostState, deployment_finished: bool) -> String {
    if deployment_finished && s == pb::HostState::Pending {
        "untouched".to_string()
    } else {
        host_state_name(s)
    }
}

/// The agent's transaction outcome: `succeeded`, `rolled_back`, ...
pub fn agent_outcome_name(o: pb::Outcome) -> String {
    enum_name(o.as_str_name(), "OUTCOME_")
}

/// A task's status: `ok`, `changed`, `failed`, `skipped`, `ignored`.
pub fn task_status_name(s: pb::TaskStatus) -> String {
    enum_name(s.as_str_name(), "TASK_STATUS_")
}

/// `block`, `rescue`, `always`.
pub fn section_name(s: pb::Section) -> String {
    enum_name(s.as_str_name(), "SECTION_")
}

/// `warning`, `error`, `critical`.
pub fn severity_name(s: pb::IncidentSeverity) -> String {
    enum_name(s.as_str_name(), "INCIDENT_SEVERITY_")
}

/// `open`, `acknowledged`, `resolved`.
pub fn incident_state_name(s: pb::IncidentState) -> String {
    enum_name(s.as_str_name(), "INCIDENT_STATE_")
}

/// A protobuf timestamp as a UTC date and time, if set and representable.
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = t?;
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

/// A protobuf timestamp as RFC 3339 (`2025-01-31T12:00:00.000Z`), or JSON null when unset.
pub fn timestamp_json(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    match timestamp(t) {
        Some(d) => {
            serde_json::Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
        None => serde_json::Value::Null,
    }
}

/// A protobuf timestamp for tables: `2025-01-31 12:00:00Z`, or `-` when unset.
pub fn timestamp_text(t: Option<&prost_types::Timestamp>) -> String {
    match timestamp(t) {
        Some(d) => d.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => "-".to_string(),
    }
}

/// A duration for people: `850ms`, `1.2s`, `3m05s`, `2h03m`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn size_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Writes rows as columns padded to their widest cell (the last column is not padded).
pub fn write_table<W: std::io::Write>(out: &mut W, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// One host's result as JSON, every field; the state capture is parsed (null when empty).
pub fn host_result_json(h: &pb::HostResult) -> serde_json::Value {
    let capture = parse_json_text(&h.state_capture_json);
    serde_json::json!({
        "host": h.host,
        "state": host_state_name(h.state()),
        "outcome": agent_outcome_name(h.outcome()),
        "from_version": h.from_version,
        "to_version": h.to_version,
        "forensics_id": h.forensics_id,
        "txid": h.txid,
        "rescue_txid": h.rescue_txid,
        "wave": h.wave,
        "message": h.message,
        "started": timestamp_json(h.started.as_ref()),
        "finished": timestamp_json(h.finished.as_ref()),
        "state_capture": capture,
    })
}

/// JSON text from the wire as a value: null when empty, a string when not JSON.
pub fn parse_json_text(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// `2.3.0 → 2.4.1`, `- → 2.4.1`, or `2.4.1` when unchanged.
pub fn version_change(from: &str, to: &str) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    if from == to && !from.is_empty() {
        from.to_string()
    } else {
        format!("{} → {}", dash(from), dash(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn outcome_exit_codes_follow_the_design_table() {
        use pb::DeploymentOutcome as O;
        let table = [
            (O::Succeeded, 0),
            (O::CheckOnly, 0),
            (O::RolledBack, 1),
            (O::Failed, 1),
            (O::Aborted, 1),
            (O::ApprovalTimedOut, 1),
            (O::Unspecified, 1),
            (O::RollbackFailed, 4),
            (O::LockTimeout, 5),
        ];
        for (outcome, code) in table {
            assert_eq!(Exit::of_deployment(outcome).code(), code, "{outcome:?}");
        }
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let url = "https://deploy.internal:7430";
        let e = CliError::from_status(
            "deploy",
            url,
            &tonic::Status::unauthenticated("unknown token"),
        );
        assert_eq!(e.exit.code(), 3);
        assert!(
            e.message.contains("refused the token: unknown token"),
            "{}",
            e.message
        );
        assert!(e.message.contains("--token-file"));
        let e = CliError::from_status("deploy", url, &tonic::Status::permission_denied("not prod"));
        assert_eq!(e.exit.code(), 3);
        for s in [
            tonic::Status::not_found("no environment staging"),
            tonic::Status::invalid_argument("bad serial"),
            tonic::Status::failed_precondition("not uploaded"),
            tonic::Status::already_exists("d-1 exists"),
        ] {
            let e = CliError::from_status("deploy to production", url, &s);
            assert_eq!(e.exit.code(), 2, "{s:?}");
            assert!(
                e.message.starts_with("deploy to production: "),
                "{}",
                e.message
            );
            assert!(e.message.contains(s.message()));
        }
        let e = CliError::from_status("deploy", url, &tonic::Status::unavailable("refused"));
        assert_eq!(e.exit.code(), 2);
        assert_eq!(
            e.message,
            "cannot reach the controller at https://deploy.internal:7430: refused"
        );
        let e = CliError::from_status("deploy", url, &tonic::Status::data_loss("digest"));
        assert_eq!(e.exit.code(), 2);
        assert!(is_transport_error(&tonic::Status::unavailable("x")));
        assert!(!is_transport_error(&tonic::Status::not_found("x")));
    }

    #[test]
    fn token_from_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  s3cret-token\n").unwrap();
        let t = load_token(Some(&f), &env_of(&[(ENV_TOKEN, "other")])).unwrap();
        assert_eq!(t, "s3cret-token");
        // The file named by the environment, too; it wins over RAMPART_TOKEN.
        let f2 = f.display().to_string();
        let t = load_token(
            None,
            &env_of(&[(ENV_TOKEN_FILE, &f2), (ENV_TOKEN, "other")]),
        )
        .unwrap();
        assert_eq!(t, "s3cret-token");
    }

    #[test]
    fn token_from_env_and_missing_token() {
        assert_eq!(
            load_token(None, &env_of(&[(ENV_TOKEN, " abc \n")])).unwrap(),
            "abc"
        );
        let e = load_token(None, &env_of(&[])).unwrap_err();
        assert_eq!(e.exit.code(), 2);
        assert!(e.message.contains("--token-file"), "{}", e.message);
        assert!(e.message.contains("RAMPART_TOKEN"), "{}", e.message);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = load_token(Some(&missing), &env_of(&[])).unwrap_err();
        assert_eq!(e.exit.code(), 2);
        assert!(
            e.message.contains("cannot read the token file"),
            "{}",
            e.message
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(
            load_token(Some(&empty), &env_of(&[]))
                .unwrap_err()
                .message
                .contains("empty")
        );
    }

    #[test]
    fn https_needs_a_ca_and_says_where_to_get_it() {
        let args = ControllerArgs {
            controller: Some("https://deploy.internal:7430".into()),
            ..ControllerArgs::default()
        };
        let e = Controller::from_args_with(&args, &env_of(&[(ENV_TOKEN, "t")])).unwrap_err();
        assert_eq!(e.exit.code(), 2);
        assert!(e.message.contains("--ca"), "{}", e.message);
        assert!(e.message.contains("rampart certs init"), "{}", e.message);
        assert!(e.message.contains("ca.pem"), "{}", e.message);
        // A token is checked before the CA, and the default URL is https.
        let e = Controller::from_args_with(&ControllerArgs::default(), &env_of(&[])).unwrap_err();
        assert!(e.message.contains("no token"), "{}", e.message);
        let e =
            Controller::from_args_with(&ControllerArgs::default(), &env_of(&[(ENV_TOKEN, "t")]))
                .unwrap_err();
        assert!(
            e.message.contains("https://127.0.0.1:7430"),
            "{}",
            e.message
        );
        // Plaintext and the URL from the environment.
        let c = Controller::from_args_with(
            &ControllerArgs::default(),
            &env_of(&[(ENV_TOKEN, "t"), (ENV_CONTROLLER, "http://127.0.0.1:7430/")]),
        )
        .unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:7430");
        assert!(!format!("{c:?}").contains("Bearer"));
        let bad = ControllerArgs {
            controller: Some("deploy.internal:7430".into()),
            ..ControllerArgs::default()
        };
        assert_eq!(
            Controller::from_args_with(&bad, &env_of(&[(ENV_TOKEN, "t")]))
                .unwrap_err()
                .exit
                .code(),
            2
        );
    }

    #[test]
    fn https_with_the_ca_from_certs_init() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        crate::certs::init(&crate::certs::InitOptions {
            dir: tls.clone(),
            agents: Vec::new(),
            days: 2,
            force: false,
        })
        .unwrap();
        let server =
            rampart_rpc::tls::server_only(&tls.join("controller.pem"), &tls.join("controller.key"))
                .unwrap();
        let (url, _) = mock::start_tls(server);
        let mut args = mock::args(&url, dir.path(), mock::TOKEN);
        args.ca = Some(tls.join("ca.pem"));
        let ctl = Controller::from_args_with(&args, &env_of(&[])).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listed = rt.block_on(async {
            let mut c = ctl.connect().await?;
            c.list_deployments(pb::ListDeploymentsRequest::default())
                .await
                .map_err(|s| ctl.error("list", &s))
        });
        assert!(listed.is_ok(), "{listed:?}");
        // A CA that did not sign the controller's certificate: cannot reach it, exit 2.
        let other = dir.path().join("other");
        crate::certs::init(&crate::certs::InitOptions {
            dir: other.clone(),
            agents: Vec::new(),
            days: 2,
            force: false,
        })
        .unwrap();
        args.ca = Some(other.join("ca.pem"));
        let ctl = Controller::from_args_with(&args, &env_of(&[])).unwrap();
        let e = rt.block_on(ctl.connect()).unwrap_err();
        assert_eq!(e.exit.code(), 2);
        assert!(
            e.message.contains("cannot reach the controller"),
            "{}",
            e.message
        );
        // A CA file that is not PEM is a configuration error before any connection.
        args.ca = Some(tls.join("controller.key"));
        assert_eq!(
            Controller::from_args_with(&args, &env_of(&[]))
                .unwrap_err()
                .exit
                .code(),
            2
        );
    }

    /// The subcommands as `rampart` wires them (see src/bin/rampart.rs).
    #[derive(Debug, clap::Parser)]
    #[command(version, propagate_version = true)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Debug, clap::Subcommand)]
    enum TestCommand {
        #[command(disable_version_flag = true)]
        Deploy(deploy::DeployArgs),
        Rollback(deploy::RollbackArgs),
        Watch(deploy::WatchArgs),
        Status(query::StatusArgs),
        History(query::HistoryArgs),
        #[command(subcommand)]
        Deployment(query::DeploymentCommand),
        Approve(query::ApproveArgs),
        Abort(query::AbortArgs),
        #[command(subcommand)]
        Forensics(query::ForensicsCommand),
        #[command(args_conflicts_with_subcommands = true)]
        Incidents(query::IncidentsArgs),
    }

    #[test]
    fn command_lines_parse() {
        use clap::{CommandFactory, Parser};
        TestCli::command().debug_assert();
        let cli = TestCli::try_parse_from([
            "rampart",
            "deploy",
            "--env",
            "production",
            "--version",
            "2.4.1",
            "--artifact",
            "backend=dist/b.tgz",
            "-e",
            "a=1",
            "--serial",
            "1",
            "--serial",
            "50%",
            "--max-fail-percentage",
            "20",
            "--controller",
            "https://deploy.internal:7430",
            "--ca",
            "ca.pem",
            "--token-file",
            "/run/secrets/t",
            "--json",
        ])
        .unwrap();
        let TestCommand::Deploy(d) = cli.command else {
            panic!("not deploy")
        };
        assert_eq!(d.version, "2.4.1");
        assert_eq!(d.serial, ["1", "50%"]);
        assert_eq!(d.max_fail_percentage, Some(20));
        assert_eq!(d.follow.wait_timeout, 600);
        assert_eq!(d.follow.reconnect_timeout, 60);
        assert!(d.controller.json);
        assert_eq!(d.controller.ca, Some(PathBuf::from("ca.pem")));
        // Required flags.
        assert!(
            TestCli::try_parse_from(["rampart", "deploy", "--env", "p", "--version", "1"]).is_err()
        );
        assert!(TestCli::try_parse_from(["rampart", "rollback", "--env", "p"]).is_err());
        assert!(TestCli::try_parse_from(["rampart", "abort", "d-1"]).is_err());
        assert!(
            TestCli::try_parse_from([
                "rampart",
                "deploy",
                "--env",
                "p",
                "--version",
                "1",
                "--artifact",
                "a=b",
                "--max-fail-percentage",
                "101",
            ])
            .is_err()
        );
        let cli = TestCli::try_parse_from([
            "rampart",
            "incidents",
            "resolve",
            "i-1",
            "--note",
            "fixed",
            "--ack",
        ])
        .unwrap();
        let TestCommand::Incidents(i) = cli.command else {
            panic!("not incidents")
        };
        assert!(matches!(
            i.command,
            Some(query::IncidentsCommand::Resolve(ref r)) if r.ack && r.note == "fixed"
        ));
        let cli = TestCli::try_parse_from(["rampart", "incidents", "--env", "production"]).unwrap();
        assert!(matches!(cli.command, TestCommand::Incidents(ref i) if i.command.is_none()));
        let cli = TestCli::try_parse_from([
            "rampart",
            "forensics",
            "get",
            "d-1",
            "web1",
            "-o",
            "x.tgz",
            "--force",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            TestCommand::Forensics(query::ForensicsCommand::Get(ref g)) if g.force && g.host == "web1"
        ));
        assert!(TestCli::try_parse_from(["rampart", "deployment", "show", "d-1"]).is_ok());
        assert!(TestCli::try_parse_from(["rampart", "watch", "d-1", "--from-seq", "5"]).is_ok());
        assert!(
            TestCli::try_parse_from(["rampart", "history", "--env", "p", "--limit", "5"]).is_ok()
        );
    }

    #[test]
    fn bearer_interceptor_adds_the_header() {
        use tonic::service::Interceptor;
        let mut auth = BearerAuth::new("abc").unwrap();
        let req = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata()
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer abc"
        );
        assert!(BearerAuth::new("bad\ntoken").is_err());
        assert_eq!(format!("{auth:?}"), "BearerAuth(<redacted>)");
    }

    #[test]
    fn texts() {
        assert_eq!(duration_text(Duration::from_millis(1200)), "1.2s");
        assert_eq!(duration_text(Duration::from_secs(185)), "3m05s");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(
            outcome_name(pb::DeploymentOutcome::RolledBack),
            "rolled_back"
        );
        let mut out = Vec::new();
        write_table(
            &mut out,
            &[
                vec!["HOST".into(), "STATE".into(), "M".into()],
                vec!["web1".into(), "ok".into(), String::new()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HOST  STATE  M\nweb1  ok\n"
        );
    }
}

/// An in-process fake controller for the client's wire tests: checks the token, stores uploads
/// by digest (answering `already_present` right after the header), breaks the first `Deploy`
/// stream after three events and replays from one event early on `Watch`, so that re-attaching
/// and de-duplication are exercised.
#[cfg(test)]
pub(crate) mod mock {
    use std::collections::HashMap;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use rampart_proto::v1 as pb;
    use rampart_proto::v1::controller_server::{Controller as Svc, ControllerServer};
    use rampart_proto::v1::deployment_event::Kind;
    use sha2::{Digest, Sha256};
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status, Streaming};

    /// The token the fake accepts.
    pub(crate) const TOKEN: &str = "s3cret";

    type Events = Pin<Box<dyn Stream<Item = Result<pb::DeploymentEvent, Status>> + Send>>;
    type Chunks = Pin<Box<dyn Stream<Item = Result<pb::DataChunk, Status>> + Send>>;

    /// What the fake saw.
    #[derive(Debug, Default)]
    pub(crate) struct Seen {
        /// Stored artifacts: sha256 → bytes.
        pub store: HashMap<String, Vec<u8>>,
        /// Upload headers (name, sha256, size, already_present).
        pub uploads: Vec<(String, String, u64, bool)>,
        /// Deploy requests.
        pub deploys: Vec<pb::DeployRequest>,
        /// Watch requests.
        pub watches: Vec<pb::WatchDeploymentRequest>,
    }

    #[derive(Debug, Clone)]
    struct Fake {
        seen: Arc<Mutex<Seen>>,
    }

    fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
        let want = format!("Bearer {TOKEN}");
        match req.metadata().get("authorization").map(|v| v.to_str()) {
            Some(Ok(v)) if v == want => Ok(()),
            Some(_) => Err(Status::unauthenticated("unknown token")),
            None => Err(Status::unauthenticated("no token")),
        }
    }

    fn ev(seq: u64, kind: Kind) -> pb::DeploymentEvent {
        pb::DeploymentEvent {
            seq,
            deployment_id: "d-1".into(),
            time: None,
            kind: Some(kind),
        }
    }

    /// The scripted deployment: one wave, web1 fails, fleet rescue, rolled back.
    pub(crate) fn script() -> Vec<pb::DeploymentEvent> {
        vec![
            ev(
                0,
                Kind::Queued(pb::DeploymentQueued {
                    position: 1,
                    holder_deployment_id: "d-0".into(),
                }),
            ),
            ev(
                1,
                Kind::LockAcquired(pb::LockAcquired {
                    waited_ms: 300,
                    ..Default::default()
                }),
            ),
            ev(
                2,
                Kind::Planned(pb::RolloutPlanned {
                    analysis_ms: Vec::new(),
                    waves: vec![pb::WavePlan {
                        hosts: vec!["web1".into()],
                    }],
                    max_fail_percentage: None,
                    bake_ms: 0,
                }),
            ),
            ev(
                3,
                Kind::WaveStarted(pb::WaveStarted {
                    index: 0,
                    wave_count: 1,
                    hosts: vec!["web1".into()],
                }),
            ),
            ev(
                4,
                Kind::HostFinished(pb::HostFinished {
                    host: "web1".into(),
                    state: pb::HostState::RolledBack as i32,
                    txid: "t-1".into(),
                    message: "health check failed".into(),
                    ..Default::default()
                }),
            ),
            ev(
                5,
                Kind::Finished(pb::DeploymentFinished {
                    outcome: pb::DeploymentOutcome::RolledBack as i32,
                    environment: "production".into(),
                    environment_version: "1.0".into(),
                    hosts: vec![pb::HostResult {
                        host: "web1".into(),
                        state: pb::HostState::RolledBack as i32,
                        from_version: "1.0".into(),
                        to_version: "1.0".into(),
                        ..Default::default()
                    }],
                    summary: "web1 failed".into(),
                    incident_id: String::new(),
                }),
            ),
        ]
    }

    #[tonic::async_trait]
    impl Svc for Fake {
        async fn upload_artifact(
            &self,
            req: Request<Streaming<pb::ArtifactUpload>>,
        ) -> Result<Response<pb::UploadArtifactResponse>, Status> {
            authorize(&req)?;
            let mut s = req.into_inner();
            let head = s
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("empty upload"))?;
            let present = self.seen.lock().unwrap().store.contains_key(&head.sha256);
            self.seen.lock().unwrap().uploads.push((
                head.name.clone(),
                head.sha256.clone(),
                head.size,
                present,
            ));
            if present {
                return Ok(Response::new(pb::UploadArtifactResponse {
                    sha256: head.sha256,
                    size: head.size,
                    already_present: true,
                }));
            }
            let mut data = head.data;
            while let Some(m) = s.message().await? {
                if m.data.len() > 1 << 20 {
                    return Err(Status::invalid_argument("chunk over 1 MiB"));
                }
                data.extend_from_slice(&m.data);
            }
            let sha = rampart_host::digest::hex(&Sha256::digest(&data));
            if sha != head.sha256 || data.len() as u64 != head.size {
                return Err(Status::data_loss("digest or size mismatch"));
            }
            let size = data.len() as u64;
            self.seen.lock().unwrap().store.insert(sha.clone(), data);
            Ok(Response::new(pb::UploadArtifactResponse {
                sha256: sha,
                size,
                already_present: false,
            }))
        }

        type DeployStream = Events;
        async fn deploy(
            &self,
            req: Request<pb::DeployRequest>,
        ) -> Result<Response<Events>, Status> {
            authorize(&req)?;
            let r = req.into_inner();
            for sha in r.artifacts.values() {
                if !self.seen.lock().unwrap().store.contains_key(sha) {
                    return Err(Status::failed_precondition(format!("{sha} not uploaded")));
                }
            }
            self.seen.lock().unwrap().deploys.push(r);
            let mut items: Vec<Result<pb::DeploymentEvent, Status>> =
                script().into_iter().take(3).map(Ok).collect();
            items.push(Err(Status::unavailable("connection reset")));
            Ok(Response::new(Box::pin(tokio_stream::iter(items))))
        }

        type RollbackStream = Events;
        async fn rollback(
            &self,
            _req: Request<pb::RollbackRequest>,
        ) -> Result<Response<Events>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type WatchStream = Events;
        async fn watch(
            &self,
            req: Request<pb::WatchDeploymentRequest>,
        ) -> Result<Response<Events>, Status> {
            authorize(&req)?;
            let r = req.into_inner();
            if r.deployment_id != "d-1" {
                return Err(Status::not_found(format!(
                    "no deployment {}",
                    r.deployment_id
                )));
            }
            // One event early, which the client must skip.
            let from = r.from_seq.saturating_sub(1);
            self.seen.lock().unwrap().watches.push(r);
            let items: Vec<Result<pb::DeploymentEvent, Status>> = script()
                .into_iter()
                .filter(|e| e.seq >= from)
                .map(Ok)
                .collect();
            Ok(Response::new(Box::pin(tokio_stream::iter(items))))
        }

        async fn get_deployment(
            &self,
            _req: Request<pb::GetDeploymentRequest>,
        ) -> Result<Response<pb::Deployment>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn list_deployments(
            &self,
            req: Request<pb::ListDeploymentsRequest>,
        ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
            authorize(&req)?;
            Ok(Response::new(pb::ListDeploymentsResponse::default()))
        }

        async fn list_environments(
            &self,
            req: Request<pb::ListEnvironmentsRequest>,
        ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
            authorize(&req)?;
            Ok(Response::new(pb::ListEnvironmentsResponse {
                environments: vec![pb::EnvironmentStatus {
                    name: "production".into(),
                    host_count: 2,
                    ..Default::default()
                }],
            }))
        }

        async fn approve(
            &self,
            _req: Request<pb::ApproveRequest>,
        ) -> Result<Response<pb::ApproveResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn abort(
            &self,
            _req: Request<pb::AbortRequest>,
        ) -> Result<Response<pb::AbortResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn list_incidents(
            &self,
            _req: Request<pb::ListIncidentsRequest>,
        ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn resolve_incident(
            &self,
            _req: Request<pb::ResolveIncidentRequest>,
        ) -> Result<Response<pb::Incident>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get_postmortem(
            &self,
            _req: Request<pb::GetPostmortemRequest>,
        ) -> Result<Response<pb::Postmortem>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type GetForensicsStream = Chunks;
        async fn check_environment(
            &self,
            req: Request<pb::CheckEnvironmentRequest>,
        ) -> Result<Response<pb::CheckEnvironmentResponse>, Status> {
            authorize(&req)?;
            let r = req.into_inner();
            // web2 left a staging dir behind: not whole.
            Ok(Response::new(pb::CheckEnvironmentResponse {
                environment: r.environment,
                consistent: false,
                hosts: vec![
                    pb::HostCheck {
                        host: "web1".into(),
                        reachable: true,
                        consistent: true,
                        ..Default::default()
                    },
                    pb::HostCheck {
                        host: "web2".into(),
                        reachable: true,
                        problems: vec![pb::StateProblem {
                            component: "backend".into(),
                            code: "staging_left".into(),
                            message: "a staging dir is left".into(),
                        }],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }))
        }

        async fn deployment_stats(
            &self,
            req: Request<pb::DeploymentStatsRequest>,
        ) -> Result<Response<pb::DeploymentStatsResponse>, Status> {
            authorize(&req)?;
            Err(Status::unimplemented(
                "the fake controller computes no stats",
            ))
        }

        async fn get_forensics(
            &self,
            req: Request<pb::GetDeploymentForensicsRequest>,
        ) -> Result<Response<Chunks>, Status> {
            authorize(&req)?;
            let r = req.into_inner();
            if r.host != "web1" {
                return Err(Status::not_found(format!("no forensics for {}", r.host)));
            }
            let items: Vec<Result<pb::DataChunk, Status>> = [b"abc".to_vec(), b"def".to_vec()]
                .into_iter()
                .map(|data| Ok(pb::DataChunk { data }))
                .collect();
            Ok(Response::new(Box::pin(tokio_stream::iter(items))))
        }
    }

    /// Starts the fake on a thread of its own; returns its http:// URL and what it sees.
    pub(crate) fn start() -> (String, Arc<Mutex<Seen>>) {
        start_with(None)
    }

    /// Starts the fake serving TLS with `tls`; returns its https://localhost URL.
    pub(crate) fn start_tls(tls: tonic::transport::ServerTlsConfig) -> (String, Arc<Mutex<Seen>>) {
        start_with(Some(tls))
    }

    fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> (String, Arc<Mutex<Seen>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let fake = Fake { seen: seen.clone() };
        let url = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut server = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    server = server.tls_config(tls).unwrap();
                }
                server
                    .add_service(ControllerServer::new(fake))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                    .await
                    .unwrap();
            });
        });
        (url, seen)
    }

    /// Controller arguments for the fake with `token` in a file under `dir`.
    pub(crate) fn args(url: &str, dir: &std::path::Path, token: &str) -> super::ControllerArgs {
        let f = dir.join("token");
        std::fs::write(&f, format!("{token}\n")).unwrap();
        super::ControllerArgs {
            controller: Some(url.to_string()),
            token_file: Some(f),
            ca: None,
            json: false,
        }
    }
}
