//! The nginx adapter: Rampart owns one include file holding `upstream NAME { server ADDR; }`
//! and nothing else of nginx's config.
//!
//! A switch renders the new include in memory, writes it crash-safely over the old one
//! ([`crate::durable::write_atomic`]), runs `nginx -t` (with the configured `-c`/`-p`), and on a
//! refusal puts the previous include back and fails with nginx's message before anything is
//! reloaded. Then it reloads nginx (`nginx -s reload`, a configured command, or SIGHUP to the
//! master pid from a pid file): nginx's graceful reload lets the old workers finish their
//! requests while new ones use the new upstream. Finally it confirms through the proxy: GETs of
//! the confirmation URL (on this host) until [`Confirm::passes`] answers in a row are 2xx and,
//! when asked, hold the expected text, bounded in attempts and time. An unconfirmed switch is
//! undone (the previous include, reloaded again) and fails.
//!
//! [`Nginx::current`] reads the include: the slot whose address its `server` line names.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    Plan, Proxy, ProxyError, Slot, Slots, Switched, check_address, check_name, clip, short,
};
use crate::durable;
use crate::process::{Ran, run_bounded};

/// The first line of every include Rampart writes; a non-empty file without it is not ours.
pub const MARKER: &str = "# rampart proxy_switch: live slot ";
/// The largest include read back.
pub const MAX_INCLUDE_BYTES: u64 = 64 * 1024;
/// The most confirmation requests of one switch.
pub const MAX_CONFIRM_ATTEMPTS: u32 = 1000;
/// The longest confirmation answer read (headers and body).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// The longest confirmation path and expected text.
const MAX_URL: usize = 1024;
const MAX_EXPECT: usize = 256;
/// One confirmation request's connect and I/O timeouts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How nginx is told to load the new include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// `NGINX [-c CONF] [-p PREFIX] -s reload`.
    Signal,
    /// A shell command line, run with `/bin/sh -c` (e.g. `systemctl reload nginx`).
    Command(String),
    /// SIGHUP to the master whose pid this file holds.
    PidFile(PathBuf),
}

/// How a switch is confirmed through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// The URL as given, for messages.
    pub url: String,
    addr: SocketAddr,
    host: String,
    path: String,
    /// Text the answer (status line, headers or body) must hold, e.g. the new release's version
    /// or a header naming the slot.
    pub expect: Option<String>,
    /// Answers in a row that must pass.
    pub passes: u32,
    /// The longest the confirmation may take.
    pub timeout: Duration,
    /// Between two requests.
    pub interval: Duration,
}

impl Confirm {
    /// Parses `http://HOST[:PORT]/PATH` where HOST is this host (`localhost`, `127.x.y.z`,
    /// `[::1]`): the confirmation goes through the local proxy, never elsewhere.
    pub fn new(
        url: &str,
        expect: Option<String>,
        passes: u32,
        timeout: Duration,
    ) -> Result<Confirm, ProxyError> {
        let bad = |why: &str| ProxyError::Invalid {
            what: "confirm_url",
            value: short(url),
            why: why.to_string(),
        };
        if url.len() > MAX_URL || url.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(bad("at most 1024 printable characters without spaces"));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http:// (the proxy on this host)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let addr = with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(|a| a.ip().is_loopback()))
            .filter(|_| {
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
                host == "localhost" || host.starts_with("127.") || host.starts_with('[')
            })
            .ok_or_else(|| bad("its host must be this host: localhost, 127.x.y.z or [::1]"))?;
        if let Some(e) = &expect
            && (e.is_empty() || e.len() > MAX_EXPECT || e.chars().any(char::is_control))
        {
            return Err(ProxyError::Invalid {
                what: "confirm_expect",
                value: short(e),
                why: format!("1 to {MAX_EXPECT} characters, no control characters"),
            });
        }
        if !(1..=100).contains(&passes) {
            return Err(ProxyError::Invalid {
                what: "confirm_passes",
                value: passes.to_string(),
                why: "1 to 100".into(),
            });
        }
        if timeout.is_zero() || timeout > Duration::from_secs(600) {
            return Err(ProxyError::Invalid {
                what: "confirm_timeout",
                value: format!("{timeout:?}"),
                why: "above 0 and at most 600 s".into(),
            });
        }
        Ok(Confirm {
            url: url.to_string(),
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            expect,
            passes,
            timeout,
            interval: Duration::from_millis(50),
        })
    }
}

