//! Pure planning: applied history rows + scripts on disk → each migration's state, the
//! problems `validate` reports, and what `migrate` or `undo` would run.
//!
//! Nothing here touches a database; [`crate::run`] reads the rows, calls these functions and
//! carries out the result one migration at a time. The states and their names are Flyway's
//! (`info`'s State column).

use std::collections::HashMap;
use std::fmt;

use crate::resolve::{Found, Kind, Script};
use crate::version::Version;

/// One row of `flyway_schema_history`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedRow {
    /// Order of application (0 for the schema-creation marker).
    pub installed_rank: i32,
    /// The version text; none for repeatables and markers.
    pub version: Option<String>,
    /// The description.
    pub description: String,
    /// `SQL`, `BASELINE`, `SCHEMA`, `UNDO_SQL`, `DELETE`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The script's relative path.
    pub script: String,
    /// The checksum, when the row has one.
    pub checksum: Option<i32>,
    /// Who applied it.
    pub installed_by: String,
    /// When (`YYYY-MM-DD HH:MM:SS`).
    pub installed_on: String,
    /// Milliseconds it took.
    pub execution_time: i32,
    /// Whether it succeeded.
    pub success: bool,
}

/// Flyway's migration states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Resolved, not applied yet.
    Pending,
    /// Resolved, above the target.
    AboveTarget,
    /// Resolved, at or below the baseline.
    BelowBaseline,
    /// The baseline marker.
    Baseline,
    /// Resolved, lower than the latest applied version, and out-of-order is off.
    Ignored,
    /// Applied, its script is gone, and newer scripts exist.
    Missing,
    /// Failed, its script is gone.
    FailedMissing,
    /// Applied.
    Success,
    /// Applied, then reversed by an undo script.
    Undone,
    /// An undo script, ready to use.
    Available,
    /// Applied and failed.
    Failed,
    /// Applied after a higher version.
    OutOfOrder,
    /// Applied, newer than every script on disk.
    Future,
    /// Failed, newer than every script on disk.
    FailedFuture,
    /// A repeatable whose script changed since it was applied.
    Outdated,
    /// An older application of a repeatable.
    Superseded,
    /// Marked deleted by repair.
    Deleted,
}

impl State {
    /// The name `info` prints.
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::AboveTarget => "Above Target",
            State::BelowBaseline => "Below Baseline",
            State::Baseline => "Baseline",
            State::Ignored => "Ignored",
            State::Missing => "Missing",
            State::FailedMissing => "Failed (Missing)",
            State::Success => "Success",
            State::Undone => "Undone",
            State::Available => "Available",
            State::Failed => "Failed",
            State::OutOfOrder => "Out of Order",
            State::Future => "Future",
            State::FailedFuture => "Failed (Future)",
            State::Outdated => "Outdated",
            State::Superseded => "Superseded",
            State::Deleted => "Deleted",
        }
    }

    /// Whether this is a failed application.
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            State::Failed | State::FailedMissing | State::FailedFuture
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which migrations `migrate` goes up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every pending migration (the default).
    Latest,
    /// No new versioned migration.
    Current,
    /// Only the next pending versioned migration.
    Next,
    /// Up to and including this version.
    Version(Version),
}

impl Target {
    /// Reads `latest`, `current`, `next` or a version.
    pub fn parse(text: Option<&str>) -> Result<Target, String> {
        match text.map(str::trim) {
            None | Some("") => Ok(Target::Latest),
            Some(t) if t.eq_ignore_ascii_case("latest") => Ok(Target::Latest),
            Some(t) if t.eq_ignore_ascii_case("current") => Ok(Target::Current),
            Some(t) if t.eq_ignore_ascii_case("next") => Ok(Target::Next),
            Some(t) => Version::parse(t)
                .map(Target::Version)
                .map_err(|_| t.to_string()),
        }
    }
}

/// The settings that change states.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Up to where.
    pub target: Target,
    /// Apply versions lower than the latest applied one.
    pub out_of_order: bool,
    /// `type:state` patterns whose problems validation ignores (`*:future`).
    pub ignore_patterns: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target: Target::Latest,
            out_of_order: false,
            ignore_patterns: vec!["*:future".into()],
        }
    }
}

