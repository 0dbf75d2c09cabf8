//! The write-ahead journal: `journal/<txid>.jsonl`, one JSON [`Entry`] a line, fsync'd per record.
//!
//! Inputs: records from the engine. Outputs: durable lines, and on start-up the parsed entries of
//! every unfinished journal. A finished transaction's journal moves to `history/` (rename, then the
//! directories are fsync'd). A torn last line (the crash cut a write short) is reported to the
//! caller with its text and cut off before anything is appended, so the file stays parseable;
//! a bad line anywhere else is corruption and refuses recovery.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::event::{Entry, Record};

/// Subdirectory of the state dir holding in-flight journals.
pub const JOURNAL_DIR: &str = "journal";
/// Subdirectory of the state dir holding finished journals.
pub const HISTORY_DIR: &str = "history";

/// Whether every record is fsync'd before the engine goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync after every record (production).
    Fsync,
    /// No sync (benchmarks measuring the engine without the disk).
    None,
}

/// An open journal being appended to.
#[derive(Debug)]
pub struct Journal {
    txid: String,
    path: PathBuf,
    file: File,
    next_seq: u64,
    durability: Durability,
}

/// What was read back from a journal file.
#[derive(Debug)]
pub struct ReadJournal {
    /// Every complete entry, in order.
    pub entries: Vec<Entry>,
    /// The bytes after the last complete line, if any (a torn write).
    pub torn_tail: Option<String>,
    /// The file's length up to the end of the last complete line.
    pub good_len: u64,
}

/// The path of a transaction's in-flight journal.
pub fn journal_path(state_dir: &Path, txid: &str) -> PathBuf {
    state_dir.join(JOURNAL_DIR).join(format!("{txid}.jsonl"))
}

/// The path of a transaction's finished journal.
pub fn history_path(state_dir: &Path, txid: &str) -> PathBuf {
    state_dir.join(HISTORY_DIR).join(format!("{txid}.jsonl"))
}

/// Current time as RFC 3339 with microseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    rampart_host::durable::fsync_dir(dir).map_err(|source| JournalError::Io {
        op: "fsync directory",
        path: dir.to_path_buf(),
        source,
    })
}

impl Journal {
    /// Creates a new journal for `txid`; fails if one exists (in flight or in history).
    pub fn create(
        state_dir: &Path,
        txid: &str,
        durability: Durability,
    ) -> Result<Self, JournalError> {
        let dir = state_dir.join(JOURNAL_DIR);
        fs::create_dir_all(&dir).map_err(|source| JournalError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        if history_path(state_dir, txid).exists() {
            return Err(JournalError::Exists {
                txid: txid.to_string(),
            });
        }
        let path = journal_path(state_dir, txid);
        // The journal holds the playbook's variables (secrets included): owner-only.
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    JournalError::Exists {
                        txid: txid.to_string(),
                    }
                } else {
                    JournalError::Io {
                        op: "create journal",
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        if durability == Durability::Fsync {
            fsync_dir(&dir)?;
        }
        Ok(Journal {
            txid: txid.to_string(),
            path,
            file,
            next_seq: 0,
            durability,
        })
    }

    /// Reopens an unfinished journal for appending after recovery read it: cuts a torn tail off
    /// (its text is kept by the caller in the recovery record) and continues the sequence.
    pub fn reopen(
        state_dir: &Path,
        txid: &str,
        read: &ReadJournal,
        durability: Durability,
    ) -> Result<Self, JournalError> {
        let path = journal_path(state_dir, txid);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Io {
                op: "reopen journal",
                path: path.clone(),
                source,
            })?;
        if read.torn_tail.is_some() {
            file.set_len(read.good_len)
                .map_err(|source| JournalError::Io {
                    op: "truncate torn tail of",
                    path: path.clone(),
                    source,
                })?;
        }
        let next_seq = read.entries.last().map_or(0, |e| e.seq + 1);
        Ok(Journal {
            txid: txid.to_string(),
            path,
            file,
            next_seq,
            durability,
        })
    }

    /// The transaction id.
    pub fn txid(&self) -> &str {
        &self.txid
    }

    /// Appends one record and makes it durable; returns the entry as written.
    pub fn append(&mut self, record: Record) -> Result<Entry, JournalError> {
        let entry = Entry {
            seq: self.next_seq,
            txid: self.txid.clone(),
            time: now_rfc3339(),
            record,
        };
        let mut line = serde_json::to_vec(&entry).map_err(JournalError::Encode)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|source| JournalError::Io {
                op: "append to",
                path: self.path.clone(),
                source,
            })?;
        if self.durability == Durability::Fsync {
            self.file.sync_data().map_err(|source| JournalError::Io {
                op: "fsync",
                path: self.path.clone(),
                source,
            })?;
        }
        self.next_seq += 1;
        Ok(entry)
    }

