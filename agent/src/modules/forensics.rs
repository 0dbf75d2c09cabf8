//! `forensics`: records what a failed deploy left behind.
//!
//! Inputs: `failed_version` (required), `restored_version`, `components`, `services` (unit names,
//! or `{name, log_file, systemctl_prefix}`; the prefix reaches the service manager's journal as
//! in the `service` module), `dest_dir` (default [`DEFAULT_DEST_DIR`]), `failed_task` /
//! `failed_result` (pass `{{ ansible_failed_task }}` / `{{ ansible_failed_result }}`), `state`
//! (the pre-deploy state, `{{ rampart_state }}`), `health`, `phase` (`all`, `capture`,
//! `complete`; default `all`) and retention: `keep` (default [`DEFAULT_KEEP`]) and
//! `max_age_days` (default [`DEFAULT_MAX_AGE_DAYS`]).
//!
//! Output: the bundle `<dest_dir>/<failed_version>-<UTC ts>/` with `metadata.json`,
//! `journal.jsonl` (the transaction's journal so far), `state.json`, `files.json` (each
//! component's failed release compared with the artifact it was extracted from: what was added,
//! removed or modified on disk since), `logs/<service>.log` (the last 5 minutes from journald, or
//! the tail of `log_file`) and `health.json` when given. `metadata.json` says when the record
//! `started`, when the volatile part was `captured` and when the bundle was `recorded`. The
//! result carries `path`, `id` and `changed`.
//!
//! Phases, so a rollback is not held up by hashing every file of the failed release:
//! - `capture` (in `rescue`, before anything is stopped or restored): only what the stop and the
//!   restore would change or destroy — the services' last log lines, the journal so far — and the
//!   failure's arguments, written to `<dest_dir>/.capture-<failed_version>-<txid>/` without
//!   waiting for the disk (the rollback waits on this step; `complete` syncs it). A capture (or
//!   finished bundle) this transaction already made is kept: a rescue run again after a crash
//!   does not overwrite the record taken closer to the failure (one a power loss left
//!   unreadable is taken again).
//! - `complete` (once the host is restored and the failed release set apart under
//!   `failed/<version>-<txid>`): fsyncs the capture, adds `files.json`, computed from that
//!   release (the release files do not change when set apart) and `recorded`, then renames the
//!   capture to the bundle's name. `ok` and unchanged when this transaction captured nothing.
//! - `all`: both at once (the release is looked for in `releases/` as well).
//!
//! Bundles are written under a hidden name and renamed when complete, so a crash never leaves a
//! half bundle under a bundle's name. Retention then removes bundles beyond the newest `keep` and
//! those older than `max_age_days`, never the one just written. Nothing on the host is changed
//! but `dest_dir`; reversing it is deleting the bundle. Check mode writes nothing and reports the
//! path it would write.
//!
//! The agent serves the bundles through `ListForensics` / `GetForensics` ([`list_bundles`],
//! [`write_tar_gz`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use rampart_playbook::modules::forensics as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_i64, arg_str, failed};
use crate::modules::release::{RELEASE_META, VERSION_FILE};
use crate::modules::release_tree::{FileEntry, disk_entries, tar_entries};
use rampart_host::cas as artifacts;

/// Default directory of forensics bundles.
pub const DEFAULT_DEST_DIR: &str = "/var/backups/deployment-forensics";
/// Bundles kept by retention when `keep` is not given.
pub const DEFAULT_KEEP: i64 = 20;
/// Bundles older than this many days are removed when `max_age_days` is not given.
pub const DEFAULT_MAX_AGE_DAYS: i64 = 30;
/// How much of a configured log file is kept (its tail).
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// How far back journald logs go.
const JOURNAL_SINCE: &str = "-5min";
/// The bundle's metadata file.
pub const METADATA_FILE: &str = "metadata.json";
/// The timestamp in a bundle id.
const TS_FORMAT: &str = "%Y%m%dT%H%M%S%.6fZ";