/// What a line of `info` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// A versioned migration or the baseline.
    Versioned,
    /// A repeatable migration.
    Repeatable,
    /// An undo migration.
    Undo,
    /// The schema-creation marker.
    Schema,
}

impl Category {
    /// The name `info` prints.
    pub fn name(self) -> &'static str {
        match self {
            Category::Versioned => "Versioned",
            Category::Repeatable => "Repeatable",
            Category::Undo => "Undo",
            Category::Schema => "",
        }
    }
}

/// One migration as `info` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Versioned, repeatable, undo, schema.
    pub category: Category,
    /// Its version text.
    pub version: Option<String>,
    /// Its description.
    pub description: String,
    /// The history `type` (or what would be written).
    pub kind: String,
    /// The script.
    pub script: String,
    /// Its state.
    pub state: State,
    /// The history row, when applied.
    pub applied: Option<AppliedRow>,
    /// Index into the scripts of its kind in [`Found`], when resolved.
    pub resolved: Option<usize>,
    /// Whether an undo script exists for it.
    pub undoable: bool,
}

/// The state of every migration.
#[derive(Debug, Clone)]
pub struct Info {
    /// In `info` order: applied rows by rank, then pending versioned by version, then pending
    /// repeatables by description.
    pub entries: Vec<Entry>,
    /// The highest successfully applied version (baseline included).
    pub current: Option<Version>,
    /// The baseline version, when there is one.
    pub baseline: Option<Version>,
}

fn version_of(row: &AppliedRow) -> Option<Version> {
    row.version.as_deref().and_then(|v| Version::parse(v).ok())
}

