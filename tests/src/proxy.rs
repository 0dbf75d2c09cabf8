//! A real nginx and a real HAProxy for the end-to-end tests, each started on a free 127.0.0.1
//! port with its own config, pid, socket and log files in a temp dir (the Debian packages'
//! services are never used), and the sample app on two slots behind them.
//!
//! Inputs: the slots' ports (and, for nginx, the slot live at start). Outputs: running
//! processes stopped by their pid when dropped (nginx's master gets SIGQUIT → SIGTERM → SIGKILL,
//! so its workers go with it), their directories and logs, and the admin socket's answers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::deploy::free_port;
use crate::{KillOnDrop, bin};

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The nginx binary (Debian's `nginx` package; `tests/run.sh` installs it).
pub const NGINX: &str = "/usr/sbin/nginx";
/// The HAProxy binary (Debian's `haproxy` package; `tests/run.sh` installs it).
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// Waits until something accepts on 127.0.0.1:`port`; false after `timeout`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The sample app serving `version` on a free port; SIGKILLed by its pid when dropped.
#[derive(Debug)]
pub struct SlotApp {
    _child: KillOnDrop,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The version it serves.
    pub version: String,
    _root: tempfile::TempDir,
}

impl SlotApp {
    /// Starts the sample app's binary with a release directory of its own serving `version`.
    pub fn start(version: &str) -> SlotApp {
        let root = tempfile::tempdir().expect("release dir");
        std::fs::write(root.path().join("version.txt"), format!("{version}\n")).unwrap();
        std::fs::write(root.path().join("health"), "UP\n").unwrap();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(bin("rampart-sample-app"))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--root"])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn the sample app");
            let child = KillOnDrop::new(child);
            if wait_port(port, START_TIMEOUT) {
                return SlotApp {
                    _child: child,
                    port,
                    version: version.to_string(),
                    _root: root,
                };
            }
        }
        panic!("the sample app {version} did not listen");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Stops a server's main process by its pid: `first` (its graceful signal), then SIGTERM, then
/// SIGKILL, each given a bounded time, and reaps it.
fn stop(child: &mut Option<Child>, first: Signal) {
    let Some(mut c) = child.take() else {
        return;
    };
    let pid = Pid::from_raw(c.id() as i32);
    for (signal, wait) in [
        (first, Duration::from_secs(5)),
        (Signal::SIGTERM, Duration::from_secs(3)),
        (Signal::SIGKILL, Duration::from_secs(3)),
    ] {
        let _ = kill(pid, signal);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = c.wait();
}

/// A real nginx in the foreground (`daemon off`), master and workers, on a free port, proxying
/// `/` to `upstream app`, which the include `DIR/rampart/app.conf` defines.
#[derive(Debug)]
pub struct NginxProc {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its prefix: `nginx.conf`, `nginx.pid`, `error.log`, `rampart/app.conf`, `extra/`.
    pub dir: tempfile::TempDir,
}

impl NginxProc {
    /// Starts nginx with `include_text` in the include.
    pub fn start(include_text: &str) -> NginxProc {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: install Debian's nginx package (apt-get install nginx; tests/run.sh does)"
        );
        let mut dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path().to_path_buf();
        for sub in ["rampart", "extra", "tmp"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("rampart/app.conf"), include_text).unwrap();
        for _ in 0..3 {
            let port = free_port();
            let conf = format!(
                "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
                 \x20 include {d}/rampart/app.conf;\n  include {d}/extra/*.conf;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; proxy_next_upstream off; }}\n  }}\n}}\n",
                d = d.display()
            );
            std::fs::write(d.join("nginx.conf"), conf).unwrap();
            let log = std::fs::File::create(d.join("stderr.log")).unwrap();
            let child = Command::new(NGINX)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-p")
                .arg(&d)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn nginx");
            let mut me = NginxProc {
                child: Some(child),
                port,
                dir,
            };
            if wait_port(port, START_TIMEOUT) {
                return me;
            }
            let log = me.log();
            stop(&mut me.child, Signal::SIGQUIT);
            if !log.contains("Address already in use") {
                panic!("nginx did not start on {port}; its log:\n{log}");
            }
            dir = me.take_dir();
        }
        panic!("nginx found no free port in 3 tries");
    }

    fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The main config file.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// The include Rampart owns.
    pub fn include(&self) -> PathBuf {
        self.dir.path().join("rampart/app.conf")
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The error log and stderr so far.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("error.log"), read("stderr.log"))
    }
}

impl Drop for NginxProc {
    fn drop(&mut self) {
        stop(&mut self.child, Signal::SIGQUIT);
    }
}

/// A real HAProxy in the foreground (`-db`) on a free port, with an admin socket, proxying to
/// `backend app` whose servers are the given `(name, port, disabled)` slots, health-checked
/// every 100 ms.
#[derive(Debug)]
pub struct HaproxyProc {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its directory: `haproxy.cfg`, `admin.sock`, `stderr.log`.
    pub dir: tempfile::TempDir,
}

impl HaproxyProc {
    /// Starts HAProxy with `servers` in `backend app`; waits until it serves.
    pub fn start(servers: &[(&str, u16, bool)]) -> HaproxyProc {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: install Debian's haproxy package (apt-get install haproxy; tests/run.sh does)"
        );
        let mut dir = tempfile::tempdir().expect("haproxy dir");
        let d = dir.path().to_path_buf();
        let lines: String = servers
            .iter()
            .map(|(name, port, disabled)| {
                format!(
                    "  server {name} 127.0.0.1:{port} check inter 100ms fall 2 rise 1{}\n",
                    if *disabled { " disabled" } else { "" }
                )
            })
            .collect();
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let cfg = format!(
                "global\n  stats socket {d}/admin.sock mode 600 level admin\n  stats timeout 10s\n\
                 defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend app\n\
                 backend app\n  option httpchk GET /actuator/health\n{lines}",
                d = d.display()
            );
            std::fs::write(d.join("haproxy.cfg"), cfg).unwrap();
            let log = std::fs::File::create(d.join("stderr.log")).unwrap();
            let child = Command::new(HAPROXY)
                .arg("-db")
                .arg("-f")
                .arg(d.join("haproxy.cfg"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn haproxy");
            let mut me = HaproxyProc {
                child: Some(child),
                port,
                dir,
            };
            if wait_port(port, START_TIMEOUT) && me.socket().exists() {
                return me;
            }
            last = me.log();
            stop(&mut me.child, Signal::SIGTERM);
            dir = std::mem::replace(&mut me.dir, tempfile::tempdir().unwrap());
            if !last.contains("ddress already in use") {
                break;
            }
        }
        panic!("haproxy did not start; its log:\n{last}");
    }

    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// One runtime API command's answer (bounded: 2 s, 1 MiB), read by the test itself.
    pub fn command(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.socket()).expect("connect to the admin socket");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.take(1 << 20).read_to_string(&mut out).unwrap();
        out
    }

    /// `(server, op_state, admin_state)` of `backend app` from `show servers state app`.
    pub fn servers_state(&self) -> Vec<(String, u8, u8)> {
        let text = self.command("show servers state app");
        let mut lines = text.lines().skip(1);
        let header: Vec<&str> = lines
            .next()
            .and_then(|l| l.strip_prefix('#'))
            .unwrap_or_else(|| panic!("show servers state: {text}"))
            .split_whitespace()
            .collect();
        let col = |n: &str| header.iter().position(|c| *c == n).unwrap();
        let (name, op, admin) = (col("srv_name"), col("srv_op_state"), col("srv_admin_state"));
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[name].to_string(),
                    f[op].parse().unwrap(),
                    f[admin].parse().unwrap(),
                )
            })
            .collect()
    }

    /// Waits until every server named is `running` (op state 2) in HAProxy's checks.
    pub fn wait_checked_up(&self, names: &[&str], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = self.servers_state();
            if names
                .iter()
                .all(|n| st.iter().any(|(s, op, _)| s == n && *op == 2))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for HaproxyProc {
    fn drop(&mut self) {
        stop(&mut self.child, Signal::SIGUSR1);
    }
}
