//! Roles and identities of the certificates `rampart certs init` makes, against real agents and a
//! real controller: one host's agent certificate cannot command another agent (the handshake
//! refuses it for client use; one with the client usage but no trusted identity gets
//! `PERMISSION_DENIED`, logged by the agent), only the controller's certificate runs anything,
//! `--controller-identity` decides who that is, a client-only certificate cannot serve, and the
//! controller refuses an agent whose certificate names another host than the inventory's.
//!
//! Every wait is bounded: processes are killed at a deadline, gRPC connects and calls time out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_rpc::tls::{self, TlsFiles};
use rampart_tests::fleet::Fleet;
use rampart_tests::{AgentProc, CliRun, bin, block_on, read_journals, write_file};
use tonic::Code;
use tonic::transport::Endpoint;

use crate::mtls::run_bounded;
use rampart_tests::fleet::finished;

/// The longest wait for one gRPC connect or call.
const STEP: Duration = Duration::from_secs(10);

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A `certs init` directory for web1 and web2, a playbook that creates a marker file, and the
/// marker's path.
struct Setup {
    tmp: tempfile::TempDir,
    certs: PathBuf,
    playbook: String,
    marker: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().expect("temp dir");
        let certs = tmp.path().join("certs");
        let run = run_bounded(
            &bin("rampart"),
            &[
                "certs",
                "init",
                path(&certs),
                "--agent",
                "web1",
                "--agent",
                "web2",
            ],
        );
        assert_eq!(run.code, 0, "certs init: {}", run.stderr);
        let marker = tmp.path().join("created-on-web1");
        let playbook = write_file(
            tmp.path(),
            "pb.yml",
            &format!(
                "- hosts: all\n  tasks:\n    - command: touch {}\n",
                marker.display()
            ),
        );
        Setup {
            tmp,
            certs,
            playbook,
            marker,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.certs.join(name)
    }