/// Computes every migration's state.
pub fn info(found: &Found, rows: &[AppliedRow], settings: &Settings) -> Info {
    let by_version: HashMap<String, usize> = found
        .versioned
        .iter()
        .enumerate()
        .map(|(i, s)| (key(s.version.as_ref()), i))
        .collect();
    let undo_versions: HashMap<String, usize> = found
        .undo
        .iter()
        .enumerate()
        .map(|(i, s)| (key(s.version.as_ref()), i))
        .collect();
    let by_description: HashMap<&str, usize> = found
        .repeatable
        .iter()
        .enumerate()
        .map(|(i, s)| (s.description.as_str(), i))
        .collect();
    let max_resolved = found
        .versioned
        .iter()
        .filter_map(|s| s.version.clone())
        .max();

    // Walk the rows in rank order: which row currently stands for each version / description.
    let mut states: Vec<Option<State>> = vec![None; rows.len()];
    let mut live_version: HashMap<String, usize> = HashMap::new();
    let mut live_repeatable: HashMap<&str, usize> = HashMap::new();
    let mut highest_before = None::<Version>;
    let mut out_of_order = vec![false; rows.len()];
    let mut baseline = None;
    for (i, row) in rows.iter().enumerate() {
        match row.kind.as_str() {
            "SCHEMA" => states[i] = Some(State::Success),
            "BASELINE" => {
                states[i] = Some(State::Baseline);
                baseline = version_of(row);
                if let Some(v) = version_of(row) {
                    live_version.insert(key(Some(&v)), i);
                    highest_before = highest_before.max(Some(v));
                }
            }
            "UNDO_SQL" | "UNDO_SCRIPT" | "UNDO_JDBC" => {
                states[i] = Some(State::Success);
                if let Some(prev) = live_version.remove(&key(version_of(row).as_ref())) {
                    states[prev] = Some(State::Undone);
                }
                // The highest applied version drops back to what is still live.
                highest_before = live_version
                    .values()
                    .filter(|&&j| rows[j].success)
                    .filter_map(|&j| version_of(&rows[j]))
                    .max();
            }
            "DELETE" => {
                states[i] = Some(State::Deleted);
                let prev = match version_of(row) {
                    Some(v) => live_version.remove(&key(Some(&v))),
                    None => live_repeatable.remove(row.description.as_str()),
                };
                if let Some(prev) = prev {
                    states[prev] = Some(State::Deleted);
                }
            }
            _ => match version_of(row) {
                Some(v) => {
                    if row.success && highest_before.as_ref().is_some_and(|h| *h > v) {
                        out_of_order[i] = true;
                    }
                    if let Some(prev) = live_version.insert(key(Some(&v)), i) {
                        states[prev] = Some(State::Superseded);
                    }
                    if row.success {
                        highest_before = highest_before.max(Some(v));
                    }
                }
                None => {
                    if let Some(prev) = live_repeatable.insert(row.description.as_str(), i) {
                        states[prev] = Some(State::Superseded);
                    }
                }
            },
        }
    }

    // The live rows' states.
    for (k, &i) in &live_version {
        let row = &rows[i];
        if row.kind == "BASELINE" {
            continue;
        }
        let resolved = by_version.contains_key(k);
        let above_all = match (&version_of(row), &max_resolved) {
            (Some(v), Some(m)) => v > m,
            (Some(_), None) => true,
            _ => false,
        };
        states[i] = Some(match (row.success, resolved, above_all) {
            (false, true, _) => State::Failed,
            (false, false, true) => State::FailedFuture,
            (false, false, false) => State::FailedMissing,
            (true, true, _) if out_of_order[i] => State::OutOfOrder,
            (true, true, _) => State::Success,
            (true, false, true) => State::Future,
            (true, false, false) => State::Missing,
        });
    }
    for (&description, &i) in &live_repeatable {
        let row = &rows[i];
        states[i] = Some(match by_description.get(description) {
            _ if !row.success => State::Failed,
            None => State::Missing,
            Some(&r) if checksum_matches(&found.repeatable[r], row.checksum) => State::Success,
            Some(_) => State::Outdated,
        });
    }

    let current = live_version
        .values()
        .filter(|&&i| rows[i].success)
        .filter_map(|&i| version_of(&rows[i]))
        .max();

    let mut entries = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let (category, resolved) = match (row.kind.as_str(), &row.version) {
            ("SCHEMA", _) => (Category::Schema, None),
            ("UNDO_SQL" | "UNDO_SCRIPT" | "UNDO_JDBC", v) => (
                Category::Undo,
                undo_versions
                    .get(&key(v
                        .as_deref()
                        .and_then(|v| Version::parse(v).ok())
                        .as_ref()))
                    .copied(),
            ),
            (_, Some(v)) => (
                Category::Versioned,
                Version::parse(v)
                    .ok()
                    .and_then(|v| by_version.get(&key(Some(&v))).copied()),
            ),
            (_, None) => (
                Category::Repeatable,
                by_description.get(row.description.as_str()).copied(),
            ),
        };
        entries.push(Entry {
            category,
            version: row.version.clone(),
            description: row.description.clone(),
            kind: row.kind.clone(),
            script: row.script.clone(),
            state: states[i].unwrap_or(State::Success),
            applied: Some(row.clone()),
            resolved,
            undoable: row
                .version
                .as_deref()
                .and_then(|v| Version::parse(v).ok())
                .is_some_and(|v| undo_versions.contains_key(&key(Some(&v)))),
        });
    }

    // Resolved versioned scripts without a live row.
    let mut next_taken = false;
    for (i, script) in found.versioned.iter().enumerate() {
        // Versioned scripts always have a version: resolve refuses names without one.
        let Some(v) = script.version.clone() else {
            continue;
        };
        if live_version.contains_key(&key(Some(&v))) {
            continue;
        }
        let state = if baseline.as_ref().is_some_and(|b| v <= *b) {
            State::BelowBaseline
        } else if current.as_ref().is_some_and(|c| v < *c) && !settings.out_of_order {
            State::Ignored
        } else {
            match &settings.target {
                Target::Latest => State::Pending,
                Target::Current => State::AboveTarget,
                Target::Version(t) if v > *t => State::AboveTarget,
                Target::Version(_) => State::Pending,
                Target::Next if next_taken => State::AboveTarget,
                Target::Next => {
                    next_taken = true;
                    State::Pending
                }
            }
        };
        entries.push(Entry {
            category: Category::Versioned,
            version: Some(v.to_string()),
            description: script.description.clone(),
            kind: Kind::Versioned.history_type().into(),
            script: script.script.clone(),
            state,
            applied: None,
            resolved: Some(i),
            undoable: undo_versions.contains_key(&key(Some(&v))),
        });
    }
    // Resolved repeatables never applied.
    for (i, script) in found.repeatable.iter().enumerate() {
        if live_repeatable.contains_key(script.description.as_str()) {
            continue;
        }
        entries.push(Entry {
            category: Category::Repeatable,
            version: None,
            description: script.description.clone(),
            kind: Kind::Repeatable.history_type().into(),
            script: script.script.clone(),
            state: State::Pending,
            applied: None,
            resolved: Some(i),
            undoable: false,
        });
    }
    // Undo scripts whose versioned migration is live: they can be used.
    for (i, script) in found.undo.iter().enumerate() {
        if live_version.contains_key(&key(script.version.as_ref())) {
            entries.push(Entry {
                category: Category::Undo,
                version: script.version.as_ref().map(ToString::to_string),
                description: script.description.clone(),
                kind: Kind::Undo.history_type().into(),
                script: script.script.clone(),
                state: State::Available,
                applied: None,
                resolved: Some(i),
                undoable: false,
            });
        }
    }
    Info {
        entries,
        current,
        baseline,
    }
}

