//! A fleet on 127.0.0.1: a real `rampart-controller` and N real `rampart-agent` processes, each
//! agent with its own state dir and its own sample-app host (port, public path, pid file), all
//! talking mutual TLS with certificates from `rampart certs init`, and the `rampart` CLI pointed
//! at the controller with a bearer token.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::deploy::{Scenario, package_sample_app};
use crate::{AgentProc, CliRun, KillOnDrop, bin, rampart, wait_listening};

/// The bearer token the fleet's CLI uses (token `ci`, scope `admin`: it may call every RPC).
pub const TOKEN: &str = "fleet-test-token";

/// One host: its sample-app scenario and its agent.
#[derive(Debug)]
pub struct Host {
    /// Inventory name (`h1`, `h2`, ...).
    pub name: String,
    /// The host's files and app.
    pub scenario: Scenario,
    /// Its agent, when running.
    pub agent: Option<AgentProc>,
    /// The agent's address (fixed across restarts).
    pub listen: String,
}

/// A `rampart-controller` process.
#[derive(Debug)]
pub struct ControllerProc {
    child: KillOnDrop,
    /// Where it serves.
    pub addr: String,
}

impl ControllerProc {
    /// Starts a controller with `config`; waits until it serves.
    pub fn start(config: &Path) -> ControllerProc {
        let level = std::env::var("RAMPART_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Self::spawn(config, &level, Stdio::inherit())
    }

    /// As [`ControllerProc::start`], its stderr (logs at `info` and up) written to the file
    /// `log` instead of the test's, so a test can read what it said (a panic, a warning).
    pub fn start_logging(config: &Path, log: &Path) -> ControllerProc {
        let file = std::fs::File::create(log).expect("controller log file");
        Self::spawn(config, "info", Stdio::from(file))
    }

    fn spawn(config: &Path, log_level: &str, stderr: Stdio) -> ControllerProc {
        let mut child = Command::new(bin("rampart-controller"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn rampart-controller");
        let addr = wait_listening(&mut child, "rampart-controller", Duration::from_secs(60));
        ControllerProc {
            child: KillOnDrop::new(child),
            addr,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILLs it and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// Sends it SIGTERM and waits at most `timeout` for it to exit: its exit status, or `None`
    /// when it was still running (it is SIGKILLed then).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        use nix::sys::signal::{Signal, kill};
        let mut child = self.child.0.take()?;
        let _ = kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait rampart-controller") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The top-level TOML of a controller named `instance` whose store is database `db` of `pg`
/// (which must exist), with `store_extra` added to its `[store]` section: for
/// [`Fleet::start_with_dist`] and [`Fleet::peer_config`].
pub fn pg_store_toml(pg: &crate::pg::Pg, db: &str, instance: &str, store_extra: &str) -> String {
    format!(
        "instance = \"{instance}\"\n[store]\nurl = \"{}\"\n{store_extra}\n",
        pg.store_url(db)
    )
}

/// The fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Scratch dir: certificates, config, inventory, token, the controller's state.
    pub dir: tempfile::TempDir,
    /// The sample app's tarballs.
    pub dist: PathBuf,
    /// The hosts, in inventory order.
    pub hosts: Vec<Host>,
    /// The controller, when running.
    pub controller: Option<ControllerProc>,
    /// Its configuration file.
    pub config: PathBuf,
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", crate::deploy::free_port())
}

impl Fleet {
    /// Starts `n` agents and a controller whose one environment, `prod`, has them all.
    /// `env_toml` is added to `[environments.prod]` (e.g. `serial = [1, "50%", "100%"]`);
    /// `host_vars` may change each host's inventory variables (index from 0).
    pub fn start(n: usize, env_toml: &str, host_vars: impl Fn(usize, &mut Value)) -> Fleet {
        Self::start_with_toml(n, env_toml, "", host_vars)
    }

    /// As [`Fleet::start`], with extra top-level TOML for the controller (e.g. a `[store]`
    /// section from [`pg_store_toml`], tokens, `[artifacts]`).
    pub fn start_with_toml(
        n: usize,
        env_toml: &str,
        top_toml: &str,
        host_vars: impl Fn(usize, &mut Value),
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let dist = dir.path().join("dist");
        package_sample_app(&dist);
        Self::start_with_dist(dir, dist, n, env_toml, top_toml, host_vars)
    }

    /// As [`Fleet::start`], with tarballs packaged once elsewhere and extra top-level TOML
    /// (e.g. a `[store]` section).
    pub fn start_with_dist(
        dir: tempfile::TempDir,
        dist: PathBuf,
        n: usize,
        env_toml: &str,
        top_toml: &str,
        host_vars: impl Fn(usize, &mut Value),
    ) -> Fleet {
        let certs = dir.path().join("certs");
        let mut args = vec!["certs", "init", certs.to_str().unwrap()];
        let names: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
        for name in &names {
            args.push("--agent");
            args.push(name);
        }
        let r = rampart(&args);
        assert_eq!(r.code, 0, "certs init: {}", r.stderr);
        let mut hosts = Vec::new();
        let mut inventory = String::from("all:\n  hosts:\n");
        for (i, name) in names.iter().enumerate() {
            let scenario = Scenario::with_dist(&dist);
            let listen = free_addr();
            let mut vars = scenario.vars_with("0.0.0", "sha256:none", "none");
            vars.as_object_mut().unwrap().remove("target_version");
            vars["rampart_agent"] = Value::String(listen.clone());
            host_vars(i, &mut vars);
            inventory.push_str(&format!("    {name}: {vars}\n"));
            let mut host = Host {
                name: name.clone(),
                scenario,
                agent: None,
                listen,
            };
            host.agent = Some(start_agent(&host, &certs));
            hosts.push(host);
        }
        std::fs::write(dir.path().join("inventory.yml"), inventory).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let hash = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(TOKEN.as_bytes());
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let c = |f: &str| certs.join(f).display().to_string();
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\nstate_dir = \"{state}\"\n{top_toml}\n\
                 [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
                 [agent_tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = [\"{ca}\"]\n\
                 [[tokens]]\nname = \"ci\"\nsha256 = \"{hash}\"\nscopes = [\"admin\"]\n\
                 [environments.prod]\ninventory = \"inventory.yml\"\nunreachable_after_seconds = 4\n\
                 rescue_wait_seconds = 60\nwait_timeout_seconds = 120\n{env_toml}\n",
                listen = free_addr(),
                state = dir.path().join("controller").display(),
                cert = c("controller.pem"),
                key = c("controller.key"),
                ca = c("ca.pem"),
            ),
        )
        .unwrap();
        let controller = Some(ControllerProc::start(&config));
        Fleet {
            dir,
            dist,
            hosts,
            controller,
            config,
        }
    }

    /// The certificates directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Runs `rampart ARGS… --controller … --ca … --token-file …`.
    pub fn cli(&self, args: &[&str]) -> CliRun {
        self.cli_at(
            &self.controller.as_ref().expect("controller running").addr,
            args,
        )
    }

    /// [`Fleet::cli`] against the controller at `addr` (another one sharing the store).
    pub fn cli_at(&self, addr: &str, args: &[&str]) -> CliRun {
        let addr = format!("https://{addr}");
        let ca = self.certs().join("ca.pem");
        let token = self.dir.path().join("token");
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&[
            "--controller",
            &addr,
            "--ca",
            ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ]);
        rampart(&all)
    }

    /// The `--artifact app=…` argument of a packaged version.
    pub fn artifact_arg(&self, version: &str) -> String {
        format!(
            "app={}",
            self.dist
                .join(format!("sample-app-{version}.tar.gz"))
                .display()
        )
    }

    /// `deploy --env prod --version V --artifact app=… --json [extra…]`.
    pub fn deploy_args(&self, version: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "deploy",
            "--env",
            "prod",
            "--version",
            version,
            "--artifact",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(self.artifact_arg(version));
        args.push("--json".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `rampart deploy --env prod --version V --artifact app=… --json [extra…]`, to its end.
    pub fn deploy(&self, version: &str, extra: &[&str]) -> CliRun {
        let args = self.deploy_args(version, extra);
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The same deploy in the background, its JSON lines read as they come.
    pub fn spawn_deploy(&self, version: &str, extra: &[&str]) -> LiveCli {
        let args = self.deploy_args(version, extra);
        self.spawn_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The version each host's app serves (None: not answering).
    pub fn serving(&self) -> Vec<Option<String>> {
        self.hosts.iter().map(|h| h.scenario.serving()).collect()
    }

    /// SIGKILLs host `i`'s agent.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.hosts[i].agent.take() {
            a.kill9();
        }
    }

    /// Starts host `i`'s agent again on its address (it finishes interrupted transactions first).
    pub fn restart_agent(&mut self, i: usize) {
        let certs = self.certs();
        let a = start_agent(&self.hosts[i], &certs);
        self.hosts[i].agent = Some(a);
    }

    /// Restarts host `i`'s agent with other certificate files (`cas`: the CAs it trusts to
    /// sign the controller's certificate).
    pub fn restart_agent_with(&mut self, i: usize, cert: &Path, key: &Path, cas: &[PathBuf]) {
        self.kill_agent(i);
        let host = &self.hosts[i];
        let forensics = host.scenario.path().join("forensics").display().to_string();
        let mut args = vec![
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--forensics-dir".into(),
            forensics,
        ];
        for ca in cas {
            args.push("--tls-ca".into());
            args.push(ca.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = AgentProc::start_tls_on(&host.scenario.state, &host.listen, &args);
        self.hosts[i].agent = Some(a);
    }

    /// Replaces `from` with `to` in the controller's configuration (takes effect at the next
    /// [`Fleet::restart_controller`]).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from:?} not in {text}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// SIGKILLs the controller.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill9();
        }
    }

    /// Starts the controller again with the same configuration.
    pub fn restart_controller(&mut self) {
        self.controller = Some(ControllerProc::start(&self.config));
    }

    /// The configuration of another controller sharing this fleet's store and environment:
    /// the fleet's file with a listen address of its own and instance name `instance` (the
    /// fleet's configuration must name its own, e.g. with [`pg_store_toml`]).
    pub fn peer_config(&self, instance: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
        let own = text
            .lines()
            .find(|l| l.starts_with("instance = "))
            .expect("the fleet's configuration names its instance");
        let config = self.dir.path().join(format!("controller-{instance}.toml"));
        std::fs::write(
            &config,
            text.replace(listen, &format!("listen = \"{}\"", free_addr()))
                .replace(own, &format!("instance = \"{instance}\"")),
        )
        .unwrap();
        config
    }
}

fn start_agent(host: &Host, certs: &Path) -> AgentProc {
    let c = |f: String| certs.join(f).display().to_string();
    let cert = c(format!("agent-{}.pem", host.name));
    let key = c(format!("agent-{}.key", host.name));
    let ca = c("ca.pem".into());
    let forensics = host.scenario.path().join("forensics").display().to_string();
    AgentProc::start_tls_on(
        &host.scenario.state,
        &host.listen,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--forensics-dir",
            &forensics,
        ],
    )
}

/// The last `finished` event of a CLI run's JSON lines.
pub fn finished(lines: &[Value]) -> Value {
    lines
        .iter()
        .rev()
        .find(|v| v["type"] == "finished")
        .cloned()
        .unwrap_or_else(|| panic!("no finished event in {lines:#?}"))
}

/// The JSON lines of a CLI run whose `type` is `kind`.
pub fn events_of(run: &CliRun, kind: &str) -> Vec<Value> {
    run.json()
        .into_iter()
        .filter(|v| v["type"] == kind)
        .collect()
}

/// A `rampart` command running in the background, its JSON lines read as they come.
#[derive(Debug)]
pub struct LiveCli {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every JSON line seen so far.
    pub seen: Vec<Value>,
}

impl Fleet {
    /// Starts `rampart ARGS… --controller … --ca … --token-file …` in the background.
    pub fn spawn_cli(&self, args: &[&str]) -> LiveCli {
        let addr = format!(
            "https://{}",
            self.controller.as_ref().expect("controller running").addr
        );
        let ca = self.certs().join("ca.pem");
        let token = self.dir.path().join("token");
        let mut child = Command::new(bin("rampart"))
            .args(args)
            .args(["--controller", &addr, "--ca"])
            .arg(&ca)
            .arg("--token-file")
            .arg(&token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rampart");
        let stdout = child.stdout.take().expect("rampart stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        LiveCli {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }
}

impl LiveCli {
    /// Waits (at most `timeout`) for a JSON line matching `pred`; panics naming `what`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no `{what}` within {timeout:?}; seen: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the command to exit (at most `timeout`); its exit code and every JSON line.
    pub fn finish(mut self, timeout: Duration) -> (i32, Vec<Value>) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait rampart") {
                // The reader thread ends with the pipe.
                while let Ok(v) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(v);
                }
                return (status.code().unwrap_or(-1), std::mem::take(&mut self.seen));
            }
            while let Ok(v) = self.lines.try_recv() {
                self.seen.push(v);
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "rampart did not exit within {timeout:?}; seen: {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LiveCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a host serve nothing on its port once 2.0.0 is its release (its start command moves
/// that version to `other_port`), so the health suite fails on that host only: give it to
/// [`Fleet::start`]'s per-host hook for the host that must fail.
pub fn break_v2_on(vars: &mut Value, other_port: u16) {
    let start = vars["components"][0]["service"]["start"]
        .as_str()
        .unwrap()
        .to_string();
    let (prefix, rest) = start.split_once("SAMPLE_APP_LISTEN=127.0.0.1:").unwrap();
    let (port, tail) = rest.split_once(' ').unwrap();
    let app = vars["components"][0]["path"].as_str().unwrap().to_string();
    vars["components"][0]["service"]["start"] = Value::String(format!(
        "{prefix}p={port}; grep -qx 2.0.0 {app}/version.txt && p={other_port}; SAMPLE_APP_LISTEN=127.0.0.1:$p {tail}"
    ));
}