    /// Moves the finished journal to `history/` (rename + directory fsyncs).
    pub fn finish(self, state_dir: &Path) -> Result<PathBuf, JournalError> {
        let hist_dir = state_dir.join(HISTORY_DIR);
        fs::create_dir_all(&hist_dir).map_err(|source| JournalError::Io {
            op: "create directory",
            path: hist_dir.clone(),
            source,
        })?;
        let dest = history_path(state_dir, &self.txid);
        drop(self.file);
        fs::rename(&self.path, &dest).map_err(|source| JournalError::Io {
            op: "move to history",
            path: self.path.clone(),
            source,
        })?;
        if self.durability == Durability::Fsync {
            fsync_dir(&hist_dir)?;
            fsync_dir(&state_dir.join(JOURNAL_DIR))?;
        }
        Ok(dest)
    }
}

/// Reads a journal file. Lines must be complete JSON entries with consecutive sequence numbers;
/// only the last line may be torn (no newline, or not parseable).
pub fn read(path: &Path) -> Result<ReadJournal, JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Io {
        op: "open journal",
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut entries: Vec<Entry> = Vec::new();
    let mut good_len: u64 = 0;
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut torn_tail = None;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| JournalError::Io {
                op: "read journal",
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        let parsed = if complete {
            serde_json::from_slice::<Entry>(&buf[..buf.len() - 1]).ok()
        } else {
            None
        };
        match parsed {
            Some(entry) => {
                let expected = entries.last().map_or(0, |e| e.seq + 1);
                if entry.seq != expected {
                    return Err(JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                        reason: format!("sequence {} where {} was expected", entry.seq, expected),
                    });
                }
                entries.push(entry);
                good_len += n as u64;
            }
            None => {
                // Only the last line may be torn: peek whether anything follows.
                let mut rest = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut rest).map_err(|source| {
                    JournalError::Io {
                        op: "read journal",
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                if !rest.is_empty() {
                    return Err(JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                        reason: "unparseable record followed by more records".to_string(),
                    });
                }
                torn_tail = Some(String::from_utf8_lossy(&buf).into_owned());
                break;
            }
        }
    }
    Ok(ReadJournal {
        entries,
        torn_tail,
        good_len,
    })
}

/// The txids of journals still in flight (not moved to history), oldest file name first.
pub fn unfinished(state_dir: &Path) -> Result<Vec<String>, JournalError> {
    let dir = state_dir.join(JOURNAL_DIR);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                op: "list",
                path: dir,
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| JournalError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(txid) = name.strip_suffix(".jsonl") {
            out.push(txid.to_string());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Section;

    fn start(path: &str) -> Record {
        Record::TaskStart {
            path: path.into(),
            section: Section::Block,
            name: "t".into(),
            action: "debug".into(),
        }
    }

    #[test]
    fn appends_reads_and_moves_to_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx1", Durability::Fsync).unwrap();
        j.append(start("0.0")).unwrap();
        let e = j.append(start("0.1")).unwrap();
        assert_eq!(e.seq, 1);
        let read = read(&journal_path(dir.path(), "tx1")).unwrap();
        assert_eq!(read.entries.len(), 2);
        assert!(read.torn_tail.is_none());
        assert_eq!(unfinished(dir.path()).unwrap(), vec!["tx1".to_string()]);
        j.finish(dir.path()).unwrap();
        assert!(unfinished(dir.path()).unwrap().is_empty());
        let hist = history_path(dir.path(), "tx1");
        assert!(hist.exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&hist).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            Journal::create(dir.path(), "tx1", Durability::None),
            Err(JournalError::Exists { .. })
        ));
    }

    #[test]
    fn torn_last_line_is_reported_and_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx2", Durability::None).unwrap();
        j.append(start("0.0")).unwrap();
        drop(j);
        let p = journal_path(dir.path(), "tx2");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":1,\"txid\":\"tx2\",\"ti").unwrap();
        drop(f);
        let r = read(&p).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(
            r.torn_tail.as_deref(),
            Some("{\"seq\":1,\"txid\":\"tx2\",\"ti")
        );
        let mut j = Journal::reopen(dir.path(), "tx2", &r, Durability::None).unwrap();
        let e = j.append(start("0.1")).unwrap();
        assert_eq!(e.seq, 1);
        let r2 = read(&p).unwrap();
        assert_eq!(r2.entries.len(), 2);
        assert!(r2.torn_tail.is_none());
    }

    #[test]
    fn corruption_before_the_last_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx3", Durability::None).unwrap();
        j.append(start("0.0")).unwrap();
        drop(j);
        let p = journal_path(dir.path(), "tx3");
        let mut text = fs::read_to_string(&p).unwrap();
        text.insert_str(0, "garbage\n");
        fs::write(&p, text).unwrap();
        let err = read(&p).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