/// A version's comparison key: versions that compare equal share it.
fn key(v: Option<&Version>) -> String {
    v.map(Version::key).unwrap_or_default()
}

/// Whether an applied checksum matches a script (its checksum or the raw-text equivalent).
pub fn checksum_matches(script: &Script, applied: Option<i32>) -> bool {
    applied == Some(script.checksum) || (applied.is_some() && applied == script.equivalent_checksum)
}

fn ignored(patterns: &[String], category: Category, state: &str) -> bool {
    let category = match category {
        Category::Repeatable => "repeatable",
        _ => "versioned",
    };
    patterns.iter().any(|p| {
        let (t, s) = p.split_once(':').unwrap_or(("*", p.as_str()));
        (t == "*" || t.eq_ignore_ascii_case(category))
            && (s == "*" || s.eq_ignore_ascii_case(state))
    })
}

/// The problems `validate` reports; `for_migrate` ignores pending migrations, as migrate does.
pub fn validate(found: &Found, info: &Info, settings: &Settings, for_migrate: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let label = |e: &Entry| match &e.version {
        Some(v) => format!("version {v} ({})", e.description),
        None => format!("repeatable '{}'", e.description),
    };
    let patterns = &settings.ignore_patterns;
    for e in &info.entries {
        match e.state {
            s if s.is_failed() && !ignored(patterns, e.category, "failed") => problems.push(format!(
                "detected failed migration to {}: repair it with `rampart migrate repair` once the database is fixed",
                label(e)
            )),
            State::Missing if !ignored(patterns, e.category, "missing") => problems.push(format!(
                "detected applied migration not resolved locally: {} (script {})",
                label(e),
                e.script
            )),
            State::Future if !ignored(patterns, e.category, "future") => problems.push(format!(
                "detected applied migration not resolved locally: {} is newer than every script",
                label(e)
            )),
            State::Ignored if !ignored(patterns, e.category, "ignored") => problems.push(format!(
                "detected resolved migration not applied to database: {}, lower than the current version: set -outOfOrder=true to apply it, or -ignoreMigrationPatterns='*:ignored'",
                label(e)
            )),
            State::Pending if !for_migrate && !ignored(patterns, e.category, "pending") => problems.push(format!(
                "detected resolved migration not applied to database: {}",
                label(e)
            )),
            State::Outdated if !for_migrate && !ignored(patterns, e.category, "pending") => problems.push(format!(
                "detected outdated resolved repeatable migration that should be re-applied to database: {}",
                label(e)
            )),
            _ => {}
        }
        let (Some(row), Some(r)) = (&e.applied, e.resolved) else {
            continue;
        };
        if !matches!(e.state, State::Success | State::OutOfOrder) {
            continue;
        }
        let script = match e.category {
            Category::Versioned => &found.versioned[r],
            Category::Repeatable => continue, // a changed repeatable is Outdated, not a mismatch
            _ => continue,
        };
        if row.kind != "SQL" {
            problems.push(format!(
                "migration type mismatch for {}: applied to database {}, resolved locally SQL",
                label(e),
                row.kind
            ));
        }
        if !checksum_matches(script, row.checksum) {
            problems.push(format!(
                "migration checksum mismatch for {}: applied to database {}, resolved locally {} ({})",
                label(e),
                row.checksum.map_or("none".to_string(), |c| c.to_string()),
                script.checksum,
                script.script
            ));
        }
        if row.description != script.description {
            problems.push(format!(
                "migration description mismatch for {}: applied to database '{}', resolved locally '{}'",
                label(e),
                row.description,
                script.description
            ));
        }
    }
    problems
}