/// `forensics`.
pub static FORENSICS: ModuleSpec = ModuleSpec {
    schema: &schema::FORENSICS,
    run: run_forensics,
};

/// A service whose logs go into the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceLog {
    name: String,
    log_file: Option<PathBuf>,
    /// Prefix reaching the service manager (the `service` module's `systemctl_prefix`).
    prefix: Vec<String>,
}

fn services(v: Option<&Value>) -> Vec<ServiceLog> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| match i {
            Value::String(s) => Some(ServiceLog {
                name: s.clone(),
                log_file: None,
                prefix: Vec::new(),
            }),
            Value::Object(m) => Some(ServiceLog {
                name: m.get("name")?.as_str()?.to_string(),
                log_file: m.get("log_file").and_then(Value::as_str).map(PathBuf::from),
                prefix: super::arg_strings(m.get("systemctl_prefix")),
            }),
            _ => None,
        })
        .collect()
}

/// A bundle id must be one plain directory name.
pub fn check_bundle_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') || id.contains('\0') {
        Err(format!(
            "invalid forensics bundle id `{id}` (one directory name, not starting with a dot)"
        ))
    } else {
        Ok(())
    }
}

/// When a bundle was recorded, from the timestamp ending its id.
fn recorded_at(id: &str) -> Option<DateTime<Utc>> {
    let (_, ts) = id.rsplit_once('-')?;
    NaiveDateTime::parse_from_str(ts, TS_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

fn run_forensics(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let failed_version = arg_str(args, "failed_version").unwrap_or_default();
    if let Err(e) = check_bundle_id(failed_version) {
        return failed(format!("failed_version: {e}"));
    }
    let dest_dir = PathBuf::from(arg_str(args, "dest_dir").unwrap_or(DEFAULT_DEST_DIR));
    let outcome = match arg_str(args, "phase").unwrap_or("all") {
        "capture" => capture(args, ctx, failed_version, &dest_dir),
        "complete" => complete(args, ctx, failed_version, &dest_dir),
        _ => record_all(args, ctx, failed_version, &dest_dir),
    };
    outcome.unwrap_or_else(failed)
}

/// The result naming the bundle `id` under `dest_dir`.
fn bundle_result(dest_dir: &Path, id: &str, changed: bool) -> ModuleResult {
    let mut r = super::ok(changed);
    r.insert("path".into(), json!(dest_dir.join(id)));
    r.insert("id".into(), json!(id));
    r
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// What a stop or a restore would change or destroy, read first: the journal so far, each
/// service's recent log, and the arguments describing the failure. `metadata` lacks `recorded`.
fn volatile(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
    id: &str,
    started: DateTime<Utc>,
) -> (Value, Vec<(PathBuf, Vec<u8>)>) {
    let failed_version = arg_str(args, "failed_version").unwrap_or_default();
    let (journal, journal_note) = journal_so_far(ctx.state_dir, ctx.txid);
    let mut bundle: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut log_notes = Map::new();
    for s in services(args.get("services")) {
        let (text, source) = service_log(&s);
        log_notes.insert(s.name.clone(), json!(source));
        let file = format!("logs/{}.log", safe_name(&s.name));
        bundle.push((file.into(), text));
    }
    let metadata = json!({
        "id": id,
        "txid": ctx.txid,
        "host": rampart_host::facts::hostname(),
        "failed_version": failed_version,
        "restored_version": arg_str(args, "restored_version"),
        "components": super::arg_strings(args.get("components")),
        "failed_task": args.get("failed_task").cloned().unwrap_or(Value::Null),
        "failed_result": args.get("failed_result").cloned().unwrap_or(Value::Null),
        "transaction_started": journal_start(&journal),
        "started": started.to_rfc3339_opts(SecondsFormat::Micros, true),
        "captured": now(),
        "journal": journal_note,
        "logs": log_notes,
    });
    bundle.push(("journal.jsonl".into(), journal));
    bundle.push((
        "state.json".into(),
        pretty(args.get("state").unwrap_or(&Value::Null)),
    ));
    if let Some(h) = args.get("health").filter(|h| !h.is_null()) {
        bundle.push(("health.json".into(), pretty(h)));
    }
    (metadata, bundle)
}

/// `files.json`: each component's failed release against its artifact.
fn manifest(args: &Map<String, Value>, ctx: &ModuleCtx<'_>, failed_version: &str) -> Vec<u8> {
    let files = super::arg_strings(args.get("components"))
        .iter()
        .map(|c| release_files(ctx.state_dir, c, failed_version, ctx.txid))
        .collect::<Vec<_>>();
    pretty(&Value::Array(files))
}

/// The hidden directory holding a capture until `complete` names it: one per failed version and
/// transaction, so a rescue run again after a crash keeps the first capture.
fn capture_dir(dest_dir: &Path, failed_version: &str, txid: &str) -> PathBuf {
    dest_dir.join(format!(".capture-{failed_version}-{txid}"))
}

/// The finished bundle this transaction recorded for `failed_version`, if any.
fn finished_bundle(dest_dir: &Path, failed_version: &str, txid: &str) -> Option<String> {
    fs::read_dir(dest_dir).ok()?.flatten().find_map(|e| {
        let id = e.file_name().to_string_lossy().into_owned();
        check_bundle_id(&id).ok()?;
        let meta: Value =
            serde_json::from_slice(&fs::read(e.path().join(METADATA_FILE)).ok()?).ok()?;
        (meta["txid"] == txid && meta["failed_version"] == failed_version).then_some(id)
    })
}

fn read_metadata(dir: &Path) -> Result<Value, String> {
    let p = dir.join(METADATA_FILE);
    let bytes = fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("cannot parse {}: {e}", p.display()))
}

/// `phase: all`: the whole bundle at once (the manifest of the release as it is now).
fn record_all(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
    failed_version: &str,
    dest_dir: &Path,
) -> Result<ModuleResult, String> {
    let started = Utc::now();
    let id = format!("{failed_version}-{}", started.format(TS_FORMAT));
    let mut r = bundle_result(dest_dir, &id, true);
    if ctx.check {
        return Ok(r);
    }
    let files = manifest(args, ctx, failed_version);
    let (mut metadata, mut bundle) = volatile(args, ctx, &id, started);
    metadata["recorded"] = json!(now());
    bundle.push((METADATA_FILE.into(), pretty(&metadata)));
    bundle.push(("files.json".into(), files));
    rampart_host::durable::write_dir_atomic(dest_dir, &id, &bundle).map_err(|e| {
        format!(
            "cannot write forensics bundle {}: {e}",
            dest_dir.join(&id).display()
        )
    })?;
    r.insert("removed".into(), json!(retention(args, dest_dir, &id)));
    Ok(r)
}

/// `phase: capture`, before the rescue stops or restores anything: writes the volatile part
/// durably under a hidden name. A capture (or bundle) this transaction already has is kept.
fn capture(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
    failed_version: &str,
    dest_dir: &Path,
) -> Result<ModuleResult, String> {
    let started = Utc::now();
    let hidden = capture_dir(dest_dir, failed_version, ctx.txid);
    if let Ok(meta) = read_metadata(&hidden) {
        let id = meta["id"].as_str().unwrap_or_default();
        return Ok(bundle_result(dest_dir, id, false));
    }
    if let Some(id) = finished_bundle(dest_dir, failed_version, ctx.txid) {
        return Ok(bundle_result(dest_dir, &id, false));
    }
    let id = format!("{failed_version}-{}", started.format(TS_FORMAT));
    let r = bundle_result(dest_dir, &id, true);
    if ctx.check {
        return Ok(r);
    }
    let (metadata, mut bundle) = volatile(args, ctx, &id, started);
    bundle.push((METADATA_FILE.into(), pretty(&metadata)));
    write_capture(&hidden, &bundle)
        .map_err(|e| format!("cannot write forensics capture {}: {e}", hidden.display()))?;
    Ok(r)
}

/// Writes the capture into a temp dir and renames it to `hidden`, without syncing: this runs
/// while the rollback waits, and `complete` makes every file durable before the bundle gets its
/// name. A capture a power loss left unreadable is replaced (the rescue runs again).
fn write_capture(hidden: &Path, files: &[(PathBuf, Vec<u8>)]) -> io::Result<()> {
    let dir = hidden.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = rampart_host::durable::temp_path(dir, hidden.file_name().unwrap_or_default());
    let result = (|| {
        fs::create_dir(&tmp)?;
        for (rel, bytes) in files {
            let p = tmp.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&p, bytes)?;
        }
        if hidden.exists() {
            fs::remove_dir_all(hidden)?;
        }
        fs::rename(&tmp, hidden)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// fsyncs every file and directory under `dir` (the bundle and `logs/`).
fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            File::open(e.path())?.sync_all()?;
        }
    }
    rampart_host::durable::fsync_dir(dir)
}

/// `phase: complete`, once the host is restored: adds `files.json` (from the release set apart
/// under `failed/`) and `recorded` to the capture, names the bundle and applies retention.
/// `ok` with nothing to do when this transaction captured nothing (or completed already).
fn complete(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
    failed_version: &str,
    dest_dir: &Path,
) -> Result<ModuleResult, String> {
    let hidden = capture_dir(dest_dir, failed_version, ctx.txid);
    let Ok(mut metadata) = read_metadata(&hidden) else {
        let mut r = match finished_bundle(dest_dir, failed_version, ctx.txid) {
            Some(id) => bundle_result(dest_dir, &id, false),
            None => super::ok(false),
        };
        r.insert("captured".into(), json!(r.contains_key("id")));
        return Ok(r);
    };
    let id = metadata["id"].as_str().unwrap_or_default().to_string();
    check_bundle_id(&id).map_err(|e| format!("{}: {e}", hidden.display()))?;
    let mut r = bundle_result(dest_dir, &id, true);
    if ctx.check {
        return Ok(r);
    }
    let write = |name: &str, bytes: &[u8]| {
        let p = hidden.join(name);
        rampart_host::durable::write_atomic(&p, bytes, Some(0o644))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    sync_tree(&hidden).map_err(|e| format!("cannot sync {}: {e}", hidden.display()))?;
    write("files.json", &manifest(args, ctx, failed_version))?;
    metadata["recorded"] = json!(now());
    write(METADATA_FILE, &pretty(&metadata))?;
    let dest = dest_dir.join(&id);
    fs::rename(&hidden, &dest).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            hidden.display(),
            dest.display()
        )
    })?;
    rampart_host::durable::fsync_dir(dest_dir)
        .map_err(|e| format!("cannot fsync {}: {e}", dest_dir.display()))?;
    r.insert("removed".into(), json!(retention(args, dest_dir, &id)));
    Ok(r)
}

