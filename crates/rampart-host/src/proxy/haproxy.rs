//! The HAProxy adapter: the runtime API over the admin socket (`stats socket PATH level admin`),
//! no reload and no config file written.
//!
//! Each slot is a server of one backend (the slots map names to server names). A switch reads
//! `show servers state BACKEND` (every slot's server must exist: otherwise a clear error and
//! nothing changed), sets the new server `ready`, waits (bounded) until HAProxy reports it
//! running — a server that never comes up is put back to its previous admin state and the switch
//! fails with traffic untouched — then sets every other ready slot's server to `drain`, so its
//! in-flight requests finish and it takes no new ones, confirms with `show servers state`, and
//! waits up to the drain timeout for the drained servers' sessions (`show stat`) to reach 0.
//!
//! HAProxy reports a server leaving maintenance as running at once, before its first health
//! check, and its checks take it down only after `fall` failures: "running" here is HAProxy's
//! word, not a health gate. The slot must be health-gated on its own address before the switch
//! (the blue/green lifecycle does that).
//!
//! The live slot ([`Haproxy::current`]) is the one slot whose server is ready (neither drain nor
//! maintenance flags in `srv_admin_state`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Plan, Proxy, ProxyError, Slot, Slots, Switched, check_name, clip, short};

/// The longest answer read from the admin socket.
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;
/// The most state reads while waiting for a server to come up or drain.
pub const MAX_POLLS: u32 = 10_000;
/// Between two state reads.
const POLL: Duration = Duration::from_millis(50);

/// `srv_op_state` 2: `SRV_ST_RUNNING`.
pub const OP_RUNNING: u8 = 2;
/// `srv_admin_state` maintenance flags in effect (forced, inherited, resolution, hostname).
/// `0x04` (`CMAINT`, `disabled` in the config) is left out: HAProxy keeps it after
/// `state ready` as a record of the config, while the server serves.
pub const ADMIN_MAINT: u8 = 0x01 | 0x02 | 0x20 | 0x40;
/// `srv_admin_state` drain flags (forced, inherited).
pub const ADMIN_DRAIN: u8 = 0x08 | 0x10;

/// An HAProxy whose backend Rampart switches.
#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    /// The admin socket.
    pub socket: PathBuf,
    /// The backend holding the slots' servers.
    pub backend: String,
    /// Slot name → server name.
    pub slots: Slots,
    /// Each socket command's connect, write and read timeout.
    pub io_timeout: Duration,
    /// How long the new server may take to come up once ready.
    pub ready_timeout: Duration,
    /// How long the old servers' sessions are waited for (0: not waited for).
    pub drain_timeout: Duration,
}