    /// `name`.pem/.key as a client trusting the CA.
    fn client(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.file(&format!("{name}.pem")),
            key: self.file(&format!("{name}.key")),
            ca: vec![self.file("ca.pem")],
        }
    }

    /// An agent serving `cert` (a file stem in the certs dir, or a path), trusting the CA,
    /// logging warnings to `<state>.log`, with `extra` flags.
    fn agent(&self, state: &str, cert: &str, extra: &[&str]) -> (AgentProc, PathBuf) {
        let (pem, key) = self.pair(cert);
        let mut args = vec![
            "--tls-cert".to_string(),
            pem,
            "--tls-key".into(),
            key,
            "--tls-ca".into(),
            path(&self.file("ca.pem")).into(),
        ];
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.tmp.path().join(format!("{state}.log"));
        let agent = AgentProc::start_tls_logging(&self.tmp.path().join(state), &args, &log);
        (agent, log)
    }

    fn pair(&self, stem: &str) -> (String, String) {
        let base = if stem.contains('/') {
            PathBuf::from(stem)
        } else {
            self.file(stem)
        };
        (
            format!("{}.pem", base.display()),
            format!("{}.key", base.display()),
        )
    }

    /// `rampart run PLAYBOOK --agent ADDR --json` presenting `client`.
    fn run(&self, agent: &AgentProc, client: &TlsFiles) -> CliRun {
        let args = [
            "run",
            &self.playbook,
            "--agent",
            &agent.addr,
            "--json",
            "--reconnect-timeout",
            "2",
            "--tls-cert",
            path(&client.cert),
            "--tls-key",
            path(&client.key),
            "--tls-ca",
            path(&client.ca[0]),
        ];
        run_bounded(&bin("rampart"), &args)
    }

    /// A leaf signed by this CA with OpenSSL: `names` (`DNS:x,URI:y,...`) and the extended key
    /// usages `eku`; returns its file stem (a path).
    fn openssl_leaf(&self, stem: &str, names: &str, eku: &str) -> String {
        let base = self.tmp.path().join(stem);
        let key = format!("{}.key", base.display());
        let pem = format!("{}.pem", base.display());
        let csr = format!("{}.csr", base.display());
        let ext = write_file(
            self.tmp.path(),
            &format!("{stem}.ext"),
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage={eku}\nsubjectAltName={names}\n"
            ),
        );
        let serial = format!("{}.srl", base.display());
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-subj",
            &format!("/CN={stem}"),
            "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            path(&self.file("ca.pem")),
            "-CAkey",
            path(&self.file("ca.key")),
            "-CAserial",
            &serial,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
        base.display().to_string()
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Calls `Run` on the agent at `addr` presenting `client`: the status code it answered (`Ok` when
/// the stream started), or `Err` when the connection or the handshake failed.
fn grpc_run(addr: &str, client: &TlsFiles, playbook: &str) -> Result<Code, String> {
    let cfg = tls::client_mutual(client).expect("client TLS files");
    let text = std::fs::read_to_string(playbook).expect("playbook");
    block_on(async {
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(STEP)
            .timeout(STEP)
            .tls_config(cfg)
            .map_err(|e| format!("tls config: {e:?}"))?;
        let channel = tokio::time::timeout(STEP, ep.connect())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut client = AgentClient::new(channel);
        let call = client.run(pb::RunRequest {
            playbook: text,
            playbook_name: "pb.yml".into(),
            vars_json: "{}".into(),
            check: false,
            txid: "tx-20200101T000000Z-0000beef".into(),
            lock_timeout_ms: 1000,
            ..Default::default()
        });
        match tokio::time::timeout(STEP, call).await {
            Err(_) => Err("call timed out".into()),
            Ok(Ok(_)) => Ok(Code::Ok),
            Ok(Err(s)) if rampart_rpc::is_transport(&s) => Err(format!("transport: {s:?}")),
            Ok(Err(s)) => {
                eprintln!("Run answered {:?}: {}", s.code(), s.message());
                Ok(s.code())
            }
        }
    })
}

/// The run was refused (exit 3, authentication) naming `what`, and nothing ran on the agent.
fn assert_refused(s: &Setup, agent: &AgentProc, run: &CliRun, what: &str) {
    assert_eq!(
        run.code, 3,
        "[{what}] stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(!s.marker.exists(), "[{what}] the playbook ran on web1");
    let journals = read_journals(&agent.state_dir);
    assert!(journals.is_empty(), "[{what}] journals: {journals:?}");
}

#[test]
fn identity_an_agent_certificate_cannot_command_another_agent() {
    let s = Setup::new();
    let (web1, log) = s.agent("web1", "agent-web1", &[]);
    let (web2, _) = s.agent("web2", "agent-web2", &[]);

    // web2's own certificate and key, as `certs init` made them: not for client use, so the
    // handshake refuses it.
    let run = s.run(&web1, &s.client("agent-web2"));
    assert_refused(&s, &web1, &run, "web2's agent certificate");
    assert!(
        run.stderr.contains("closed the TLS connection") && run.stderr.contains("not an agent's"),
        "{}",
        run.stderr
    );
    let r = grpc_run(&web1.addr, &s.client("agent-web2"), &s.playbook);
    assert!(r.is_err(), "web2's certificate got an answer: {r:?}");

    // A web2 certificate from the same CA that does allow client use (as the previous `certs
    // init` issued every leaf): past the handshake, refused for its identity.
    let old = s.openssl_leaf(
        "old-web2",
        "DNS:web2,DNS:localhost,IP:127.0.0.1",
        "serverAuth,clientAuth",
    );
    let (pem, key) = s.pair(&old);
    let old = TlsFiles {
        cert: pem.into(),
        key: key.into(),
        ca: vec![s.file("ca.pem")],
    };
    assert_eq!(
        grpc_run(&web1.addr, &old, &s.playbook),
        Ok(Code::PermissionDenied)
    );
    let run = s.run(&web1, &old);
    assert_refused(&s, &web1, &run, "web2 certificate with client use");
    assert!(
        run.stderr
            .contains("does not let in the client identity DNS:web2")
            && run.stderr.contains("--controller-identity"),
        "{}",
        run.stderr
    );
    // The agent logged who tried.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("WARN")
            && logged.contains("no trusted identity")
            && logged.contains("DNS:web2")
            && logged.contains("127.0.0.1"),
        "agent log:\n{logged}"
    );

    // The controller's certificate runs the playbook on either agent.
    let run = s.run(&web1, &s.client("controller"));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(s.marker.exists(), "the controller's run created nothing");
    std::fs::remove_file(&s.marker).unwrap();
    let run = s.run(&web2, &s.client("controller"));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn identity_the_agent_needs_the_client_usage_and_a_trusted_identity() {
    let s = Setup::new();
    // web1 trusting web2's identity instead of the controller's.
    let web2_id = rampart_rpc::identity::agent_identity("web2");
    let (web1, _) = s.agent("web1", "agent-web1", &["--controller-identity", &web2_id]);
    // web2's certificate carries that identity but no client usage: rustls refuses it at the
    // handshake, whatever the agent trusts.
    let run = s.run(&web1, &s.client("agent-web2"));
    assert_refused(&s, &web1, &run, "web2 without client use");
    assert!(
        run.stderr.contains("closed the TLS connection"),
        "{}",
        run.stderr
    );
    // The controller's certificate does not carry it.
    let run = s.run(&web1, &s.client("controller"));
    assert_refused(&s, &web1, &run, "controller not trusted");
    assert!(
        run.stderr.contains("does not let in the client identity")
            && run.stderr.contains("URI:spiffe://rampart/controller"),
        "{}",
        run.stderr
    );
    // A client certificate with that identity gets in.
    let ci = s.openssl_leaf("ci", &format!("URI:{web2_id}"), "clientAuth");
    let (pem, key) = s.pair(&ci);
    let ci = TlsFiles {
        cert: pem.into(),
        key: key.into(),
        ca: vec![s.file("ca.pem")],
    };
    let run = s.run(&web1, &ci);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(s.marker.exists());

    // A bad identity stops the agent at start-up.
    let bad = run_bounded(
        &bin("rampart-agent"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            path(&s.tmp.path().join("bad")),
            "--insecure-dev",
            "--controller-identity",
            "has space",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("--controller-identity"),
        "{}",
        bad.stderr
    );
}

#[test]
fn identity_a_client_only_certificate_cannot_serve() {
    let s = Setup::new();
    // The controller's names but only client use: an agent serving it is refused by the client.
    let client_only = s.openssl_leaf(
        "client-only",
        "URI:spiffe://rampart/controller,DNS:localhost,IP:127.0.0.1",
        "clientAuth",
    );
    let (agent, _) = s.agent("agent", &client_only, &[]);
    let run = s.run(&agent, &s.client("controller"));
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("cannot reach agent") && run.stderr.contains("certificate"),
        "{}",
        run.stderr
    );
    assert!(read_journals(&agent.state_dir).is_empty());
    assert!(!s.marker.exists());
}

#[test]
fn identity_the_controller_refuses_an_agent_that_is_not_the_inventory_host() {
    let mut fleet = Fleet::start(2, "max_fail_percentage = 0\n", |_, _| {});
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0: {}\n{}", r.stdout, r.stderr);

    // h1's address now serves h2's certificate (same CA): the inventory says h1 is there.
    let certs = fleet.certs();
    let ca = certs.join("ca.pem");
    fleet.restart_agent_with(
        0,
        &certs.join("agent-h2.pem"),
        &certs.join("agent-h2.key"),
        std::slice::from_ref(&ca),
    );
    let before = read_journals(&fleet.hosts[0].scenario.state).len();
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 2.0.0: {}\n{}", r.stdout, r.stderr);
    let fin = finished(&r.json());
    assert_eq!(fin["outcome"], "rolled_back", "{fin:#}");
    let h1 = fin["hosts"][0].clone();
    assert_eq!(h1["host"], "h1", "{fin:#}");
    let message = h1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is not host h1")
            && message.contains("does not name h1")
            && message.contains("--agent h1"),
        "the refusal says what is wrong and what to do: {h1:#}"
    );
    // Nothing ran on the agent at h1's address, and every host still serves 1.0.0.
    assert_eq!(read_journals(&fleet.hosts[0].scenario.state).len(), before);
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string()); 2]);

    // With its own certificate back, h1 is deployed.
    fleet.restart_agent_with(
        0,
        &certs.join("agent-h1.pem"),
        &certs.join("agent-h1.key"),
        std::slice::from_ref(&ca),
    );
    let r = fleet.deploy("2.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 2.0.0 again: {}\n{}", r.stdout, r.stderr);
    assert_eq!(fleet.serving(), vec![Some("2.0.0".to_string()); 2]);
}

