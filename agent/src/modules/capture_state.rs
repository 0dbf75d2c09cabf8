//! `capture_state`: records the host's production state before a deploy changes it.
//!
//! Inputs: `components` (default: every component under `<state_dir>/apps/`), `services`
//! (systemd units), `dest_dir` (default `/var/backups/deployment-state`). Output: the state
//! document — `timestamp`, `host`, `txid`, `versions` (per component, from its
//! `current` release; `database` = the Flyway schema version when `database` {url, user,
//! password, schemas, table} is given, else null), `services` (ActiveState per unit, `unknown`
//! without systemd or when it does not answer within 5 s), `system` (`uptime_since`,
//! `load_average`, `disk_usage` % of the state dir's filesystem, `memory` %), `deployments` (the
//! last 3 finished transactions) — written atomically to `<dest_dir>/<ts>-<txid>.json` and
//! returned as `state` and as the fact `rampart_state`, so a rescue reads
//! `rampart_state.versions.<component>`.
//! It changes nothing but that file; a later `release: state=restored` is what uses it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use rampart_playbook::modules::capture_state as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_str, failed};
use crate::event::{Outcome, Record};
use rampart_host::durable::write_atomic;
use rampart_host::systemd::Systemctl;

/// Default directory of state captures.
pub const DEFAULT_DEST_DIR: &str = "/var/backups/deployment-state";
const RECENT_DEPLOYMENTS: usize = 3;
/// How long one unit's state may take to read before it counts as `unknown`.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(5);

/// `capture_state`.
pub static CAPTURE_STATE: ModuleSpec = ModuleSpec {
    schema: &schema::CAPTURE_STATE,
    run: run_capture,
};

/// What one capture looks at: the same for the module and the agent's `CaptureState`.
#[derive(Debug, Default, Clone)]
pub struct CaptureRequest<'a> {
    /// Components whose versions to record; empty: every component under `apps/`.
    pub components: &'a [String],
    /// systemd units whose ActiveState to record.
    pub services: &'a [String],
    /// The deploy's `database` {url, user, password, schemas, table, ...}: its Flyway schema
    /// version goes into `versions.database`.
    pub database: Option<&'a Map<String, Value>>,
    /// Where relative paths of `database` (config files, locations) are resolved.
    pub base_dir: Option<&'a Path>,
    /// The transaction capturing, recorded in the document.
    pub txid: &'a str,
}

/// Most components (and most services) one capture names.
pub const MAX_NAMES: usize = 256;