/// One server's line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `srv_name`.
    pub name: String,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`: flags, see [`ADMIN_MAINT`], [`ADMIN_DRAIN`].
    pub admin_state: u8,
}

impl ServerState {
    /// Takes new traffic as far as the admin state goes.
    pub fn is_ready(&self) -> bool {
        self.admin_state & (ADMIN_MAINT | ADMIN_DRAIN) == 0
    }

    /// In drain (and not maintenance).
    pub fn is_draining(&self) -> bool {
        self.admin_state & ADMIN_DRAIN != 0 && self.admin_state & ADMIN_MAINT == 0
    }

    /// In maintenance.
    pub fn is_maint(&self) -> bool {
        self.admin_state & ADMIN_MAINT != 0
    }

    /// `ready`, `drain` or `maint`, and the operational state, for messages.
    pub fn describe(&self) -> String {
        let admin = if self.is_maint() {
            "maint"
        } else if self.is_draining() {
            "drain"
        } else {
            "ready"
        };
        let op = match self.op_state {
            0 => "stopped",
            1 => "starting",
            2 => "running",
            3 => "stopping",
            _ => "unknown",
        };
        format!("{} {admin}/{op}", self.name)
    }
}

/// Every slot with its server's state.
type SlotStates = Vec<(Slot, ServerState)>;

/// The HAProxy adapter.
#[derive(Debug, Clone)]
pub struct Haproxy {
    cfg: HaproxyConfig,
}

impl Haproxy {
    /// Checks the configuration; connects to nothing yet.
    pub fn new(cfg: HaproxyConfig) -> Result<Haproxy, ProxyError> {
        check_name("backend", &cfg.backend)?;
        for s in cfg.slots.iter() {
            check_name("server name", &s.target)?;
        }
        if !cfg.socket.is_absolute() || cfg.socket.as_os_str().len() > 107 {
            return Err(ProxyError::Invalid {
                what: "socket",
                value: short(&cfg.socket.to_string_lossy()),
                why: "an absolute path of at most 107 bytes".into(),
            });
        }
        let bounded = |what: &'static str, d: Duration, zero_ok: bool| {
            if (zero_ok || !d.is_zero()) && d <= Duration::from_secs(3600) {
                Ok(())
            } else {
                Err(ProxyError::Invalid {
                    what,
                    value: format!("{d:?}"),
                    why: "at most 3600 s".into(),
                })
            }
        };
        bounded("socket timeout", cfg.io_timeout, false)?;
        bounded("ready_timeout", cfg.ready_timeout, false)?;
        bounded("drain_timeout", cfg.drain_timeout, true)?;
        Ok(Haproxy { cfg })
    }

    /// Sends one runtime command and reads the whole answer (HAProxy closes the connection after
    /// a command in non-interactive mode).
    pub fn command(&self, command: &str) -> Result<String, ProxyError> {
        let socket = &self.cfg.socket;
        let fail = |why: String| ProxyError::Socket {
            socket: socket.clone(),
            why,
        };
        let mut s = UnixStream::connect(socket).map_err(|e| fail(format!("connect: {e}")))?;
        s.set_read_timeout(Some(self.cfg.io_timeout))
            .and_then(|()| s.set_write_timeout(Some(self.cfg.io_timeout)))
            .map_err(|e| fail(format!("set timeouts: {e}")))?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| fail(format!("send `{command}`: {e}")))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| fail(format!("read the answer to `{command}`: {e}")))?;
        if buf.len() as u64 > MAX_ANSWER_BYTES {
            return Err(fail(format!(
                "the answer to `{command}` is larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A command whose success is an empty answer (`set server ...`).
    fn set(&self, command: &str) -> Result<(), ProxyError> {
        let answer = self.command(command)?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(ProxyError::Runtime {
                socket: self.cfg.socket.clone(),
                command: command.to_string(),
                answer: clip(&answer),
            })
        }
    }

    fn set_state(&self, server: &str, state: &str) -> Result<(), ProxyError> {
        self.set(&format!(
            "set server {}/{server} state {state}",
            self.cfg.backend
        ))
    }

    /// The backend's servers, as `show servers state BACKEND` reports them.
    pub fn servers(&self) -> Result<Vec<ServerState>, ProxyError> {
        let command = format!("show servers state {}", self.cfg.backend);
        let answer = self.command(&command)?;
        if answer.contains("Can't find backend") || answer.contains("No such backend") {
            return Err(ProxyError::UnknownBackend {
                socket: self.cfg.socket.clone(),
                backend: self.cfg.backend.clone(),
            });
        }
        parse_servers_state(&answer).map_err(|why| ProxyError::Parse {
            socket: self.cfg.socket.clone(),
            command,
            why,
        })
    }

    /// Every slot with its server's state; an error naming the first slot whose server is not in
    /// the backend.
    fn slot_states(&self) -> Result<Vec<(Slot, ServerState)>, ProxyError> {
        let servers = self.servers()?;
        self.cfg
            .slots
            .iter()
            .map(
                |slot| match servers.iter().find(|s| s.name == slot.target) {
                    Some(s) => Ok((slot, s.clone())),
                    None => Err(ProxyError::UnknownServer {
                        socket: self.cfg.socket.clone(),
                        backend: self.cfg.backend.clone(),
                        server: slot.target.clone(),
                        slot: slot.name,
                        known: servers
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                },
            )
            .collect()
    }

    /// Polls until `done` holds for the slots' states or `timeout` passes; the last states and
    /// whether `done` held.
    fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[(Slot, ServerState)]) -> bool,
    ) -> Result<(SlotStates, bool, u32), ProxyError> {
        let deadline = Instant::now() + timeout;
        let mut polls = 0;
        loop {
            polls += 1;
            let states = self.slot_states()?;
            if done(&states) {
                return Ok((states, true, polls));
            }
            if polls >= MAX_POLLS || Instant::now() + POLL >= deadline {
                return Ok((states, false, polls));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sessions still open on `server` (`scur` of `show stat`).
    fn sessions(&self, server: &str) -> Result<u64, ProxyError> {
        let command = "show stat".to_string();
        let answer = self.command(&command)?;
        parse_sessions(&answer, &self.cfg.backend, server).map_err(|why| ProxyError::Parse {
            socket: self.cfg.socket.clone(),
            command,
            why,
        })
    }
}

fn live_of(states: &[(Slot, ServerState)]) -> Option<Slot> {
    let mut ready = states.iter().filter(|(_, s)| s.is_ready());
    match (ready.next(), ready.next()) {
        (Some((slot, _)), None) => Some(slot.clone()),
        _ => None,
    }
}

fn describe(states: &[(Slot, ServerState)]) -> String {
    states
        .iter()
        .map(|(slot, s)| format!("{}={}", slot.name, s.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Proxy for Haproxy {
    fn current(&self) -> Result<Option<Slot>, ProxyError> {
        Ok(live_of(&self.slot_states()?))
    }

    fn plan(&self, to: &Slot) -> Result<Plan, ProxyError> {
        self.cfg.slots.check(to)?;
        let states = self.slot_states()?;
        let before = live_of(&states);
        Ok(Plan {
            changed: before.as_ref() != Some(to),
            before,
            after: to.clone(),
            text: None,
        })
    }

    fn switch(&self, to: &Slot) -> Result<Switched, ProxyError> {
        let started = Instant::now();
        let plan = self.plan(to)?;
        if !plan.changed {
            return Ok(Switched {
                plan,
                confirmed: true,
                attempts: 1,
                elapsed: started.elapsed(),
                drained: None,
            });
        }
        let states = self.slot_states()?;
        let new = states
            .iter()
            .find(|(s, _)| s.name == to.name)
            .map(|(_, st)| st.clone())
            .ok_or_else(|| {
                self.cfg
                    .slots
                    .get(&to.name)
                    .err()
                    .unwrap_or(ProxyError::UnknownSlot {
                        slot: to.name.clone(),
                        known: self.cfg.slots.names(),
                    })
            })?;
        // Ready first, and only once it runs do the others drain: a new server that never comes
        // up leaves the old one serving.
        if !new.is_ready() {
            self.set_state(&to.target, "ready")?;
        }
        let (after_ready, up, mut attempts) = self.wait_for(self.cfg.ready_timeout, |st| {
            st.iter()
                .any(|(s, x)| s.name == to.name && x.is_ready() && x.op_state == OP_RUNNING)
        })?;
        if !up {
            let previous = if new.is_maint() {
                Some("maint")
            } else if new.is_draining() {
                Some("drain")
            } else {
                None
            };
            let reverted = previous.is_none_or(|p| self.set_state(&to.target, p).is_ok());
            let op_state = after_ready
                .iter()
                .find(|(s, _)| s.name == to.name)
                .map_or(0, |(_, x)| x.op_state);
            return Err(ProxyError::NotReady {
                backend: self.cfg.backend.clone(),
                server: to.target.clone(),
                op_state,
                waited_ms: self.cfg.ready_timeout.as_millis(),
                reverted,
            });
        }
        let old: Vec<Slot> = after_ready
            .iter()
            .filter(|(s, x)| s.name != to.name && x.is_ready())
            .map(|(s, _)| s.clone())
            .collect();
        for slot in &old {
            self.set_state(&slot.target, "drain")
                .map_err(|e| ProxyError::DrainFailed {
                    backend: self.cfg.backend.clone(),
                    ready: to.target.clone(),
                    server: slot.target.clone(),
                    source: Box::new(e),
                })?;
        }
        let shown = self.slot_states()?;
        attempts += 1;
        if live_of(&shown).as_ref() != Some(to) {
            return Err(ProxyError::SwitchNotShown {
                backend: self.cfg.backend.clone(),
                slot: to.name.clone(),
                state: describe(&shown),
            });
        }
        tracing::info!(backend = %self.cfg.backend, slot = %to.name, "haproxy switched");
        let drained = if self.cfg.drain_timeout.is_zero() || old.is_empty() {
            None
        } else {
            let deadline = Instant::now() + self.cfg.drain_timeout;
            let mut left = 0;
            for _ in 0..MAX_POLLS {
                left = 0;
                for slot in &old {
                    left += self.sessions(&slot.target)?;
                }
                if left == 0 || Instant::now() + POLL >= deadline {
                    break;
                }
                std::thread::sleep(POLL);
            }
            Some((left == 0, left))
        };
        Ok(Switched {
            plan,
            confirmed: true,
            attempts,
            elapsed: started.elapsed(),
            drained,
        })
    }
}

/// Parses `show servers state` (format 1: a version line, a `# ` header naming the columns,
/// one line per server); the columns are found by name.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next().map(str::trim) {
        Some("1") => {}
        Some(other) => {
            return Err(format!("expected format version 1, got {:?}", short(other)));
        }
        None => return Err("empty answer".into()),
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or("no `#` header line")?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let (name, op, admin) = (
        col("srv_name")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
    );
    let mut out = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("short line {:?}", short(line)))
        };
        let num = |i: usize| -> Result<u8, String> {
            field(i)?
                .parse()
                .map_err(|_| format!("not a state in {:?}", short(line)))
        };
        out.push(ServerState {
            name: field(name)?.to_string(),
            op_state: num(op)?,
            admin_state: num(admin)?,
        });
    }
    Ok(out)
}

