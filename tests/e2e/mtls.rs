//! Mutual TLS between the CLI (the controller's client side) and real `rampart-agent` processes,
//! with two independent CAs from `rampart certs init`: only clients with a certificate from a
//! CA the agent trusts get in, the client verifies the agent the same way, two CAs are trusted
//! at once during a rotation, and the agent refuses to start without TLS or `--insecure-dev`.
//!
//! Every wait is bounded: processes are killed at a deadline, gRPC connects and calls time out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_rpc::tls::{self, TlsFiles};
use rampart_tests::{AgentProc, CliRun, bin, block_on, read_journals, write_file};
use tonic::Code;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// The longest a `rampart` or `rampart-agent` process may run here.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);
/// The longest wait for one gRPC connect or call.
const STEP: Duration = Duration::from_secs(10);

const PLAYBOOK: &str = "- hosts: all\n  tasks:\n    - command: \"true\"\n";

/// One `rampart certs init` directory: a CA, `controller.*` and `agent-a1.*`.
struct Ca {
    dir: PathBuf,
}

impl Ca {
    fn init(dir: &Path) -> Ca {
        let run = run_bounded(
            &bin("rampart"),
            &["certs", "init", path(dir), "--agent", "a1"],
        );
        assert_eq!(run.code, 0, "certs init: {}", run.stderr);
        Ca {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> String {
        path(&self.dir.join(name)).to_string()
    }

    fn ca(&self) -> String {
        self.file("ca.pem")
    }

    /// The controller's files, trusting `trust` for the agent.
    fn controller(&self, trust: &[&Ca]) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("controller.pem"),
            key: self.dir.join("controller.key"),
            ca: trust.iter().map(|c| c.dir.join("ca.pem")).collect(),
        }
    }

