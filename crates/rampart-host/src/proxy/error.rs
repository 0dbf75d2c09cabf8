//! The errors of a proxy switch, one variant per operation that failed, each naming the proxy's
//! file, socket or command and saying whether traffic moved (`restored`, `reverted`).

use std::io;
use std::path::PathBuf;

/// Why a proxy could not be read or switched.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An argument failed validation at the edge; nothing was touched.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        /// What the value is (`slot name`, `slot address`, `upstream`, ...).
        what: &'static str,
        /// The value, shortened.
        value: String,
        /// What it must be.
        why: String,
    },
    /// The slot asked for is not one of the configured slots.
    #[error("unknown slot {slot:?} (slots: {known})")]
    UnknownSlot {
        /// The slot asked for.
        slot: String,
        /// The configured slot names, comma separated.
        known: String,
    },
    /// nginx: the include could not be read.
    #[error("cannot read the nginx include {}: {source}", path.display())]
    ReadInclude {
        /// The include.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// nginx: the include holds something Rampart did not write; it is left alone.
    #[error("the nginx include {} {why}: point `include` at a file of its own that only rampart writes", path.display())]
    ForeignInclude {
        /// The include.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// nginx: the new include could not be written; the old one is in place.
    #[error("cannot write the nginx include {}: {source}; traffic is unchanged", path.display())]
    WriteInclude {
        /// The include.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// nginx refused the new include (`nginx -t`); the previous include was put back before
    /// anything was reloaded.
    #[error("{command} refused the include {} for slot {slot}: {message}; {}", path.display(), restored_text(*restored))]
    ConfigRejected {
        /// The include.
        path: PathBuf,
        /// The slot that was asked for.
        slot: String,
        /// The test command line.
        command: String,
        /// nginx's message.
        message: String,
        /// Whether the previous include is back in place.
        restored: bool,
    },
    /// nginx: the reload failed; the previous include was put back.
    #[error("reload of nginx with `{command}` failed: {message}; {}", restored_text(*restored))]
    Reload {
        /// The reload command, or the signal and pid file.
        command: String,
        /// What happened.
        message: String,
        /// Whether the previous include is back in place.
        restored: bool,
    },
    /// nginx: after the reload the proxy did not show the new slot; the previous include was put
    /// back and nginx reloaded again.
    #[error("nginx did not confirm slot {slot} at {url} after {attempts} attempts ({last}); {}", if *restored { "the previous include was restored and nginx reloaded: traffic is back on the previous slot" } else { "the previous include could not be restored: traffic may be on the new slot" })]
    NotConfirmed {
        /// The slot that was asked for.
        slot: String,
        /// The confirmation URL.
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// The last answer or error.
        last: String,
        /// Whether traffic is back on the previous slot.
        restored: bool,
    },
    /// HAProxy: the admin socket could not be reached or did not answer.
    #[error("cannot reach the haproxy admin socket {}: {why}; check that haproxy runs and its global section has `stats socket {} level admin`; traffic is unchanged", socket.display(), socket.display())]
    Socket {
        /// The socket.
        socket: PathBuf,
        /// Why.
        why: String,
    },
    /// HAProxy answered a runtime command with an error.
    #[error("haproxy at {} refused `{command}`: {answer}", socket.display())]
    Runtime {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// HAProxy has no such backend.
    #[error("haproxy at {} has no backend {backend:?}: check `backend` against haproxy.cfg; traffic is unchanged", socket.display())]
    UnknownBackend {
        /// The socket.
        socket: PathBuf,
        /// The backend.
        backend: String,
    },
    /// HAProxy's backend has no such server.
    #[error("haproxy backend {backend} at {} has no server {server:?} (slot {slot}; servers: {known}): check `slots` against haproxy.cfg; traffic is unchanged", socket.display())]
    UnknownServer {
        /// The socket.
        socket: PathBuf,
        /// The backend.
        backend: String,
        /// The slot naming it.
        slot: String,
        /// The server.
        server: String,
        /// The backend's servers, comma separated.
        known: String,
    },
    /// HAProxy's answer could not be parsed.
    #[error("cannot parse haproxy's answer to `{command}` at {}: {why}", socket.display())]
    Parse {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// What is wrong.
        why: String,
    },
    /// HAProxy: the new server did not come up once set ready; it was put back as it was and the
    /// old one never drained.
    #[error("haproxy server {backend}/{server} did not come up within {waited_ms} ms after `state ready` (operational state {op_state}); {}", if *reverted { "it was put back to its previous state: traffic is unchanged" } else { "it could not be put back to its previous state" })]
    NotReady {
        /// The backend.
        backend: String,
        /// The server.
        server: String,
        /// Its last operational state (0 stopped, 1 starting, 2 running, 3 stopping).
        op_state: u8,
        /// How long it was waited for.
        waited_ms: u128,
        /// Whether its previous admin state was restored.
        reverted: bool,
    },
    /// HAProxy: the new server is ready and running but an old one could not be set to drain:
    /// both take traffic.
    #[error(
        "haproxy server {backend}/{ready} is ready but {backend}/{server} could not be set to drain ({source}): both take traffic; switch again or set it to drain by hand"
    )]
    DrainFailed {
        /// The backend.
        backend: String,
        /// The new, ready server.
        ready: String,
        /// The old server that still takes traffic.
        server: String,
        /// Why the drain failed.
        source: Box<ProxyError>,
    },
    /// HAProxy: after the switch `show servers state` did not show the new server ready and the
    /// old ones draining.
    #[error("haproxy backend {backend} does not show slot {slot} live after the switch: {state}")]
    SwitchNotShown {
        /// The backend.
        backend: String,
        /// The slot asked for.
        slot: String,
        /// What `show servers state` showed.
        state: String,
    },
}

fn restored_text(restored: bool) -> &'static str {
    if restored {
        "the previous include was restored: traffic is unchanged"
    } else {
        "the previous include could not be restored"
    }
}
