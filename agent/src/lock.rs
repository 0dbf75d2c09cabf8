//! The host lock: one transaction at a time per host.
//!
//! `flock(2)` on `<state_dir>/lock` decides; the file's content is the holder record (txid, pid,
//! since) so a refused caller learns who holds it and for how long. The kernel drops the flock when
//! the holder's process dies, so a SIGKILLed agent never leaves the host locked. Waiting is a
//! bounded poll: at most `timeout`, in 25 ms steps.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::LockError;

/// File name of the lock in the state dir.
pub const LOCK_FILE: &str = "lock";
const POLL: Duration = Duration::from_millis(25);

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holding transaction.
    pub txid: String,
    /// The holding process.
    pub pid: u32,
    /// When it took the lock, RFC 3339.
    pub since: String,
}

/// A held lock; dropping it releases the flock.
#[derive(Debug)]
pub struct HostLock {
    flock: Flock<File>,
    path: PathBuf,
}

impl HostLock {
    /// Takes the lock for `txid`, waiting up to `timeout` while another transaction holds it.
    pub fn acquire(state_dir: &Path, txid: &str, timeout: Duration) -> Result<HostLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
        let mut polls = 0u128;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| LockError::Io {
                    path: path.clone(),
                    source,
                })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut flock) => {
                    let holder = Holder {
                        txid: txid.to_string(),
                        pid: std::process::id(),
                        since: crate::journal::now_rfc3339(),
                    };
                    write_holder(&mut flock, &holder).map_err(|source| LockError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    return Ok(HostLock { flock, path });
                }
                Err((_file, nix::errno::Errno::EWOULDBLOCK)) => {
                    polls += 1;
                    if Instant::now() >= deadline || polls > max_polls {
                        let holder = read_holder(&path);
                        return Err(LockError::Busy {
                            holder_txid: holder.as_ref().map(|h| h.txid.clone()),
                            age: holder.as_ref().and_then(|h| age_of(&h.since)),
                            waited: timeout,
                        });
                    }
                    std::thread::sleep(POLL);
                }
                Err((_file, errno)) => {
                    return Err(LockError::Io {
                        path,
                        source: std::io::Error::from(errno),
                    });
                }
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Clear the holder record so a reader never names a finished transaction; the flock itself
        // goes with the file descriptor.
        let _ = self.flock.set_len(0);
    }
}

fn write_holder(file: &mut File, holder: &Holder) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    let mut text = serde_json::to_vec(holder).map_err(std::io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)
}

/// Reads the holder record, if the lock file has one.
pub fn read_holder(path: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

fn age_of(since: &str) -> Option<Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(since).ok()?;
    (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_then_is_told_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = HostLock::acquire(dir.path(), "tx-a", Duration::from_millis(10)).unwrap();
        let err = HostLock::acquire(dir.path(), "tx-b", Duration::from_millis(100)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("tx-a"), "{msg}");
        drop(held);
        let again = HostLock::acquire(dir.path(), "tx-b", Duration::from_millis(10)).unwrap();
        assert_eq!(read_holder(again.path()).unwrap().txid, "tx-b");
    }
}