fn retention(args: &Map<String, Value>, dest_dir: &Path, id: &str) -> Vec<String> {
    let keep = arg_i64(args, "keep").unwrap_or(DEFAULT_KEEP).max(0) as usize;
    let max_age = arg_i64(args, "max_age_days").unwrap_or(DEFAULT_MAX_AGE_DAYS);
    apply_retention(dest_dir, id, keep, max_age)
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// The in-flight journal (or the finished one) and a note saying which.
fn journal_so_far(state_dir: &Path, txid: &str) -> (Vec<u8>, String) {
    for p in [
        crate::journal::journal_path(state_dir, txid),
        crate::journal::history_path(state_dir, txid),
    ] {
        if let Ok(bytes) = fs::read(&p) {
            return (bytes, p.display().to_string());
        }
    }
    (Vec::new(), format!("no journal for transaction {txid}"))
}

fn journal_start(journal: &[u8]) -> Value {
    journal
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| serde_json::from_slice::<Value>(l).ok())
        .and_then(|v| v.get("time").cloned())
        .unwrap_or(Value::Null)
}

/// The service's recent log and where it came from.
fn service_log(s: &ServiceLog) -> (Vec<u8>, String) {
    let argv = super::service::Systemctl {
        prefix: s.prefix.clone(),
    }
    .argv(
        "journalctl",
        &["-u", &s.name, "--since", JOURNAL_SINCE, "--no-pager"],
    );
    let journald = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
        .filter(|out| {
            let t = String::from_utf8_lossy(out);
            !t.trim().is_empty() && !t.trim().starts_with("-- No entries --")
        });
    if let Some(out) = journald {
        return (
            out,
            format!("journalctl -u {} --since {JOURNAL_SINCE}", s.name),
        );
    }
    match &s.log_file {
        Some(p) => match tail(p, LOG_TAIL_BYTES) {
            Ok(bytes) => (bytes, format!("tail of {}", p.display())),
            Err(e) => (Vec::new(), format!("cannot read {}: {e}", p.display())),
        },
        None => (
            Vec::new(),
            "no journald entries and no log_file configured".to_string(),
        ),
    }
}

