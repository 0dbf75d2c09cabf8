//! Blue/green switches in the proxy a host already runs: one small trait, [`Proxy`], and one
//! adapter per proxy ([`nginx`], [`haproxy`]).
//!
//! Purpose: make one of a component's slots (`blue`, `green`, ...) the live one in a single step,
//! confirmed through the proxy, with the other slots still running so a switch back is one more
//! call. Inputs: the adapter's configuration (validated at the edge by [`Slots::new`] and the
//! adapters' constructors) and the slot to make live. Outputs: a [`Plan`] (what a switch would
//! do, with no side effects: check mode) or a [`Switched`] (what it did), or a [`ProxyError`]
//! naming the file, socket or command that failed and whether traffic moved.
//!
//! Reversing a switch is switching back to the previous slot ([`Plan::before`]).
//!
//! Slot addresses are `IP:PORT` for now; unix socket upstreams are left for later.

mod error;
pub mod haproxy;
pub mod nginx;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use error::ProxyError;

/// The most slots a component may have.
pub const MAX_SLOTS: usize = 8;
/// The longest name (slot, upstream, backend, server).
pub const MAX_NAME: usize = 64;

/// One slot: its name and where the proxy reaches it (an nginx upstream's `IP:PORT`, or an
/// HAProxy server's name in its backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `blue`, `green`, ...
    pub name: String,
    /// nginx: `IP:PORT`; HAProxy: the server's name.
    pub target: String,
}

/// A component's slots, validated: 2 to [`MAX_SLOTS`] names, each mapped to its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots(BTreeMap<String, String>);

/// What a switch would do (check mode) or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The live slot before (none when the proxy shows no single live slot of ours).
    pub before: Option<Slot>,
    /// The slot live after.
    pub after: Slot,
    /// Whether anything changes (false when `after` is already live).
    pub changed: bool,
    /// nginx: the include's text before (none when it did not exist) and after.
    pub text: Option<(Option<String>, String)>,
}

/// What a switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The plan it carried out.
    pub plan: Plan,
    /// Whether the proxy was seen serving the new slot (nginx: through `confirm_url`; HAProxy:
    /// `show servers state`). False only for nginx without a confirmation URL.
    pub confirmed: bool,
    /// How many confirmation requests or state reads it took.
    pub attempts: u32,
    /// How long the switch took, from the first write to the confirmation.
    pub elapsed: Duration,
    /// HAProxy: whether the old servers' sessions reached 0 within the drain timeout, and how
    /// many were left.
    pub drained: Option<(bool, u64)>,
}

impl Switched {
    /// A switch nothing confirmed: nothing to change, or no way to look (nginx without a
    /// confirmation URL); `started` when the switch began.
    pub fn unconfirmed(plan: Plan, started: std::time::Instant) -> Switched {
        Switched {
            plan,
            confirmed: false,
            attempts: 0,
            elapsed: started.elapsed(),
            drained: None,
        }
    }
}

/// A proxy Rampart can switch between slots.
pub trait Proxy {
    /// The live slot as the proxy shows it (none when it shows no single slot of ours).
    fn current(&self) -> Result<Option<Slot>, ProxyError>;
    /// What switching to `to` would do; reads, never writes.
    fn plan(&self, to: &Slot) -> Result<Plan, ProxyError>;
    /// Makes `to` the live slot, confirmed; a slot already live is left as it is.
    fn switch(&self, to: &Slot) -> Result<Switched, ProxyError>;
}

impl Slots {
    /// Validates `slots` (name → target) with `target_ok` checking each target.
    pub fn new(
        slots: BTreeMap<String, String>,
        target_ok: fn(&str) -> Result<(), ProxyError>,
    ) -> Result<Slots, ProxyError> {
        if !(2..=MAX_SLOTS).contains(&slots.len()) {
            return Err(ProxyError::Invalid {
                what: "slots",
                value: slots.keys().cloned().collect::<Vec<_>>().join(","),
                why: format!("a component has 2 to {MAX_SLOTS} slots"),
            });
        }
        let mut seen = Vec::new();
        for (name, target) in &slots {
            check_name("slot name", name)?;
            target_ok(target)?;
            if seen.contains(&target) {
                return Err(ProxyError::Invalid {
                    what: "slot target",
                    value: short(target),
                    why: "two slots cannot share one target".into(),
                });
            }
            seen.push(target);
        }
        Ok(Slots(slots))
    }

