//! `migrate`: Flyway-compatible database migrations inside the deploy transaction, with a
//! restore point the rescue can bring back.
//!
//! Inputs: `url` (`jdbc:postgresql://...`), `user`, `password`, `locations`, `schemas`,
//! `table`, `target`, `placeholders`, `baseline_on_migrate`, `out_of_order`, `mixed`,
//! `config_files` (flyway.conf/.toml read first; the task's arguments win), `restore_point`
//! (`undo`, `dump`, `template` or `none`), `keep_restore_point`, `maintenance_db`, and `state`:
//! - `validated` (before services stop): splits and classifies every pending migration and
//!   refuses what the chosen restore point could not undo — a non-transactional migration with
//!   `restore_point: none`, a migration without a `U` script with `restore_point: undo`.
//! - `applied`: validates, records the restore point (`<state_dir>/restore-points/<txid>.json`,
//!   written before anything is applied, reused if the task runs again after a crash), then
//!   applies the pending migrations one transaction each.
//! - `restored` (in rescue): brings the database back to the restore point, checks the schema
//!   version is the recorded one, then removes the restore point unless kept.
//! - `released` (at the end of a successful block): removes the restore point unless kept.
//! - `undone` (a rollback with `--database undo`): runs the `U` scripts of `locations` (the
//!   release being left) newest first, down to `target`, or to the newest versioned migration of
//!   `target_locations` (the release rolled back to); `ok` when the schema is there already.
//!   Reversed by migrating again (`applied`).
//!
//! Outputs: `pending` / `applied` (version, script, transactional), `initial_version`,
//! `version`, `restore_point`. Reversal: `state: restored`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use rampart_playbook::modules::migrate as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_str, failed, ok};
use rampart_host::durable::write_atomic;
use rampart_migrate::MigrateError;
use rampart_migrate::config::{self, Sources};
use rampart_migrate::restore::{self, RestorePoint, Strategy};
use rampart_migrate::run::{Classified, Progress, Runner};

/// `migrate`.
pub static MIGRATE: ModuleSpec = ModuleSpec {
    schema: &schema::MIGRATE,
    run: run_migrate,
};

/// The restore point record of a transaction, and whether it was already used.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    point: RestorePoint,
    restored: bool,
}

fn restore_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("restore-points")
}

fn record_path(state_dir: &Path, txid: &str) -> PathBuf {
    restore_dir(state_dir).join(format!("{txid}.json"))
}

fn read_record(path: &Path) -> Result<Option<Record>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("reading restore point {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading restore point {}: {e}", path.display())),
    }
}

fn write_record(path: &Path, record: &Record) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    write_atomic(path, &bytes, Some(0o600))
        .map_err(|e| format!("writing restore point {}: {e}", path.display()))
}

/// The Flyway configuration the task describes: its config files, then its arguments (also
/// used by `capture_state` for its `database` argument).
pub(crate) fn configuration(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<config::Config, String> {
    configuration_in(args, ctx.base_dir.as_deref())
}

/// [`configuration`] with relative paths resolved against `base_dir` (`.` when `None`).
pub(crate) fn configuration_in(
    args: &Map<String, Value>,
    base_dir: Option<&std::path::Path>,
) -> Result<config::Config, String> {
    let base = base_dir.map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
    let mut cli = Vec::new();
    for (arg, key) in [
        ("url", "url"),
        ("user", "user"),
        ("password", "password"),
        ("table", "table"),
        ("target", "target"),
    ] {
        // A playbook passes '' for "not set" (`| default('')`).
        if let Some(v) = arg_str(args, arg).filter(|v| !v.is_empty()) {
            cli.push((key.to_string(), v.to_string()));
        }
    }
    for (arg, key) in [
        ("baseline_on_migrate", "baselineOnMigrate"),
        ("out_of_order", "outOfOrder"),
        ("mixed", "mixed"),
    ] {
        if let Some(v) = arg_bool(args, arg) {
            cli.push((key.to_string(), v.to_string()));
        }
    }
    let locations = super::arg_strings(args.get("locations"));
    if !locations.is_empty() {
        let resolved: Vec<String> = locations
            .iter()
            .map(|l| {
                let path = l.strip_prefix("filesystem:").unwrap_or(l);
                format!("filesystem:{}", base.join(path).display())
            })
            .collect();
        cli.push(("locations".into(), resolved.join(",")));
    }
    let schemas = super::arg_strings(args.get("schemas"));
    if !schemas.is_empty() {
        cli.push(("schemas".into(), schemas.join(",")));
    }
    if let Some(Value::Object(map)) = args.get("placeholders") {
        for (k, v) in map {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            cli.push((format!("placeholders.{k}"), value));
        }
    }
    let sources = Sources {
        files: super::arg_strings(args.get("config_files"))
            .iter()
            .map(|f| base.join(f))
            .collect(),
        env: Vec::new(),
        cli,
        environment: None,
        working_dir: base,
    };
    config::load(&sources).map_err(|e| e.to_string())
}

fn classified_json(list: &[Classified]) -> Value {
    json!(list)
}

/// What a restore point cannot cover among the pending migrations, as a message.
fn refuse_for_strategy(
    strategy: Strategy,
    pending: &[Classified],
    runner: &Runner,
) -> Option<String> {
    match strategy {
        Strategy::None => {
            let outside: Vec<&Classified> = pending.iter().filter(|c| !c.transactional).collect();
            (!outside.is_empty()).then(|| {
                format!(
                    "{} run{} outside a transaction (e.g. CREATE INDEX CONCURRENTLY): if {} fails half-way nothing rolls it back, and restore_point: none keeps no way back; choose restore_point: dump, template or undo",
                    outside.iter().map(|c| c.script.as_str()).collect::<Vec<_>>().join(", "),
                    if outside.len() == 1 { "s" } else { "" },
                    if outside.len() == 1 { "it" } else { "one" },
                )
            })
        }
        Strategy::Undo => {
            let undo = &runner.found().undo;
            let missing: Vec<String> = pending
                .iter()
                .filter_map(|c| c.version.as_ref().map(|v| (v, c)))
                .filter(|(v, _)| {
                    !undo.iter().any(|u| {
                        u.version.as_ref().map(ToString::to_string).as_deref() == Some(v.as_str())
                    })
                })
                .map(|(v, c)| format!("{} (U{v}__*.sql)", c.script))
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "restore_point: undo needs an undo script for every pending migration; missing for {}; add them, or choose restore_point: dump or template",
                    missing.join(", ")
                )
            })
        }
        Strategy::Dump | Strategy::Template => None,
    }
}