fn tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Compares the artifact's entries with the files on disk (directories are left out).
pub(crate) fn compare(
    artifact: &BTreeMap<String, FileEntry>,
    disk: &BTreeMap<String, FileEntry>,
) -> Value {
    let mut files = Vec::new();
    let (mut added, mut removed, mut modified) = (Vec::new(), Vec::new(), Vec::new());
    for (path, d) in disk {
        let status = match artifact.get(path) {
            None if path == VERSION_FILE || path == RELEASE_META => "written by rampart",
            None => {
                added.push(path.clone());
                "added"
            }
            Some(a) if a != d => {
                modified.push(path.clone());
                "modified"
            }
            Some(_) => "unchanged",
        };
        let mut f = json!({"path": path, "type": d.kind, "size": d.size, "status": status});
        if d.kind == "file" {
            f["mode"] = json!(format!("{:04o}", d.mode));
        }
        let key = if d.kind == "symlink" {
            "target"
        } else {
            "sha256"
        };
        f[key] = json!(d.digest);
        if let Some(a) = artifact.get(path).filter(|a| *a != d) {
            f["artifact"] = json!({"type": a.kind, "size": a.size, key: a.digest,
                "mode": format!("{:04o}", a.mode)});
        }
        files.push(f);
    }
    for path in artifact.keys().filter(|p| !disk.contains_key(*p)) {
        removed.push(path.clone());
    }
    json!({"files": files, "added": added, "removed": removed, "modified": modified})
}

