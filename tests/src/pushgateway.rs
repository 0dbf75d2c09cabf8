//! A real Prometheus Pushgateway (Debian's `prometheus-pushgateway`) on a free 127.0.0.1 port,
//! with its persistence file in a temp dir of its own; SIGKILLed (by PID) when dropped. The
//! package's own systemd unit (port 9091) is neither used nor touched.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;
use crate::deploy::{free_port, get};

/// Where Debian installs it.
pub const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";
/// How long it may take to answer `/-/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Pushgateway.
#[derive(Debug)]
pub struct Pushgateway {
    // Declared first: killed before its directory goes away.
    child: KillOnDrop,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Pushgateway {
    /// Starts one and waits until it is ready; panics naming the package when it is missing.
    pub fn start() -> Pushgateway {
        assert!(
            PathBuf::from(PUSHGATEWAY).exists(),
            "{PUSHGATEWAY} is missing: apt-get install prometheus-pushgateway (tests/run.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(PUSHGATEWAY)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--persistence.file={}",
                dir.path().join("pushgateway.db").display()
            ))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn prometheus-pushgateway");
        let child = KillOnDrop::new(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        while get(&format!("{url}/-/ready")).is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus-pushgateway on {url} not ready within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Pushgateway {
            child,
            url,
            _dir: dir,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What it exposes now (`/metrics`, text format).
    pub fn metrics(&self) -> String {
        get(&format!("{}/metrics", self.url)).expect("the pushgateway's /metrics")
    }
}