/// An nginx whose upstream Rampart switches.
#[derive(Debug, Clone)]
pub struct NginxConfig {
    /// The include Rampart owns, e.g. `/etc/nginx/rampart/app.conf`.
    pub include: PathBuf,
    /// The upstream's name, as the proxy's `proxy_pass http://NAME` names it.
    pub upstream: String,
    /// Slot name → `IP:PORT`.
    pub slots: Slots,
    /// The nginx binary.
    pub nginx: String,
    /// `-c`: the main config file, when not nginx's default.
    pub conf: Option<PathBuf>,
    /// `-p`: the prefix, when not nginx's default.
    pub prefix: Option<PathBuf>,
    /// How nginx is reloaded.
    pub reload: Reload,
    /// How the switch is confirmed (none: not confirmed, reported as such).
    pub confirm: Option<Confirm>,
    /// The deadline of each `nginx -t` and reload.
    pub command_timeout: Duration,
}

/// The nginx adapter.
#[derive(Debug, Clone)]
pub struct Nginx {
    cfg: NginxConfig,
}

impl Nginx {
    /// Checks the configuration (names, the binary's and files' paths); reads nothing yet.
    pub fn new(cfg: NginxConfig) -> Result<Nginx, ProxyError> {
        check_name("upstream", &cfg.upstream)?;
        for s in cfg.slots.iter() {
            check_address(&s.target)?;
        }
        let path_ok = |what: &'static str, p: &Path| {
            if p.is_absolute() && p.to_str().is_some_and(|s| s.len() <= 4096) {
                Ok(())
            } else {
                Err(ProxyError::Invalid {
                    what,
                    value: short(&p.to_string_lossy()),
                    why: "an absolute path".into(),
                })
            }
        };
        path_ok("include", &cfg.include)?;
        if cfg.include.file_name().is_none() {
            return Err(ProxyError::Invalid {
                what: "include",
                value: short(&cfg.include.to_string_lossy()),
                why: "must name a file".into(),
            });
        }
        for (what, p) in [("conf", &cfg.conf), ("prefix", &cfg.prefix)] {
            if let Some(p) = p {
                path_ok(what, p)?;
            }
        }
        if let Reload::PidFile(p) = &cfg.reload {
            path_ok("pid_file", p)?;
        }
        if cfg.nginx.is_empty() || cfg.nginx.len() > 4096 || cfg.nginx.contains(char::is_control) {
            return Err(ProxyError::Invalid {
                what: "nginx",
                value: short(&cfg.nginx),
                why: "the nginx binary: a name or a path".into(),
            });
        }
        Ok(Nginx { cfg })
    }

    /// `nginx [-c CONF] [-p PREFIX] EXTRA...`.
    fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![self.cfg.nginx.clone()];
        if let Some(c) = &self.cfg.conf {
            argv.extend(["-c".to_string(), c.to_string_lossy().into_owned()]);
        }
        if let Some(p) = &self.cfg.prefix {
            argv.extend(["-p".to_string(), p.to_string_lossy().into_owned()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// The include's text, none when it does not exist.
    fn read_include(&self) -> Result<Option<String>, ProxyError> {
        let path = &self.cfg.include;
        let err = |source| ProxyError::ReadInclude {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let mut text = String::new();
        file.take(MAX_INCLUDE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(err)?;
        if text.len() as u64 > MAX_INCLUDE_BYTES {
            return Err(ProxyError::ForeignInclude {
                path: path.clone(),
                why: format!("is larger than {MAX_INCLUDE_BYTES} bytes"),
            });
        }
        Ok(Some(text))
    }

    /// Puts `previous` back (removes the include when there was none).
    fn restore(&self, previous: Option<&str>) -> bool {
        let path = &self.cfg.include;
        let done = match previous {
            Some(text) => durable::write_atomic(path, text.as_bytes(), None),
            None => std::fs::remove_file(path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .and_then(|()| durable::fsync_dir(&durable::parent_dir(path))),
        };
        if let Err(e) = &done {
            tracing::error!(include = %path.display(), error = %e, "cannot restore the nginx include");
        }
        done.is_ok()
    }

    /// `nginx -t`: none when nginx accepts its config, else its message and the command line.
    fn test_config(&self) -> Option<(String, String)> {
        let argv = self.argv(&["-t", "-q"]);
        let ran = run_bounded(&argv, &[], Instant::now() + self.cfg.command_timeout);
        (!ran.success()).then(|| (argv.join(" "), clip(&ran.describe())))
    }

    /// Tells nginx to load its config again; the error says what was run and what happened.
    fn reload(&self) -> Result<(), (String, String)> {
        let deadline = Instant::now() + self.cfg.command_timeout;
        let run = |argv: Vec<String>| -> Result<(), (String, String)> {
            let ran: Ran = run_bounded(&argv, &[], deadline);
            if ran.success() {
                Ok(())
            } else {
                Err((argv.join(" "), clip(&ran.describe())))
            }
        };
        match &self.cfg.reload {
            Reload::Signal => run(self.argv(&["-s", "reload"])),
            Reload::Command(line) => run(vec!["/bin/sh".into(), "-c".into(), line.clone()]),
            Reload::PidFile(path) => {
                let what = format!("SIGHUP to the pid in {}", path.display());
                let pid = read_pid(path).map_err(|e| (what.clone(), e))?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .map_err(|e| (what, format!("kill {pid}: {e}")))
            }
        }
    }

    /// GETs the confirmation URL until enough answers in a row pass; the attempts made, or the
    /// attempts and the last failure.
    fn confirm(&self, confirm: &Confirm) -> Result<u32, (u32, String)> {
        let deadline = Instant::now() + confirm.timeout;
        let mut attempts = 0;
        let mut in_a_row = 0;
        let mut last = String::from("no answer yet");
        loop {
            attempts += 1;
            match http_get(confirm) {
                Ok((status, text)) => {
                    let expected = confirm.expect.as_deref().is_none_or(|e| text.contains(e));
                    if (200..300).contains(&status) && expected {
                        in_a_row += 1;
                        if in_a_row >= confirm.passes {
                            return Ok(attempts);
                        }
                    } else {
                        in_a_row = 0;
                        last = match &confirm.expect {
                            Some(e) if !expected => format!("status {status}, without {e:?}"),
                            _ => format!("status {status}"),
                        };
                    }
                }
                Err(e) => {
                    in_a_row = 0;
                    last = e;
                }
            }
            if attempts >= MAX_CONFIRM_ATTEMPTS || Instant::now() + confirm.interval >= deadline {
                return Err((attempts, last));
            }
            std::thread::sleep(confirm.interval);
        }
    }
}

impl Nginx {
    /// After an undo: `passes` 2xx answers in a row of the confirmation URL without the
    /// expected text (the new slot's), within the confirmation timeout. Without an expected
    /// text there is nothing to tell the slots apart: the answers only need to be 2xx.
    fn confirm_gone(&self, confirm: &Confirm) -> bool {
        let deadline = Instant::now() + confirm.timeout;
        let mut in_a_row = 0;
        for _ in 0..MAX_CONFIRM_ATTEMPTS {
            match http_get(confirm) {
                Ok((status, text))
                    if (200..300).contains(&status)
                        && confirm.expect.as_deref().is_none_or(|e| !text.contains(e)) =>
                {
                    in_a_row += 1;
                    if in_a_row >= confirm.passes {
                        return true;
                    }
                }
                _ => in_a_row = 0,
            }
            if Instant::now() + confirm.interval >= deadline {
                return false;
            }
            std::thread::sleep(confirm.interval);
        }
        false
    }
}

impl Proxy for Nginx {
    fn current(&self) -> Result<Option<Slot>, ProxyError> {
        let Some(text) = self.read_include()? else {
            return Ok(None);
        };
        let addr =
            parse_include(&text, &self.cfg.upstream).map_err(|why| ProxyError::ForeignInclude {
                path: self.cfg.include.clone(),
                why,
            })?;
        Ok(addr.and_then(|a| self.cfg.slots.by_target(&a)))
    }

    fn plan(&self, to: &Slot) -> Result<Plan, ProxyError> {
        self.cfg.slots.check(to)?;
        let before_text = self.read_include()?;
        let before = self.current()?;
        let after_text = render(&self.cfg.upstream, to);
        let changed = before_text.as_deref() != Some(after_text.as_str());
        Ok(Plan {
            before,
            after: to.clone(),
            changed,
            text: Some((before_text, after_text)),
        })
    }

    fn switch(&self, to: &Slot) -> Result<Switched, ProxyError> {
        let started = Instant::now();
        let plan = self.plan(to)?;
        if !plan.changed {
            return Ok(Switched::unconfirmed(plan, started));
        }
        let (previous, next) = plan.text.clone().unwrap_or_default();
        let include = &self.cfg.include;
        durable::write_atomic(include, next.as_bytes(), Some(0o644)).map_err(|source| {
            ProxyError::WriteInclude {
                path: include.clone(),
                source,
            }
        })?;
        if let Some((command, message)) = self.test_config() {
            let restored = self.restore(previous.as_deref());
            return Err(ProxyError::ConfigRejected {
                path: include.clone(),
                slot: to.name.clone(),
                command,
                message,
                restored,
            });
        }
        if let Err((command, message)) = self.reload() {
            let restored = self.restore(previous.as_deref());
            return Err(ProxyError::Reload {
                command,
                message,
                restored,
            });
        }
        tracing::info!(upstream = %self.cfg.upstream, slot = %to.name, "nginx reloaded with the new upstream");
        let Some(confirm) = &self.cfg.confirm else {
            return Ok(Switched::unconfirmed(plan, started));
        };
        match self.confirm(confirm) {
            Ok(attempts) => Ok(Switched {
                plan,
                confirmed: true,
                attempts,
                elapsed: started.elapsed(),
                drained: None,
            }),
            Err((attempts, last)) => {
                // Back on the previous include, and seen so through the proxy: `passes`
                // answers in a row without the new slot's marker (a reload returns before
                // nginx has swapped its workers).
                let restored = self.restore(previous.as_deref())
                    && self.reload().is_ok()
                    && self.confirm_gone(confirm);
                Err(ProxyError::NotConfirmed {
                    slot: to.name.clone(),
                    url: confirm.url.clone(),
                    attempts,
                    last,
                    restored,
                })
            }
        }
    }
}

/// The include for `slot` live in `upstream`.
pub fn render(upstream: &str, slot: &Slot) -> String {
    format!(
        "{MARKER}{name}\n# written by rampart; edits are replaced at the next switch\nupstream {upstream} {{\n    server {addr};\n}}\n",
        name = slot.name,
        addr = slot.target,
    )
}

/// The address the include's `server` line names (none for an empty file); an error when the
/// file is not one Rampart wrote for `upstream`.
pub fn parse_include(text: &str, upstream: &str) -> Result<Option<String>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    if !text.starts_with(MARKER) {
        return Err(format!("does not start with {:?}", MARKER.trim()));
    }
    if !text
        .lines()
        .any(|l| l.trim() == format!("upstream {upstream} {{"))
    {
        return Err(format!("does not define upstream {upstream}"));
    }
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::trim)
        .collect();
    match servers.as_slice() {
        [one] => Ok(Some(one.to_string())),
        _ => Err(format!(
            "names {} servers where rampart writes one",
            servers.len()
        )),
    }
}

/// The pid a pid file holds (above 1).
fn read_pid(path: &Path) -> Result<i32, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(32).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(format!("{} does not hold a pid", path.display())),
    }
}

/// One bounded HTTP/1.1 GET: the status and the answer's text (headers and body, at most
/// 64 KiB).
fn http_get(c: &Confirm) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&c.addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect to {}: {e}", c.addr))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rampart-proxy-switch\r\nConnection: close\r\n\r\n",
        c.path, c.host
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send to {}: {e}", c.addr))?;
    let mut buf = Vec::new();
    s.take(MAX_ANSWER_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| format!("read from {}: {e}", c.addr))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status line from {}", c.addr))?;
    Ok((status, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, addr: &str) -> Slot {
        Slot {
            name: name.into(),
            target: addr.into(),
        }
    }

    #[test]
    fn render_and_parse_round_trip() {
        let text = render("app", &slot("green", "127.0.0.1:8082"));
        assert!(text.starts_with("# rampart proxy_switch: live slot green\n"));
        assert!(text.contains("upstream app {\n    server 127.0.0.1:8082;\n}\n"));
        assert_eq!(
            parse_include(&text, "app").unwrap().as_deref(),
            Some("127.0.0.1:8082")
        );
        assert_eq!(parse_include("", "app").unwrap(), None);
    }

    #[test]
    fn an_include_rampart_did_not_write_is_refused() {
        let theirs = "http { server { listen 80; } }\n";
        assert!(
            parse_include(theirs, "app")
                .unwrap_err()
                .contains("does not start")
        );
        let other = render("web", &slot("blue", "127.0.0.1:1"));
        assert!(
            parse_include(&other, "app")
                .unwrap_err()
                .contains("upstream app")
        );
        let two =
            format!("{MARKER}blue\nupstream app {{\n server 1.2.3.4:1;\n server 1.2.3.4:2;\n}}\n");
        assert!(
            parse_include(&two, "app")
                .unwrap_err()
                .contains("2 servers")
        );
    }

    #[test]
    fn the_confirmation_url_must_be_this_host() {
        let t = Duration::from_secs(5);
        let c = Confirm::new("http://127.0.0.1:8080/actuator/info", None, 3, t).unwrap();
        assert_eq!(c.path, "/actuator/info");
        assert_eq!(c.addr.port(), 8080);
        let c = Confirm::new("http://localhost", Some("2.0.0".into()), 1, t).unwrap();
        assert_eq!((c.path.as_str(), c.addr.port()), ("/", 80));
        for bad in [
            "https://127.0.0.1/",
            "http://example.com/",
            "http://10.0.0.1:80/",
            "http://127.0.0.1:80/a b",
            "ftp://127.0.0.1/",
        ] {
            assert!(Confirm::new(bad, None, 1, t).is_err(), "{bad}");
        }
        assert!(Confirm::new("http://127.0.0.1/", Some(String::new()), 1, t).is_err());
        assert!(Confirm::new("http://127.0.0.1/", None, 0, t).is_err());
        assert!(Confirm::new("http://127.0.0.1/", None, 1, Duration::ZERO).is_err());
    }
}