/// `files.json`'s entry for one component.
/// The release is looked for where this transaction set it apart (`failed/<version>-<txid>`),
/// then in `releases/`, then as the newest `failed/<version>-*`.
fn release_files(state_dir: &Path, component: &str, version: &str, txid: &str) -> Value {
    let mut out = json!({"component": component, "version": version});
    let app = state_dir.join("apps").join(component);
    let release = [
        app.join("failed").join(format!("{version}-{txid}")),
        app.join("releases").join(version),
    ]
    .into_iter()
    .chain(newest_failed(&app.join("failed"), version))
    .find(|p| p.is_dir());
    let Some(release) = release else {
        out["note"] = json!(format!(
            "release {version} of {component} is not on this host"
        ));
        return out;
    };
    out["release_path"] = json!(release);
    let disk = match disk_entries(&release) {
        Ok(d) => d,
        Err(e) => {
            out["note"] = json!(format!("cannot read {}: {e}", release.display()));
            return out;
        }
    };
    let digest = fs::read(release.join(RELEASE_META))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|m| m.get("artifact_sha256")?.as_str().map(str::to_string));
    out["artifact_sha256"] = json!(digest);
    let artifact = digest
        .as_deref()
        .filter(|d| artifacts::has(state_dir, d).is_some())
        .and_then(|d| artifacts::artifact_path(state_dir, d).ok());
    match artifact.map(|p| (tar_entries(&p), p)) {
        Some((Ok((entries, _)), _)) => {
            if let (Value::Object(m), Some(o)) = (compare(&entries, &disk), out.as_object_mut()) {
                o.extend(m);
            }
        }
        Some((Err(e), p)) => {
            out["note"] = json!(format!("cannot read artifact {}: {e}", p.display()));
            out["files"] = listing(&disk);
        }
        None => {
            out["note"] = json!(
                "the artifact is not cached on this host: files are listed without comparison"
            );
            out["files"] = listing(&disk);
        }
    }
    out
}

