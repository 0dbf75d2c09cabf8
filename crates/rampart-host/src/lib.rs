//! What touches the machine and is shared by the agent, the controller and the CLI.
//!
//! Layout, one concept per module:
//! - [`bundle`]: a playbook's files as they travel to an agent (gathered, checked, written);
//! - [`durable`]: crash-safe writes (temp → fsync → rename → fsync the directory), symlink swaps,
//!   create-once records and whole directories;
//! - [`digest`]: SHA-256 of bytes and files, lowercase hex;
//! - [`facts`]: the host's name;
//! - [`cas`]: the content-addressed artifact store (`artifacts/sha256/<hex>`), verified uploads;
//! - [`extract`]: one-pass verify + decompress + safe untar of a release archive;
//! - [`process`]: one bounded child process (own process group, killed at a deadline, capped
//!   output in scratch files);
//! - [`proxy`]: blue/green switches in the host's proxy behind one trait, one file per proxy
//!   (`nginx`: an include Rampart owns, `nginx -t`, graceful reload, confirmed through the proxy;
//!   `haproxy`: the runtime API over the admin socket, ready then drain);
//! - [`systemd`]: `systemctl show|start|stop|restart` and `journalctl -u`, behind an optional
//!   command prefix, built on [`process`];
//! - `testing` (feature `test-util`): an HTTPS server with a throwaway CA, for tests.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod bundle;
pub mod cas;
pub mod digest;
pub mod durable;
pub mod extract;
pub mod facts;
pub mod process;
pub mod proxy;
pub mod systemd;
#[cfg(feature = "test-util")]
pub mod testing;