fn strategy_of(args: &Map<String, Value>) -> Strategy {
    arg_str(args, "restore_point")
        .and_then(Strategy::parse)
        .unwrap_or(Strategy::None)
}

fn open(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<Runner, String> {
    let config = configuration(args, ctx)?;
    let mut runner = Runner::open(&config).map_err(|e| e.to_string())?;
    if let Some(db) = arg_str(args, "maintenance_db") {
        runner.set_maintenance_db(db);
    }
    Ok(runner)
}

fn run_migrate(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let state = arg_str(args, "state").unwrap_or("applied");
    let result = match state {
        "validated" => validated(args, ctx),
        "applied" => applied(args, ctx),
        "restored" => restored(args, ctx),
        "released" => released(args, ctx),
        "undone" => undone(args, ctx),
        other => Err(failed(format!("unknown state {other}"))),
    };
    result.unwrap_or_else(|r| r)
}

fn validated(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    let mut runner = open(args, ctx).map_err(failed)?;
    let pending = runner
        .classify_pending()
        .map_err(|e| failed(e.to_string()))?;
    let strategy = strategy_of(args);
    if let Some(msg) = refuse_for_strategy(strategy, &pending, &runner) {
        let mut r = failed(msg);
        r.insert("pending".into(), classified_json(&pending));
        return Err(r);
    }
    let current = runner.info().map_err(|e| failed(e.to_string()))?.current;
    let mut r = ok(false);
    r.insert("pending".into(), classified_json(&pending));
    r.insert("version".into(), json!(current.map(|v| v.to_string())));
    r.insert("restore_point".into(), json!(strategy));
    r.insert(
        "msg".into(),
        json!(format!(
            "{} pending migration(s), restore point: {}",
            pending.len(),
            arg_str(args, "restore_point").unwrap_or("none")
        )),
    );
    Ok(r)
}

fn applied(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    let mut runner = open(args, ctx).map_err(failed)?;
    let pending = runner
        .classify_pending()
        .map_err(|e| failed(e.to_string()))?;
    let strategy = strategy_of(args);
    if let Some(msg) = refuse_for_strategy(strategy, &pending, &runner) {
        return Err(failed(msg));
    }
    if ctx.check {
        let mut r = ok(!pending.is_empty());
        r.insert("pending".into(), classified_json(&pending));
        return Ok(r);
    }
    let path = record_path(ctx.state_dir, ctx.txid);
    // A record from an earlier run of this task (a crash, then recovery) is the true "before":
    // never take a second one over a half-migrated database.
    let mut record = read_record(&path).map_err(failed)?;
    if record.is_none() && !pending.is_empty() && strategy != Strategy::None {
        let point = restore::take(&mut runner, strategy, &restore_dir(ctx.state_dir), ctx.txid)
            .map_err(|e| failed(e.to_string()))?;
        let fresh = Record {
            point,
            restored: false,
        };
        write_record(&path, &fresh).map_err(failed)?;
        record = Some(fresh);
    }
    let result = runner.migrate(&mut |progress| {
        if let Progress::Applying {
            script,
            transactional,
        } = progress
        {
            tracing::info!(script = %script.script, transactional, "applying migration");
        }
    });
    let point_json = record.as_ref().map(|r| json!(r.point));
    match result {
        Ok(report) => {
            let mut r = ok(!report.applied.is_empty());
            r.insert("applied".into(), json!(report.applied));
            r.insert("initial_version".into(), json!(report.initial_version));
            r.insert("version".into(), json!(report.target_version));
            r.insert("restore_point".into(), json!(point_json));
            r.insert(
                "msg".into(),
                json!(format!(
                    "applied {} migration(s): {} -> {}",
                    report.applied.len(),
                    report
                        .initial_version
                        .as_deref()
                        .unwrap_or("<< Empty Schema >>"),
                    report
                        .target_version
                        .as_deref()
                        .unwrap_or("<< Empty Schema >>")
                )),
            );
            Ok(r)
        }
        Err(e) => {
            let mut r = failed(e.to_string());
            if let MigrateError::Apply {
                applied,
                failed_row,
                ..
            } = &e
            {
                r.insert("applied".into(), json!(applied));
                r.insert("failed_row".into(), json!(failed_row));
                // Applied migrations are changes, even though the task failed.
                r.insert("changed".into(), json!(!applied.is_empty()));
            }
            r.insert("restore_point".into(), json!(point_json));
            Err(r)
        }
    }
}

/// The schema version a release runs on: the newest versioned migration of the configuration
/// `args` gives, with `locations` (the release's migrations) in place of its own, named as that
/// configuration says.
fn newest_versioned(
    args: &Map<String, Value>,
    locations: &[String],
    base: Option<&Path>,
) -> Result<Option<rampart_migrate::version::Version>, String> {
    let mut args = args.clone();
    args.insert("locations".into(), json!(locations));
    let config = configuration_in(&args, base)?;
    let naming = rampart_migrate::resolve::Naming::from(&config);
    let found =
        rampart_migrate::resolve::scan(&config.locations, &naming).map_err(|e| e.to_string())?;
    Ok(found
        .versioned
        .iter()
        .filter_map(|s| s.version.clone())
        .max())
}

/// `undone`: the `U` scripts of `locations` (the release being left), newest first, down to
/// `target` (which stays applied) or, without one, to the newest versioned migration of
/// `target_locations` (the schema the release rolled back to runs on). `ok` when the schema is
/// there already; refused, naming the version, when an undo script is missing.
fn undone(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    use rampart_migrate::version::Version;
    let target = match arg_str(args, "target").filter(|t| !t.is_empty()) {
        Some(t) => Version::parse(t).map_err(|e| failed(format!("target {t}: {e}")))?,
        None => {
            let to = super::arg_strings(args.get("target_locations"));
            if to.is_empty() {
                return Err(failed(
                    "state=undone needs `target` or `target_locations` (the migrations of the release rolled back to)",
                ));
            }
            newest_versioned(args, &to, ctx.base_dir.as_deref())
                .map_err(failed)?
                .ok_or_else(|| {
                    failed(format!(
                        "no versioned migration in {}: cannot tell which schema version the release rolled back to runs on",
                        to.join(", ")
                    ))
                })?
        }
    };
    // Undo scripts are the left release's; its Flyway `target` must not cut them off.
    let mut open_args = args.clone();
    open_args.remove("target");
    let mut runner = open(&open_args, ctx).map_err(failed)?;
    let info = runner.info().map_err(|e| failed(e.to_string()))?;
    let before = info.current.clone();
    let plan = rampart_migrate::plan::undo(runner.found(), &info, Some(&target))
        .map_err(|e| failed(format!("cannot undo the schema down to {target}: {e}")))?;
    let shown = |v: &Option<Version>| {
        v.as_ref()
            .map_or("<< Empty Schema >>".into(), |v| v.to_string())
    };
    let mut r = ok(!plan.is_empty());
    r.insert(
        "initial_version".into(),
        json!(before.as_ref().map(|v| v.to_string())),
    );
    r.insert("target".into(), json!(target.to_string()));
    if plan.is_empty() || ctx.check {
        let would: Vec<String> = plan
            .iter()
            .map(|&i| runner.found().undo[i].script.clone())
            .collect();
        r.insert(
            "version".into(),
            json!(before.as_ref().map(|v| v.to_string())),
        );
        r.insert("pending".into(), json!(would));
        r.insert(
            "msg".into(),
            json!(if plan.is_empty() {
                format!(
                    "schema version {} already (target {target})",
                    shown(&before)
                )
            } else {
                format!(
                    "would undo {} migration(s): {} -> {target}",
                    plan.len(),
                    shown(&before)
                )
            }),
        );
        return Ok(r);
    }
    match runner.undo(Some(&target), &mut |_| {}) {
        Ok(undone) => {
            let after = runner.info().map_err(|e| failed(e.to_string()))?.current;
            r.insert("undone".into(), json!(undone));
            r.insert(
                "version".into(),
                json!(after.as_ref().map(|v| v.to_string())),
            );
            r.insert(
                "msg".into(),
                json!(format!(
                    "undid {} migration(s): {} -> {}",
                    undone.len(),
                    shown(&before),
                    shown(&after)
                )),
            );
            Ok(r)
        }
        Err(e) => {
            let mut r = failed(e.to_string());
            r.insert("changed".into(), json!(true));
            Err(r)
        }
    }
}

fn restored(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    let path = record_path(ctx.state_dir, ctx.txid);
    let Some(mut record) = read_record(&path).map_err(failed)? else {
        let mut r = ok(false);
        r.insert(
            "msg".into(),
            json!("no restore point for this transaction: no migration was applied, nothing to restore"),
        );
        return Ok(r);
    };
    if record.restored {
        let mut r = ok(false);
        r.insert(
            "msg".into(),
            json!("the database was already restored by this transaction"),
        );
        r.insert("restore_point".into(), json!(record.point));
        return Ok(r);
    }
    if ctx.check {
        let mut r = ok(true);
        r.insert("restore_point".into(), json!(record.point));
        return Ok(r);
    }
    let mut runner = open(args, ctx).map_err(failed)?;
    let done = restore::restore(&mut runner, &record.point).map_err(|e| {
        let mut r = failed(format!("restoring the database: {e}"));
        r.insert("restore_point".into(), json!(record.point));
        r
    })?;
    // Verify: the schema is back at the recorded version.
    let now = runner
        .info()
        .map_err(|e| failed(e.to_string()))?
        .current
        .map(|v| v.to_string());
    if record.point.strategy != Strategy::None && now != record.point.version {
        return Err(failed(format!(
            "restore ran ({done}) but the schema is at version {} instead of {}",
            now.as_deref().unwrap_or("<< Empty Schema >>"),
            record
                .point
                .version
                .as_deref()
                .unwrap_or("<< Empty Schema >>")
        )));
    }
    record.restored = true;
    write_record(&path, &record).map_err(failed)?;
    if !arg_bool(args, "keep_restore_point").unwrap_or(false) {
        restore::discard(&mut runner, &record.point).map_err(|e| failed(e.to_string()))?;
    }
    let mut r = ok(record.point.strategy != Strategy::None);
    r.insert("msg".into(), json!(done));
    r.insert("version".into(), json!(now));
    r.insert("restore_point".into(), json!(record.point));
    Ok(r)
}

fn released(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    let path = record_path(ctx.state_dir, ctx.txid);
    let Some(record) = read_record(&path).map_err(failed)? else {
        return Ok(ok(false));
    };
    if arg_bool(args, "keep_restore_point").unwrap_or(false) {
        let mut r = ok(false);
        r.insert(
            "msg".into(),
            json!("restore point kept (keep_restore_point: true)"),
        );
        r.insert("restore_point".into(), json!(record.point));
        return Ok(r);
    }
    if ctx.check {
        return Ok(ok(true));
    }
    let needs_db = record.point.copy.is_some();
    if needs_db {
        let mut runner = open(args, ctx).map_err(failed)?;
        restore::discard(&mut runner, &record.point).map_err(|e| failed(e.to_string()))?;
    } else if let Some(dump) = &record.point.dump {
        match std::fs::remove_file(dump) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(format!("removing {}: {e}", dump.display()))),
        }
    }
    std::fs::remove_file(&path).map_err(|e| failed(format!("removing {}: {e}", path.display())))?;
    let mut r = ok(true);
    r.insert(
        "msg".into(),
        json!(format!("removed the {:?} restore point", record.point.strategy).to_lowercase()),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_schema_a_release_runs_on_is_read_with_the_configured_naming() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("db");
        fs::create_dir_all(&sql).unwrap();
        for f in ["M1__one.sql", "M2__two.sql", "V9__not_a_migration_here.sql"] {
            fs::write(sql.join(f), "select 1;").unwrap();
        }
        fs::write(
            dir.path().join("flyway.conf"),
            "flyway.sqlMigrationPrefix=M\n",
        )
        .unwrap();
        let args = json!({"url": "postgresql://127.0.0.1:1/x", "config_files": ["flyway.conf"]});
        let v = newest_versioned(
            args.as_object().unwrap(),
            &["db".to_string()],
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(v.map(|v| v.to_string()).as_deref(), Some("2"));
    }
}