fn listing(disk: &BTreeMap<String, FileEntry>) -> Value {
    disk.iter()
        .map(|(p, d)| json!({"path": p, "type": d.kind, "size": d.size, "digest": d.digest}))
        .collect()
}

/// `failed/<version>-<txid>` entries of this version, newest name first.
fn newest_failed(dir: &Path, version: &str) -> Option<PathBuf> {
    let prefix = format!("{version}-");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

/// The bundles to remove: beyond the newest `keep`, or recorded more than `max_age_days` before
/// `now`; never `just_written`. `bundles` are (id, recorded).
fn retention_plan(
    bundles: &[(String, DateTime<Utc>)],
    just_written: &str,
    keep: usize,
    max_age_days: i64,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut sorted: Vec<&(String, DateTime<Utc>)> = bundles.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let cutoff = now - chrono::Duration::days(max_age_days.max(0));
    sorted
        .iter()
        .enumerate()
        .filter(|(i, (id, at))| id != just_written && (*i >= keep || *at < cutoff))
        .map(|(_, (id, _))| id.clone())
        .collect()
}

fn apply_retention(dest_dir: &Path, just_written: &str, keep: usize, max_age: i64) -> Vec<String> {
    let bundles: Vec<(String, DateTime<Utc>)> = fs::read_dir(dest_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let at = recorded_at(&id).filter(|_| !id.starts_with('.'))?;
                    Some((id, at))
                })
                .collect()
        })
        .unwrap_or_default();
    let plan = retention_plan(&bundles, just_written, keep, max_age, Utc::now());
    plan.into_iter()
        .filter(|id| match fs::remove_dir_all(dest_dir.join(id)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(bundle = %id, error = %e, "cannot remove an old forensics bundle");
                false
            }
        })
        .collect()
}

/// One bundle as `ListForensics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// The directory name.
    pub id: String,
    /// The transaction that recorded it.
    pub txid: String,
    /// The version that failed.
    pub failed_version: String,
    /// The version being restored.
    pub restored_version: String,
    /// When it was recorded.
    pub recorded: Option<DateTime<Utc>>,
    /// Total size of its files in bytes.
    pub size: u64,
}

/// The bundles under `dir`, newest first, at most `limit` (0: all). A missing `dir` has none.
pub fn list_bundles(dir: &Path, limit: usize) -> io::Result<Vec<BundleInfo>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if check_bundle_id(&id).is_err() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let meta: Value = fs::read(e.path().join(METADATA_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let text = |k: &str| meta.get(k).and_then(Value::as_str).unwrap_or_default();
        let recorded = DateTime::parse_from_rfc3339(text("recorded"))
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| recorded_at(&id));
        out.push(BundleInfo {
            txid: text("txid").to_string(),
            failed_version: text("failed_version").to_string(),
            restored_version: text("restored_version").to_string(),
            recorded,
            size: disk_entries(&e.path())
                .map(|m| m.values().map(|f| f.size).sum())
                .unwrap_or(0),
            id,
        });
    }
    out.sort_by(|a, b| b.recorded.cmp(&a.recorded).then_with(|| b.id.cmp(&a.id)));
    if limit > 0 {
        out.truncate(limit);
    }
    Ok(out)
}