    /// The slot named `name`.
    pub fn get(&self, name: &str) -> Result<Slot, ProxyError> {
        self.0
            .get(name)
            .map(|t| Slot {
                name: name.to_string(),
                target: t.clone(),
            })
            .ok_or_else(|| ProxyError::UnknownSlot {
                slot: short(name),
                known: self.names(),
            })
    }

    /// The slot whose target is `target`.
    pub fn by_target(&self, target: &str) -> Option<Slot> {
        self.0
            .iter()
            .find(|(_, t)| t.as_str() == target)
            .map(|(n, t)| Slot {
                name: n.clone(),
                target: t.clone(),
            })
    }

    /// Every slot, by name.
    pub fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.0.iter().map(|(n, t)| Slot {
            name: n.clone(),
            target: t.clone(),
        })
    }

    /// The names, comma separated.
    pub fn names(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Checks that `to` is one of these slots, as configured.
    pub fn check(&self, to: &Slot) -> Result<(), ProxyError> {
        let known = self.get(&to.name)?;
        if known != *to {
            return Err(ProxyError::Invalid {
                what: "slot",
                value: format!("{}={}", short(&to.name), short(&to.target)),
                why: format!("slot {} is configured as {}", known.name, known.target),
            });
        }
        Ok(())
    }
}

/// Checks a name that goes into a proxy's config or runtime command (slot, upstream, backend,
/// server): 1 to [`MAX_NAME`] of `A-Z a-z 0-9 _ - .`, so it can neither break a config line
/// nor chain a runtime command.
pub fn check_name(what: &'static str, name: &str) -> Result<(), ProxyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ProxyError::Invalid {
            what,
            value: short(name),
            why: format!("1 to {MAX_NAME} of A-Z a-z 0-9 _ - ."),
        })
    }
}

/// Checks an HAProxy server's name (as [`check_name`]).
pub fn check_server_name(name: &str) -> Result<(), ProxyError> {
    check_name("server name", name)
}

/// Checks a slot address: `IP:PORT` (IPv6 in brackets), port not 0.
pub fn check_address(addr: &str) -> Result<(), ProxyError> {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(()),
        _ => Err(ProxyError::Invalid {
            what: "slot address",
            value: short(addr),
            why: "IP:PORT with a port from 1 to 65535 (unix sockets are not supported yet)".into(),
        }),
    }
}

/// At most 80 characters of `s`, for messages.
pub(crate) fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// At most 2,000 characters of a program's message, trimmed.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 2000;
    let s = s.trim();
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn slots_are_validated() {
        let ok = Slots::new(
            map(&[("blue", "127.0.0.1:1"), ("green", "127.0.0.1:2")]),
            check_address,
        )
        .unwrap();
        assert_eq!(ok.get("green").unwrap().target, "127.0.0.1:2");
        assert_eq!(ok.by_target("127.0.0.1:1").unwrap().name, "blue");
        assert!(matches!(ok.get("red"), Err(ProxyError::UnknownSlot { .. })));
        for bad in [
            map(&[("blue", "127.0.0.1:1")]),
            map(&[("blue", "127.0.0.1:1"), ("green", "127.0.0.1:1")]),
            map(&[("blue", "127.0.0.1:1"), ("gr een", "127.0.0.1:2")]),
            map(&[("blue", "127.0.0.1:1"), ("green", "127.0.0.1:0")]),
            map(&[("blue", "127.0.0.1:1"), ("green", "x;y")]),
            map(&[("blue", "127.0.0.1:1"), ("green", "/run/app.sock")]),
        ] {
            assert!(Slots::new(bad.clone(), check_address).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_cannot_break_a_config_line_or_chain_a_command() {
        check_name("n", "app_v2-blue.1").unwrap();
        for bad in ["", "a b", "a;b", "a}", "a\nb", "a/b", &"x".repeat(65)] {
            assert!(check_name("n", bad).is_err(), "{bad:?}");
        }
    }
}