    /// `rampart-agent` flags: serve agent-a1 of this CA, accept clients of `trust`.
    fn agent_args(&self, trust: &[&Ca]) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_string(),
            self.file("agent-a1.pem"),
            "--tls-key".to_string(),
            self.file("agent-a1.key"),
        ];
        for c in trust {
            args.push("--tls-ca".into());
            args.push(c.ca());
        }
        args
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Two independent CAs in a temp dir, and a playbook.
struct Setup {
    tmp: tempfile::TempDir,
    ca1: Ca,
    ca2: Ca,
    playbook: String,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().expect("temp dir");
        let ca1 = Ca::init(&tmp.path().join("ca1"));
        let ca2 = Ca::init(&tmp.path().join("ca2"));
        let playbook = write_file(tmp.path(), "pb.yml", PLAYBOOK);
        Setup {
            tmp,
            ca1,
            ca2,
            playbook,
        }
    }

    fn state(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// An agent with agent-a1 of `ca`, trusting the clients of `trust`.
    fn agent(&self, name: &str, ca: &Ca, trust: &[&Ca]) -> AgentProc {
        let args = ca.agent_args(trust);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProc::start_tls(&self.state(name), &args)
    }

    /// `rampart run --agent ADDR --json` with `tls` (none: plaintext).
    fn run(&self, agent: &AgentProc, tls: Option<&TlsFiles>) -> CliRun {
        let mut args: Vec<String> = [
            "run",
            &self.playbook,
            "--agent",
            &agent.addr,
            "--json",
            "--reconnect-timeout",
            "2",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(t) = tls {
            args.extend(["--tls-cert".into(), path(&t.cert).into()]);
            args.extend(["--tls-key".into(), path(&t.key).into()]);
            for ca in &t.ca {
                args.extend(["--tls-ca".into(), path(ca).into()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bounded(&bin("rampart"), &args)
    }
}

/// Runs `program` to completion, killing it at [`PROCESS_DEADLINE`] (then panics).
pub(crate) fn run_bounded(program: &Path, args: &[&str]) -> CliRun {
    let mut cmd = Command::new(program);
    cmd.args(args).env("RUST_LOG", "error");
    rampart_tests::run_to_end(cmd, PROCESS_DEADLINE)
}

/// Connects to the agent with `tls` (none: plaintext) and calls `GetTransaction` for a txid that
/// does not exist: `Ok(code)` when the agent answered (it accepted the connection), `Err` with
/// what failed when the connection or the handshake did.
fn probe(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Code, String> {
    block_on(async {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(STEP)
            .timeout(STEP);
        if let Some(tls) = tls {
            ep = ep
                .tls_config(tls)
                .map_err(|e| format!("tls config: {e:?}"))?;
        }
        let channel = tokio::time::timeout(STEP, ep.connect())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut client = AgentClient::new(channel);
        let call = client.get_transaction(pb::GetTransactionRequest {
            txid: "tx-20200101T000000Z-00000000".into(),
        });
        match tokio::time::timeout(STEP, call).await {
            Err(_) => Err("call timed out".into()),
            Ok(Ok(_)) => Ok(Code::Ok),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(Code::NotFound),
            Ok(Err(s)) => Err(format!("call: {s:?}")),
        }
    })
}

fn assert_succeeded(run: &CliRun, what: &str) {
    assert_eq!(
        run.code, 0,
        "[{what}] stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.summary()["outcome"], "succeeded", "[{what}]");
}

/// The run exited with `code` and its stderr names both `a` and `b`.
fn assert_failed_naming(run: &CliRun, code: i32, a: &str, b: &str) {
    assert_eq!(
        run.code, code,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(a) && run.stderr.contains(b),
        "{}",
        run.stderr
    );
}

/// The connection failed at the handshake or the first call (not at building the configuration).
fn assert_refused(r: Result<Code, String>, what: &str) {
    match r {
        Err(e) if e.starts_with("connect:") || e.starts_with("call:") => {}
        other => panic!("[{what}] not refused by the handshake: {other:?}"),
    }
}

/// Nothing ran on the agent: no journal in its state dir.
fn assert_nothing_ran(agent: &AgentProc, what: &str) {
    let journals = read_journals(&agent.state_dir);
    assert!(journals.is_empty(), "[{what}] journals: {journals:?}");
}

#[test]
fn mtls_client_from_the_trusted_ca_runs_a_playbook() {
    let s = Setup::new();
    let agent = s.agent("state", &s.ca1, &[&s.ca1]);
    let run = s.run(&agent, Some(&s.ca1.controller(&[&s.ca1])));
    assert_succeeded(&run, "CA1 client, CA1 agent");
    let cfg = tls::client_mutual(&s.ca1.controller(&[&s.ca1])).unwrap();
    assert_eq!(probe(&agent.addr, Some(cfg)), Ok(Code::NotFound));
    // `localhost` is in the agent's certificate too.
    let port = rampart_tests::port_of(&agent.addr).to_string();
    let cfg = tls::client_mutual(&s.ca1.controller(&[&s.ca1])).unwrap();
    assert_eq!(
        probe(&format!("localhost:{port}"), Some(cfg)),
        Ok(Code::NotFound)
    );
}

#[test]
fn mtls_client_certificate_from_another_ca_is_refused() {
    let s = Setup::new();
    let agent = s.agent("state", &s.ca1, &[&s.ca1]);
    // Signed by CA2, though it trusts the agent's CA1.
    let files = s.ca2.controller(&[&s.ca1]);
    let run = s.run(&agent, Some(&files));
    assert_failed_naming(&run, 3, "closed the TLS connection", "--tls-ca");
    assert_refused(
        probe(&agent.addr, Some(tls::client_mutual(&files).unwrap())),
        "CA2 client",
    );
    assert_nothing_ran(&agent, "CA2 client");
    // The agent still serves its own CA's clients.
    assert_succeeded(
        &s.run(&agent, Some(&s.ca1.controller(&[&s.ca1]))),
        "CA1 client after a refused CA2 client",
    );
}

#[test]
fn mtls_client_without_a_certificate_is_refused() {
    let s = Setup::new();
    let agent = s.agent("state", &s.ca1, &[&s.ca1]);
    // TLS, trusting the agent, but presenting no certificate.
    let no_cert = tls::client_ca_only(&[PathBuf::from(s.ca1.ca())]).unwrap();
    assert_refused(probe(&agent.addr, Some(no_cert)), "no client certificate");
    // Plaintext gRPC.
    assert_refused(probe(&agent.addr, None), "plaintext client");
    let run = s.run(&agent, None);
    assert_ne!(run.code, 0, "plaintext run succeeded:\n{}", run.stdout);
    assert_nothing_ran(&agent, "clients without a certificate");
}

#[test]
fn mtls_client_refuses_an_agent_from_an_untrusted_ca() {
    let s = Setup::new();
    let agent = s.agent("state", &s.ca1, &[&s.ca1]);
    // A client certificate the agent accepts, but the client trusts only CA2.
    let files = s.ca1.controller(&[&s.ca2]);
    let run = s.run(&agent, Some(&files));
    assert_failed_naming(&run, 2, "cannot reach agent", "certificate");
    let r = probe(&agent.addr, Some(tls::client_mutual(&files).unwrap()));
    assert!(
        matches!(&r, Err(e) if e.contains("InvalidCertificate")),
        "the client accepted a CA1 agent: {r:?}"
    );
    assert_nothing_ran(&agent, "client trusting CA2");
}

#[test]
fn mtls_rotation_agent_trusting_two_cas_accepts_clients_of_both() {
    let s = Setup::new();
    let ca3 = Ca::init(&s.tmp.path().join("ca3"));
    let agent = s.agent("state", &s.ca1, &[&s.ca1, &s.ca2]);
    // Both controllers trust the agent's CA1 (a controller mid-rotation trusts both as well).
    assert_succeeded(
        &s.run(&agent, Some(&s.ca1.controller(&[&s.ca1]))),
        "CA1 client",
    );
    assert_succeeded(
        &s.run(&agent, Some(&s.ca2.controller(&[&s.ca1, &s.ca2]))),
        "CA2 client",
    );
    // A CA the agent does not trust is still refused.
    let run = s.run(&agent, Some(&ca3.controller(&[&s.ca1])));
    assert_eq!(run.code, 3, "CA3 client:\n{}\n{}", run.stdout, run.stderr);
}

#[test]
fn agent_refuses_to_start_without_tls_or_insecure_dev() {
    let s = Setup::new();
    let agent = |extra: &[&str]| {
        let state = s.state("state");
        let mut args = vec!["--listen", "127.0.0.1:0", "--state-dir", path(&state)];
        args.extend_from_slice(extra);
        run_bounded(&bin("rampart-agent"), &args)
    };
    let neither = agent(&[]);
    assert_eq!(neither.code, 2, "{}", neither.stderr);
    assert!(
        neither.stderr.contains("--tls-cert") && neither.stderr.contains("--insecure-dev"),
        "{}",
        neither.stderr
    );
    assert!(
        !neither.stdout.contains("listening on"),
        "{}",
        neither.stdout
    );

    let tls_args = s.ca1.agent_args(&[&s.ca1]);
    let mut both: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    both.push("--insecure-dev");
    let both = agent(&both);
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("not both"), "{}", both.stderr);

    let cert = s.ca1.file("agent-a1.pem");
    let partial = agent(&["--tls-cert", &cert]);
    assert_eq!(partial.code, 2, "{}", partial.stderr);
    assert!(
        partial.stderr.contains("--tls-key") && partial.stderr.contains("--tls-ca"),
        "{}",
        partial.stderr
    );
}

#[test]
fn agent_refuses_to_start_with_a_bad_tls_file() {
    let s = Setup::new();
    let state = s.state("state");
    let missing = s.tmp.path().join("no-such-cert.pem");
    let (key, ca) = (s.ca1.file("agent-a1.key"), s.ca1.ca());
    let run = run_bounded(
        &bin("rampart-agent"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            path(&state),
            "--tls-cert",
            path(&missing),
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ],
    );
    assert_failed_naming(&run, 2, path(&missing), "no such file");
    assert!(!run.stdout.contains("listening on"), "{}", run.stdout);

    // The key file passed as the certificate.
    let run = run_bounded(
        &bin("rampart-agent"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            path(&state),
            "--tls-cert",
            &key,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ],
    );
    assert_failed_naming(&run, 2, &key, "no certificate");
}