/// The `scur` of `backend/server` in `show stat`'s CSV (`# pxname,svname,qcur,qmax,scur,...`).
pub fn parse_sessions(csv: &str, backend: &str, server: &str) -> Result<u64, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or("no `# ` header line")?
        .split(',')
        .collect();
    let scur = header
        .iter()
        .position(|c| *c == "scur")
        .ok_or("no scur column")?;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.first() == Some(&backend) && f.get(1) == Some(&server) {
            return f
                .get(scur)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no scur for {backend}/{server}"));
        }
    }
    Err(format!("no line for {backend}/{server}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 app 1 blue 127.0.0.1 2 0 1 1 10 6 3 4 6 0 0 0 - 8081 - 0 0 - - 0\n3 app 2 green 127.0.0.1 2 8 1 1 3 6 3 4 6 0 0 0 - 8082 - 0 0 - - 0\n3 app 3 old 127.0.0.1 0 1 1 1 3 6 3 4 6 0 0 0 - 8083 - 0 0 - - 0\n";

    #[test]
    fn servers_state_is_read_by_column_name() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[0].is_ready() && s[0].op_state == OP_RUNNING);
        assert!(s[1].is_draining() && !s[1].is_ready());
        assert!(s[2].is_maint() && !s[2].is_ready());
        assert_eq!(s[1].describe(), "green drain/running");
        assert!(parse_servers_state("").is_err());
        assert!(
            parse_servers_state("2\n# x\n")
                .unwrap_err()
                .contains("version")
        );
        assert!(
            parse_servers_state("1\n# be_id srv_name\n")
                .unwrap_err()
                .contains("srv_op_state")
        );
        assert!(parse_servers_state(&format!("{STATE}3 app\n")).is_err());
    }

    #[test]
    fn sessions_come_from_scur() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax\nfe,FRONTEND,,,4,9\napp,blue,0,0,2,5\napp,green,0,0,0,1\n";
        assert_eq!(parse_sessions(csv, "app", "blue").unwrap(), 2);
        assert_eq!(parse_sessions(csv, "app", "green").unwrap(), 0);
        assert!(parse_sessions(csv, "app", "red").is_err());
        assert!(parse_sessions("nope", "app", "blue").is_err());
    }
}