/// A step of a migrate plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Which kind of script.
    pub kind: Kind,
    /// Its index in [`Found`]'s list of that kind.
    pub index: usize,
}

/// What `migrate` would apply, in order, or the failed row that stops it.
pub fn pending(info: &Info) -> Result<Vec<Step>, String> {
    if let Some(failed) = info.entries.iter().find(|e| e.state.is_failed()) {
        return Err(failed
            .version
            .clone()
            .unwrap_or_else(|| failed.description.clone()));
    }
    let mut versioned: Vec<(&Entry, usize)> = info
        .entries
        .iter()
        .filter(|e| e.category == Category::Versioned && e.state == State::Pending)
        .filter_map(|e| e.resolved.map(|r| (e, r)))
        .collect();
    versioned.sort_by_key(|(_, r)| *r);
    let mut steps: Vec<Step> = versioned
        .into_iter()
        .map(|(_, index)| Step {
            kind: Kind::Versioned,
            index,
        })
        .collect();
    let mut repeatable: Vec<usize> = info
        .entries
        .iter()
        .filter(|e| {
            e.category == Category::Repeatable
                && matches!(e.state, State::Pending | State::Outdated)
        })
        .filter_map(|e| e.resolved)
        .collect();
    repeatable.sort_unstable();
    repeatable.dedup();
    steps.extend(repeatable.into_iter().map(|index| Step {
        kind: Kind::Repeatable,
        index,
    }));
    Ok(steps)
}