#[test]
fn identity_the_controllers_agent_channels_check_the_inventory_host_name() {
    let s = Setup::new();
    let (web1, _) = s.agent("web1", "agent-web1", &[]);
    let (web2, _) = s.agent("web2", "agent-web2", &[]);
    // The controller's certificate can serve too (the CI API), but names no agent host.
    let (ctl_as_agent, _) = s.agent("impostor", "controller", &[]);
    let agents = rampart_controller::agents::Agents::new(Some(&s.client("controller"))).unwrap();
    block_on(async {
        agents.client("web1", &web1.addr).await.unwrap();
        agents.client("web2", &web2.addr).await.unwrap();
        for (addr, what) in [
            (&web2.addr, "web2's agent"),
            (&ctl_as_agent.addr, "controller"),
        ] {
            // Not retried: a wrong certificate does not fix itself within `unreachable_after`.
            let started = std::time::Instant::now();
            let e = agents
                .client_within("web1", addr, Duration::from_secs(30))
                .await
                .map(drop)
                .unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "[{what}] retried: {e}"
            );
            assert!(
                e.contains(&format!("the agent at {addr} is not host web1"))
                    && e.contains("certificate not valid for name \"web1\"")
                    && e.contains("rampart certs init DIR --agent web1"),
                "[{what}] {e}"
            );
        }
        // A channel made for web2 is not reused for web1 at the same address.
        let e = agents
            .client("web1", &web2.addr)
            .await
            .map(drop)
            .unwrap_err();
        assert!(e.contains("is not host web1"), "{e}");
    });
}
