//! A real `redis-server` for one test: no persistence, a password, a free 127.0.0.1 port,
//! stopped (SIGKILL, by its own PID) when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The password of every test server.
pub const PASSWORD: &str = "rampart-redis-pw";

/// A running redis-server.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    /// Starts one and waits (bounded) until it accepts connections.
    pub fn start() -> Redis {
        let port = crate::deploy::free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", PASSWORD, "--maxmemory", "64mb"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (the README's test command installs it; or apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child: Some(child),
            port,
        }
    }

    /// Stops it now (a test of "Redis down").
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