/// Writes bundle `<dir>/<id>` as a tar.gz (entries under `<id>/`) to `out`, streaming.
pub fn write_tar_gz(dir: &Path, id: &str, out: impl Write) -> io::Result<()> {
    check_bundle_id(id).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(id, dir.join(id))?;
    tar.into_inner()?.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    /// A state dir with release 2.0 of `backend` extracted from a cached artifact.
    fn host(dir: &Path, cache_artifact: bool) -> PathBuf {
        let state = dir.join("state");
        let art = tar_gz(&[
            ("./app.jar", b"jar v2"),
            ("./conf/app.yml", b"port: 8080\n"),
        ]);
        let digest = rampart_host::digest::sha256_hex(&art);
        if cache_artifact {
            let cache = state.join("artifacts/sha256");
            fs::create_dir_all(&cache).unwrap();
            fs::write(cache.join(&digest), &art).unwrap();
        }
        let rel = state.join("apps/backend/releases/2.0");
        fs::create_dir_all(rel.join("conf")).unwrap();
        fs::write(rel.join("app.jar"), b"jar v2").unwrap();
        fs::write(rel.join("conf/app.yml"), b"port: 9999\n").unwrap(); // modified
        fs::write(rel.join("hotfix.sh"), b"#!/bin/sh\n").unwrap(); // added
        fs::write(rel.join(VERSION_FILE), b"2.0\n").unwrap();
        fs::write(
            rel.join(RELEASE_META),
            json!({"artifact_sha256": digest}).to_string(),
        )
        .unwrap();
        fs::create_dir_all(state.join("journal")).unwrap();
        fs::write(
            crate::journal::journal_path(&state, "tx-9"),
            "{\"seq\":0,\"time\":\"2024-01-01T00:00:00Z\"}\n",
        )
        .unwrap();
        state
    }

    fn run(state: &Path, args: Value, check: bool) -> ModuleResult {
        let call = Call {
            check,
            state_dir: Some(state),
            txid: Some("tx-9"),
            ..Call::default()
        };
        call.run(&FORENSICS, args)
    }

    fn read_json(p: &Path) -> Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn forensics_bundle_holds_metadata_journal_state_files_logs_and_health() {
        let dir = tempfile::tempdir().unwrap();
        let state = host(dir.path(), true);
        let log = dir.path().join("backend.log");
        fs::write(&log, "x".repeat(100_000) + "last line\n").unwrap();
        let dest = dir.path().join("forensics");
        let r = run(
            &state,
            json!({
                "failed_version": "2.0", "restored_version": "1.0", "dest_dir": dest,
                "components": ["backend", "frontend"],
                "services": [{"name": "rampart-no-such-unit-xyz", "log_file": log}],
                "failed_task": {"name": "health check"}, "failed_result": {"rc": 7},
                "state": {"versions": {"backend": "1.0"}}, "health": {"status": "DOWN"},
            }),
            false,
        );
        assert!(r.get("failed").is_none(), "{r:?}");
        assert_eq!(r["changed"], json!(true));
        let path = PathBuf::from(r["path"].as_str().unwrap());
        assert_eq!(path.file_name().unwrap().to_str(), r["id"].as_str());
        assert!(r["id"].as_str().unwrap().starts_with("2.0-"));
        let meta = read_json(&path.join(METADATA_FILE));
        assert_eq!(meta["txid"], json!("tx-9"));
        assert_eq!(meta["failed_version"], json!("2.0"));
        assert_eq!(meta["restored_version"], json!("1.0"));
        assert_eq!(meta["failed_task"]["name"], json!("health check"));
        assert_eq!(meta["failed_result"]["rc"], json!(7));
        assert_eq!(meta["transaction_started"], json!("2024-01-01T00:00:00Z"));
        assert!(
            fs::read_to_string(path.join("journal.jsonl"))
                .unwrap()
                .contains("\"seq\":0")
        );
        assert_eq!(
            read_json(&path.join("state.json"))["versions"]["backend"],
            json!("1.0")
        );
        assert_eq!(
            read_json(&path.join("health.json"))["status"],
            json!("DOWN")
        );
        let logged = fs::read(path.join("logs/rampart-no-such-unit-xyz.log")).unwrap();
        assert_eq!(logged.len() as u64, LOG_TAIL_BYTES);
        assert!(logged.ends_with(b"last line\n"));

        let files = read_json(&path.join("files.json"));
        let backend = &files[0];
        assert_eq!(backend["modified"], json!(["conf/app.yml"]));
        assert_eq!(backend["added"], json!(["hotfix.sh"]));
        assert_eq!(backend["removed"], json!([]));
        assert!(
            files[1]["note"]
                .as_str()
                .unwrap()
                .contains("not on this host")
        );
        // Nothing temporary is left beside the bundle.
        let names: Vec<_> = fs::read_dir(&dest).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn forensics_files_compare_detects_removed_and_skips_an_uncached_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let state = host(dir.path(), false);
        let v = release_files(&state, "backend", "2.0", "tx-9");
        assert!(v["note"].as_str().unwrap().contains("not cached"), "{v}");
        assert_eq!(v["files"].as_array().unwrap().len(), 5);

        let state = host(&dir.path().join("cached"), true);
        fs::remove_file(state.join("apps/backend/releases/2.0/app.jar")).unwrap();
        let v = release_files(&state, "backend", "2.0", "tx-9");
        assert_eq!(v["removed"], json!(["app.jar"]));
    }

    #[test]
    fn forensics_check_mode_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = host(dir.path(), true);
        let dest = dir.path().join("forensics");
        let r = run(
            &state,
            json!({"failed_version": "2.0", "dest_dir": dest}),
            true,
        );
        assert_eq!(r["changed"], json!(true));
        assert!(
            r["path"]
                .as_str()
                .unwrap()
                .starts_with(dest.to_str().unwrap())
        );
        assert!(!dest.exists());
    }

    #[test]
    fn forensics_retention_by_count_and_age_spares_the_new_bundle() {
        let now = Utc::now();
        let days = |d: i64| now - chrono::Duration::days(d);
        let b = |id: &str, at| (id.to_string(), at);
        let bundles = vec![
            b("a", days(0)),
            b("b", days(1)),
            b("c", days(2)),
            b("old", days(40)),
        ];
        assert_eq!(retention_plan(&bundles, "a", 2, 30, now), vec!["c", "old"]);
        assert_eq!(retention_plan(&bundles, "a", 10, 30, now), vec!["old"]);
        // The bundle just written survives even when it sorts past `keep`.
        assert_eq!(
            retention_plan(&bundles, "old", 0, 30, now),
            vec!["a", "b", "c"]
        );

        // On disk: old bundles beyond keep are removed, the new one stays.
        let dir = tempfile::tempdir().unwrap();
        let state = host(dir.path(), true);
        let dest = dir.path().join("forensics");
        for id in ["2.0-20200101T000000.000000Z", "1.9-20200102T000000.000000Z"] {
            fs::create_dir_all(dest.join(id)).unwrap();
        }
        let r = run(
            &state,
            json!({"failed_version": "2.0", "dest_dir": dest, "keep": 1, "max_age_days": 10000}),
            false,
        );
        assert_eq!(r["removed"].as_array().unwrap().len(), 2, "{r:?}");
        let listed = list_bundles(&dest, 0).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, r["id"].as_str().unwrap());
        assert_eq!(listed[0].txid, "tx-9");
        assert!(listed[0].size > 0);
    }

    #[test]
    fn forensics_bundle_ids_are_plain_names_and_stream_as_tar_gz() {
        assert!(check_bundle_id("2.0-20240101T000000.000000Z").is_ok());
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(check_bundle_id(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b1/logs")).unwrap();
        fs::write(dir.path().join("b1/metadata.json"), "{}").unwrap();
        let mut out = Vec::new();
        write_tar_gz(dir.path(), "b1", &mut out).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&out[..]));
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "b1/metadata.json"), "{names:?}");
    }
}