/// The undo scripts to run, newest first, to bring the schema down to `target` (exclusive:
/// `target` itself stays applied); `None` undoes only the newest applied version.
pub fn undo(found: &Found, info: &Info, target: Option<&Version>) -> Result<Vec<usize>, String> {
    let mut live: Vec<(Version, &Entry)> = info
        .entries
        .iter()
        .filter(|e| {
            e.category == Category::Versioned
                && e.applied.is_some()
                && matches!(e.state, State::Success | State::OutOfOrder)
        })
        .filter_map(|e| {
            e.version
                .as_deref()
                .and_then(|v| Version::parse(v).ok())
                .map(|v| (v, e))
        })
        .collect();
    live.sort_by(|a, b| b.0.cmp(&a.0));
    let chosen: Vec<&(Version, &Entry)> = match target {
        Some(t) => live.iter().filter(|(v, _)| v > t).collect(),
        None => live.iter().take(1).collect(),
    };
    let mut out = Vec::new();
    for (v, e) in chosen {
        let Some(i) = found
            .undo
            .iter()
            .position(|u| u.version.as_ref() == Some(v))
        else {
            return Err(format!(
                "version {v} ({}) has no undo script U{v}__*.sql, so it cannot be undone",
                e.description
            ));
        };
        out.push(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use std::path::PathBuf;

    fn script(kind: Kind, version: Option<&str>, description: &str, text: &str) -> Script {
        let prefix = match kind {
            Kind::Versioned => "V",
            Kind::Undo => "U",
            Kind::Repeatable => "R",
        };
        let name = format!(
            "{prefix}{}__{}.sql",
            version.unwrap_or(""),
            description.replace(' ', "_")
        );
        Script {
            kind,
            version: version.map(|v| Version::parse(v).unwrap()),
            description: description.into(),
            script: name.clone(),
            path: PathBuf::from(name),
            text: text.into(),
            checksum: checksum::of_text(text),
            equivalent_checksum: None,
            execute_in_transaction: None,
            placeholder_replacement: None,
        }
    }

    fn row(
        rank: i32,
        version: Option<&str>,
        description: &str,
        kind: &str,
        checksum: Option<i32>,
        success: bool,
    ) -> AppliedRow {
        AppliedRow {
            installed_rank: rank,
            version: version.map(Into::into),
            description: description.into(),
            kind: kind.into(),
            script: format!("V{}__{}.sql", version.unwrap_or(""), description),
            checksum,
            installed_by: "test".into(),
            installed_on: "2026-11-27 00:00:00".into(),
            execution_time: 1,
            success,
        }
    }

    fn found() -> Found {
        Found {
            versioned: vec![
                script(Kind::Versioned, Some("1"), "one", "select 1;"),
                script(Kind::Versioned, Some("1.9"), "nine", "select 19;"),
                script(Kind::Versioned, Some("1.10"), "ten", "select 110;"),
            ],
            undo: vec![script(Kind::Undo, Some("1.10"), "ten", "select -110;")],
            repeatable: vec![script(
                Kind::Repeatable,
                None,
                "view",
                "create view v as select 1;",
            )],
            ..Found::default()
        }
    }

    fn states(info: &Info) -> Vec<(Option<String>, &'static str)> {
        info.entries
            .iter()
            .map(|e| (e.version.clone(), e.state.name()))
            .collect()
    }

    #[test]
    fn fresh_database_plans_everything_in_version_order_then_repeatables() {
        let f = found();
        let i = info(&f, &[], &Settings::default());
        let steps = pending(&i).unwrap();
        let names: Vec<&str> = steps
            .iter()
            .map(|s| match s.kind {
                Kind::Repeatable => f.repeatable[s.index].script.as_str(),
                _ => f.versioned[s.index].script.as_str(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "V1__one.sql",
                "V1.9__nine.sql",
                "V1.10__ten.sql",
                "R__view.sql"
            ]
        );
        assert!(validate(&f, &i, &Settings::default(), true).is_empty());
        assert_eq!(validate(&f, &i, &Settings::default(), false).len(), 4);
    }

    #[test]
    fn applied_rows_are_success_and_a_changed_script_is_a_checksum_mismatch_naming_both() {
        let f = found();
        let rows = vec![
            row(
                1,
                Some("1"),
                "one",
                "SQL",
                Some(f.versioned[0].checksum),
                true,
            ),
            row(2, Some("1.9"), "nine", "SQL", Some(12345), true),
        ];
        let i = info(&f, &rows, &Settings::default());
        assert_eq!(i.current.as_ref().unwrap().as_str(), "1.9");
        let problems = validate(&f, &i, &Settings::default(), true);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("checksum mismatch"), "{}", problems[0]);
        assert!(problems[0].contains("12345"), "{}", problems[0]);
        assert!(
            problems[0].contains(&f.versioned[1].checksum.to_string()),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_lower_unapplied_version_is_ignored_unless_out_of_order() {
        let f = found();
        let rows = vec![
            row(
                1,
                Some("1"),
                "one",
                "SQL",
                Some(f.versioned[0].checksum),
                true,
            ),
            row(
                2,
                Some("1.10"),
                "ten",
                "SQL",
                Some(f.versioned[2].checksum),
                true,
            ),
        ];
        let i = info(&f, &rows, &Settings::default());
        assert!(states(&i).contains(&(Some("1.9".into()), "Ignored")));
        assert!(!validate(&f, &i, &Settings::default(), true).is_empty());
        let ooo = Settings {
            out_of_order: true,
            ..Settings::default()
        };
        let i = info(&f, &rows, &ooo);
        let steps = pending(&i).unwrap();
        assert_eq!(
            steps[0],
            Step {
                kind: Kind::Versioned,
                index: 1
            }
        );
    }

    #[test]
    fn failed_rows_stop_migrate_and_missing_future_are_told_apart() {
        let f = found();
        let rows = vec![
            row(
                1,
                Some("1"),
                "one",
                "SQL",
                Some(f.versioned[0].checksum),
                true,
            ),
            row(2, Some("1.5"), "gone", "SQL", Some(1), true),
            row(3, Some("7"), "newer", "SQL", Some(2), true),
            row(
                4,
                Some("1.9"),
                "nine",
                "SQL",
                Some(f.versioned[1].checksum),
                false,
            ),
        ];
        let i = info(&f, &rows, &Settings::default());
        let s = states(&i);
        assert!(s.contains(&(Some("1.5".into()), "Missing")), "{s:?}");
        assert!(s.contains(&(Some("7".into()), "Future")), "{s:?}");
        assert!(s.contains(&(Some("1.9".into()), "Failed")), "{s:?}");
        assert_eq!(pending(&i).unwrap_err(), "1.9");
        let problems = validate(&f, &i, &Settings::default(), true);
        // 1.5 missing, 1.9 failed, 1.10 ignored (below the applied 7); 7 itself is Future,
        // which the default pattern `*:future` ignores.
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            !problems.iter().any(|p| p.contains("version 7")),
            "{problems:?}"
        );
    }

    #[test]
    fn repeatables_outdated_and_superseded() {
        let f = found();
        let r = &f.repeatable[0];
        let rows = vec![
            row(1, None, "view", "SQL", Some(r.checksum - 1), true),
            row(2, None, "view", "SQL", Some(r.checksum + 1), true),
        ];
        let i = info(&f, &rows, &Settings::default());
        assert_eq!(i.entries[0].state, State::Superseded);
        assert_eq!(i.entries[1].state, State::Outdated);
        let steps = pending(&i).unwrap();
        assert!(steps.contains(&Step {
            kind: Kind::Repeatable,
            index: 0
        }));
    }

    #[test]
    fn target_limits_versioned_migrations() {
        let f = found();
        let s = Settings {
            target: Target::parse(Some("1.9")).unwrap(),
            ..Settings::default()
        };
        let i = info(&f, &[], &s);
        assert!(states(&i).contains(&(Some("1.10".into()), "Above Target")));
        let next = Settings {
            target: Target::Next,
            ..Settings::default()
        };
        let steps = pending(&info(&f, &[], &next)).unwrap();
        assert_eq!(
            steps.iter().filter(|s| s.kind == Kind::Versioned).count(),
            1
        );
    }

    #[test]
    fn baseline_hides_lower_scripts_and_undo_rows_mark_undone() {
        let f = found();
        let rows = vec![
            row(
                1,
                Some("1.9"),
                "<< Flyway Baseline >>",
                "BASELINE",
                None,
                true,
            ),
            row(
                2,
                Some("1.10"),
                "ten",
                "SQL",
                Some(f.versioned[2].checksum),
                true,
            ),
        ];
        let i = info(&f, &rows, &Settings::default());
        let s = states(&i);
        assert!(s.contains(&(Some("1".into()), "Below Baseline")), "{s:?}");
        assert_eq!(
            undo(&f, &i, Some(&Version::parse("1.9").unwrap())).unwrap(),
            vec![0]
        );
        let mut rows = rows;
        rows.push(row(3, Some("1.10"), "ten", "UNDO_SQL", Some(1), true));
        let i = info(&f, &rows, &Settings::default());
        assert_eq!(i.entries[1].state, State::Undone);
        assert_eq!(i.current.as_ref().unwrap().as_str(), "1.9");
        assert_eq!(
            pending(&i).unwrap()[0],
            Step {
                kind: Kind::Versioned,
                index: 2
            }
        );
    }

    #[test]
    fn undo_without_a_script_is_refused_naming_the_version() {
        let f = found();
        let rows = vec![row(
            1,
            Some("1"),
            "one",
            "SQL",
            Some(f.versioned[0].checksum),
            true,
        )];
        let i = info(&f, &rows, &Settings::default());
        let err = undo(&f, &i, None).unwrap_err();
        assert!(err.contains("version 1 "), "{err}");
    }
}