impl CaptureRequest<'_> {
    /// Refuses names a capture must not use, whoever asks (the module or `CaptureState`): a
    /// component is a directory under `apps/` (the release module's name rule: nothing that
    /// climbs out, like `../..` or `/etc`), a service a systemd unit name.
    pub fn check(&self) -> Result<(), String> {
        if self.components.len() > MAX_NAMES || self.services.len() > MAX_NAMES {
            return Err(format!(
                "a state capture names at most {MAX_NAMES} components and {MAX_NAMES} services"
            ));
        }
        for c in self.components {
            super::release::check_name("component", c)?;
        }
        let unit = |u: &str| {
            !u.is_empty()
                && u.len() <= 256
                && !u.starts_with('-')
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@._-:\\".contains(c))
        };
        if let Some(bad) = self.services.iter().find(|u| !unit(u)) {
            return Err(format!(
                "invalid service {:?}: a systemd unit name (at most 256 of letters, digits and @._-:\\, not starting with -)",
                bad.chars().take(64).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// The state document, as this module records it and the agent's `CaptureState` serves it (one
/// function for both, so the controller's capture before a deploy is the playbook's).
pub fn capture(state_dir: &Path, req: &CaptureRequest<'_>) -> Value {
    let mut state = capture_host(state_dir, req.components, req.services, req.txid);
    // The database's Flyway schema version, when the deploy has a database: recorded, never
    // fatal (an unreachable database is the migrate step's failure to report).
    if let Some(database) = req.database {
        let version = super::migrate::configuration_in(database, req.base_dir)
            .map_err(|e| e.to_string())
            .and_then(|config| {
                rampart_migrate::run::schema_version(&config).map_err(|e| e.to_string())
            });
        match version {
            Ok(v) => state["versions"]["database"] = json!(v),
            Err(e) => state["database_error"] = json!(e),
        }
    }
    state
}

/// The document without the database.
fn capture_host(state_dir: &Path, components: &[String], services: &[String], txid: &str) -> Value {
    let apps = state_dir.join("apps");
    let mut components = components.to_vec();
    if components.is_empty() {
        components = fs::read_dir(&apps)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        components.sort();
    }
    let mut versions = Map::new();
    for c in &components {
        versions.insert(c.clone(), json!(current_version(&apps.join(c))));
    }
    versions.insert("database".into(), Value::Null);
    let mut units = Map::new();
    for unit in services {
        units.insert(unit.clone(), json!(active_state(unit)));
    }
    json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "host": rampart_host::facts::hostname(),
        "txid": txid,
        "versions": versions,
        "services": units,
        "system": system(state_dir),
        "deployments": recent_deployments(state_dir),
    })
}

fn run_capture(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let now = chrono::Utc::now();
    let components = super::arg_strings(args.get("components"));
    let services = super::arg_strings(args.get("services"));
    let request = CaptureRequest {
        components: &components,
        services: &services,
        database: match args.get("database") {
            Some(Value::Object(d)) => Some(d),
            _ => None,
        },
        base_dir: ctx.base_dir.as_deref(),
        txid: ctx.txid,
    };
    if let Err(e) = request.check() {
        return failed(e);
    }
    let state = capture(ctx.state_dir, &request);
    let dest_dir = PathBuf::from(arg_str(args, "dest_dir").unwrap_or(DEFAULT_DEST_DIR));
    // One transaction may capture twice (before and after): the name never reuses a capture's.
    let stamp = now.format("%Y%m%dT%H%M%S%.6fZ");
    let mut file = dest_dir.join(format!("{stamp}-{}.json", ctx.txid));
    for n in 2..100 {
        if !file.exists() {
            break;
        }
        file = dest_dir.join(format!("{stamp}-{}-{n}.json", ctx.txid));
    }
    if !ctx.check {
        if let Err(e) = fs::create_dir_all(&dest_dir) {
            return failed(format!("cannot create {}: {e}", dest_dir.display()));
        }
        let mut bytes = serde_json::to_vec_pretty(&state).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = write_atomic(&file, &bytes, Some(0o640)) {
            return failed(format!(
                "cannot write state capture {}: {e}",
                file.display()
            ));
        }
    }
    let mut r = super::ok(true);
    r.insert("path".into(), json!(file));
    r.insert("state".into(), state.clone());
    r.insert("ansible_facts".into(), json!({ "rampart_state": state }));
    r
}

/// The version `current` points at (`releases/<version>`), if any.
fn current_version(component_dir: &Path) -> Option<String> {
    let target = fs::read_link(component_dir.join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// A unit's ActiveState, or `unknown` when systemd cannot be asked (or does not answer within
/// [`SYSTEMD_TIMEOUT`]).
fn active_state(unit: &str) -> String {
    Systemctl::default()
        .show(unit, Instant::now() + SYSTEMD_TIMEOUT)
        .map_or_else(|_| "unknown".to_string(), |st| st.active_state)
}

fn system(state_dir: &Path) -> Value {
    let uptime_since = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| {
            let since = chrono::Utc::now() - chrono::Duration::milliseconds((secs * 1000.0) as i64);
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
    let load: Vec<f64> = fs::read_to_string("/proc/loadavg")
        .map(|t| {
            t.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "uptime_since": uptime_since,
        "load_average": load,
        "disk_usage": disk_usage(state_dir),
        "memory": memory_used_percent(),
    })
}

/// Used share of the filesystem holding `path` (the nearest existing ancestor), in %.
fn disk_usage(path: &Path) -> Option<f64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let s = nix::sys::statvfs::statvfs(p).ok()?;
    let total = s.blocks() as f64;
    let avail = s.blocks_available() as f64;
    let free = s.blocks_free() as f64;
    // As df computes it: used / (used + available to unprivileged users).
    let used = total - free;
    (used + avail > 0.0).then(|| round1(used / (used + avail) * 100.0))
}

fn memory_used_percent() -> Option<f64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?;
    (total > 0.0).then(|| round1((total - avail) / total * 100.0))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The last finished transactions, newest first: txid, playbook, outcome, finish time, and the
/// version they deployed when their variables name one (`target_version` or `version`).
fn recent_deployments(state_dir: &Path) -> Vec<Value> {
    let dir = state_dir.join(crate::journal::HISTORY_DIR);
    // txids start with their UTC start time, so names sort by age, but only to the second:
    // among the newest names, those sharing a second with the oldest one kept are ordered by
    // their journal's last write (its end). History grows with every deploy, so only these few
    // are looked at.
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    let second = |p: &PathBuf| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.split_once('Z')
            .map_or(name.to_string(), |(s, _)| s.to_string())
    };
    let mut from = names.len().saturating_sub(RECENT_DEPLOYMENTS);
    if let Some(oldest_kept) = names.get(from).map(second) {
        while from > 0 && second(&names[from - 1]) == oldest_kept {
            from -= 1;
        }
    }
    let mut recent: Vec<(std::time::SystemTime, &PathBuf)> = names[from..]
        .iter()
        .map(|p| {
            let t = fs::metadata(p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, p)
        })
        .collect();
    recent.sort();
    recent
        .iter()
        .map(|(_, p)| *p)
        .rev()
        .take(RECENT_DEPLOYMENTS)
        .filter_map(|p| {
            let read = crate::journal::read(p).ok()?;
            let first = read.entries.first()?;
            let last = read.entries.last()?;
            let (playbook, version) = match &first.record {
                Record::Begin {
                    playbook_name,
                    vars,
                    ..
                } => (
                    playbook_name.clone(),
                    vars.get("target_version")
                        .or_else(|| vars.get("version"))
                        .cloned(),
                ),
                _ => return None,
            };
            let outcome: Option<Outcome> = match &last.record {
                Record::End { outcome, .. } => Some(*outcome),
                _ => None,
            };
            Some(json!({
                "txid": first.txid,
                "playbook": playbook,
                "version": version,
                "outcome": outcome.map(Outcome::as_str),
                "time": last.time,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    #[test]
    fn captures_versions_system_and_history_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let rel = state.join("apps/backend/releases/2.0.1");
        fs::create_dir_all(&rel).unwrap();
        std::os::unix::fs::symlink("releases/2.0.1", state.join("apps/backend/current")).unwrap();
        fs::create_dir_all(state.join("apps/frontend")).unwrap();
        let dest = dir.path().join("captures");
        let run_it = |check: bool| {
            let call = Call {
                check,
                state_dir: Some(&state),
                txid: Some("tx-1"),
                ..Call::default()
            };
            call.run(
                &CAPTURE_STATE,
                json!({"dest_dir": dest, "services": ["no-such-unit.service"]}),
            )
        };
        let dry = run_it(true);
        assert!(!dest.exists(), "check mode wrote a capture");
        assert_eq!(dry["state"]["versions"]["backend"], json!("2.0.1"));
        let r = run_it(false);
        let s = &r["state"];
        assert_eq!(s["versions"]["backend"], json!("2.0.1"));
        assert_eq!(s["versions"]["frontend"], Value::Null);
        assert_eq!(s["versions"]["database"], Value::Null);
        assert_eq!(s["txid"], json!("tx-1"));
        assert_eq!(s["system"]["load_average"].as_array().unwrap().len(), 3);
        let disk = s["system"]["disk_usage"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&disk));
        assert!(s["services"]["no-such-unit.service"].is_string());
        let path = PathBuf::from(r["path"].as_str().unwrap());
        let written: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(&written, s);
        assert_eq!(r["ansible_facts"]["rampart_state"], *s);
    }

    #[test]
    fn the_module_refuses_names_that_climb_out_or_are_no_unit() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let dest = dir.path().join("captures");
        for args in [
            json!({"dest_dir": dest, "components": ["../../etc"]}),
            json!({"dest_dir": dest, "components": ["/etc"]}),
            json!({"dest_dir": dest, "services": ["a b"]}),
            json!({"dest_dir": dest, "services": ["--help"]}),
        ] {
            let call = Call {
                state_dir: Some(&state),
                txid: Some("tx-1"),
                ..Call::default()
            };
            let r = call.run(&CAPTURE_STATE, args.clone());
            assert_eq!(r["failed"], json!(true), "{args}: {r:?}");
            assert!(!dest.exists(), "{args}: a refused capture wrote a file");
        }
    }
}
