//! Finding migrations on disk: Flyway's file naming, script metadata files and SQL callbacks.
//!
//! Input: the `filesystem:` locations and the naming settings. Output: the versioned, undo and
//! repeatable migrations and the callbacks, each with its script path relative to its location
//! (`/` separators, as Flyway stores it), its raw text and its checksum; plus the names that
//! look like migrations but are not valid, which are reported and skipped as Flyway does.
//! Placeholder replacement and statement splitting happen later, once the run's values are
//! known ([`crate::plan`] and [`crate::run`]).

use std::path::{Path, PathBuf};

use crate::checksum;
use crate::error::MigrateError;
use crate::version::Version;

/// What a migration file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `V<version>__<desc>.sql`.
    Versioned,
    /// `U<version>__<desc>.sql`: reverses the versioned migration of the same version.
    Undo,
    /// `R__<desc>.sql`: applied again whenever its checksum changes.
    Repeatable,
}

impl Kind {
    /// The `type` column Flyway writes for it.
    pub fn history_type(self) -> &'static str {
        match self {
            Kind::Versioned | Kind::Repeatable => "SQL",
            Kind::Undo => "UNDO_SQL",
        }
    }
}

/// A migration script found on disk.
#[derive(Debug, Clone)]
pub struct Script {
    /// Versioned, undo or repeatable.
    pub kind: Kind,
    /// Its version (none for repeatables).
    pub version: Option<Version>,
    /// The description: the name after the separator, `_` read as a space.
    pub description: String,
    /// The path relative to its location, with `/` separators.
    pub script: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its text, decoded, byte order mark removed.
    pub text: String,
    /// The checksum written to the history: of the raw text for versioned and undo scripts,
    /// of the text after placeholder replacement for repeatables ([`crate::placeholders::Placeholders::replace`]).
    pub checksum: i32,
    /// For a repeatable whose placeholders changed its text: the raw text's checksum, which an
    /// applied row may also carry (Flyway accepts either).
    pub equivalent_checksum: Option<i32>,
    /// `executeInTransaction` from a sibling `<script>.conf`, when it says so.
    pub execute_in_transaction: Option<bool>,
    /// `placeholderReplacement` from a sibling `<script>.conf`, when it says so.
    pub placeholder_replacement: Option<bool>,
}

/// A SQL callback (`beforeMigrate.sql`, `afterEachMigrate__notify.sql`, ...).
#[derive(Debug, Clone)]
pub struct Callback {
    /// Its event.
    pub event: Event,
    /// The path relative to its location.
    pub script: String,
    /// Its text.
    pub text: String,
}

/// The callback events this runner fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Before the first migration of a `migrate`.
    BeforeMigrate,
    /// Before each migration, in its transaction.
    BeforeEachMigrate,
    /// After each successful migration, in its transaction.
    AfterEachMigrate,
    /// After a migration failed.
    AfterEachMigrateError,
    /// After a successful `migrate`.
    AfterMigrate,
    /// After a failed `migrate`.
    AfterMigrateError,
    /// Any other Flyway event: recognised (so the file is not a migration), never fired.
    Other,
}

/// Flyway's event names; a file named after one is a callback, never a migration.
const EVENTS: &[(&str, Event)] = &[
    ("beforeMigrate", Event::BeforeMigrate),
    ("beforeEachMigrate", Event::BeforeEachMigrate),
    ("afterEachMigrate", Event::AfterEachMigrate),
    ("afterEachMigrateError", Event::AfterEachMigrateError),
    ("afterMigrate", Event::AfterMigrate),
    ("afterMigrateError", Event::AfterMigrateError),
    ("beforeEachMigrateStatement", Event::Other),
    ("afterEachMigrateStatement", Event::Other),
    ("afterEachMigrateStatementError", Event::Other),
    ("beforeRepeatables", Event::Other),
    ("afterVersioned", Event::Other),
    ("afterMigrateApplied", Event::Other),
    ("beforeClean", Event::Other),
    ("afterClean", Event::Other),
    ("afterCleanError", Event::Other),
    ("beforeValidate", Event::Other),
    ("afterValidate", Event::Other),
    ("afterValidateError", Event::Other),
    ("beforeBaseline", Event::Other),
    ("afterBaseline", Event::Other),
    ("afterBaselineError", Event::Other),
    ("beforeRepair", Event::Other),
    ("afterRepair", Event::Other),
    ("afterRepairError", Event::Other),
    ("beforeInfo", Event::Other),
    ("afterInfo", Event::Other),
    ("afterInfoError", Event::Other),
    ("beforeUndo", Event::Other),
    ("beforeEachUndo", Event::Other),
    ("afterEachUndo", Event::Other),
    ("afterEachUndoError", Event::Other),
    ("afterUndo", Event::Other),
    ("afterUndoError", Event::Other),
    ("createSchema", Event::Other),
    ("beforeCreateSchema", Event::Other),
    ("beforeConnect", Event::Other),
    ("afterConnect", Event::Other),
];

/// How migration files are named (Flyway's prefixes, separator and suffixes).
#[derive(Debug, Clone)]
pub struct Naming {
    /// Versioned prefix (`V`).
    pub versioned: String,
    /// Undo prefix (`U`).
    pub undo: String,
    /// Repeatable prefix (`R`).
    pub repeatable: String,
    /// Separator between version and description (`__`).
    pub separator: String,
    /// File suffixes (`.sql`), matched case-insensitively.
    pub suffixes: Vec<String>,
}

impl From<&crate::config::Config> for Naming {
    /// The naming a configuration sets (`sqlMigrationPrefix`, `sqlMigrationSeparator`, ...).
    fn from(config: &crate::config::Config) -> Naming {
        Naming {
            versioned: config.sql_migration_prefix.clone(),
            undo: config.undo_sql_migration_prefix.clone(),
            repeatable: config.repeatable_sql_migration_prefix.clone(),
            separator: config.sql_migration_separator.clone(),
            suffixes: config.sql_migration_suffixes.clone(),
        }
    }
}

impl Default for Naming {
    fn default() -> Self {
        Naming {
            versioned: "V".into(),
            undo: "U".into(),
            repeatable: "R".into(),
            separator: "__".into(),
            suffixes: vec![".sql".into()],
        }
    }
}

/// Everything found in the locations.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Versioned migrations, by version.
    pub versioned: Vec<Script>,
    /// Undo migrations, by version.
    pub undo: Vec<Script>,
    /// Repeatable migrations, by description.
    pub repeatable: Vec<Script>,
    /// Callbacks, by file name.
    pub callbacks: Vec<Callback>,
    /// Files that look like migrations but whose names are not valid, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// What a file name says the file is.
#[derive(Debug, PartialEq)]
enum Name {
    Migration {
        kind: Kind,
        version: Option<Version>,
        description: String,
    },
    Callback(Event),
    /// Not a migration file at all (another suffix).
    NotMigration,
    /// Looks like one, but is not valid: the reason.
    Invalid(String),
}

fn parse_name(file: &str, naming: &Naming) -> Name {
    // The suffix is compared with the name's own last bytes: upper-casing can change a text's
    // length (`ŉ` is `ʼN`), so "the upper-cased name ends with it" may not cut the name anywhere.
    let Some(stem) = naming.suffixes.iter().find_map(|s| {
        let cut = file.len().checked_sub(s.len())?;
        let tail = file.get(cut..)?;
        (tail.to_uppercase() == s.to_uppercase()).then(|| &file[..cut])
    }) else {
        return Name::NotMigration;
    };
    // Callbacks first: an event name, alone or followed by the separator and a description.
    for (name, event) in EVENTS {
        if stem == *name || stem.starts_with(&format!("{name}{}", naming.separator)) {
            return Name::Callback(*event);
        }
    }
    // Longest prefix first, as Flyway tries them.
    let mut prefixes = [
        (naming.versioned.as_str(), Kind::Versioned),
        (naming.undo.as_str(), Kind::Undo),
        (naming.repeatable.as_str(), Kind::Repeatable),
    ];
    prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (prefix, kind) in prefixes {
        let Some(rest) = stem.strip_prefix(prefix) else {
            continue;
        };
        let Some((version, description)) = rest.split_once(naming.separator.as_str()) else {
            return Name::Invalid(format!(
                "no separator '{}' between version and description",
                naming.separator
            ));
        };
        let description = description.replace('_', " ");
        return match kind {
            Kind::Repeatable if !version.is_empty() => Name::Invalid(format!(
                "a repeatable migration has nothing between '{prefix}' and '{}'",
                naming.separator
            )),
            Kind::Repeatable => Name::Migration {
                kind,
                version: None,
                description,
            },
            _ if version.is_empty() => Name::Invalid("the version is empty".into()),
            _ => match Version::parse(version) {
                Ok(v) => Name::Migration {
                    kind,
                    version: Some(v),
                    description,
                },
                Err(e) => Name::Invalid(e.to_string()),
            },
        };
    }
    Name::Invalid(format!(
        "the name starts with none of '{}', '{}', '{}'",
        naming.versioned, naming.undo, naming.repeatable
    ))
}

/// Scans the locations (recursively, in name order) for migrations and callbacks.
pub fn scan(locations: &[PathBuf], naming: &Naming) -> Result<Found, MigrateError> {
    let mut found = Found::default();
    for location in locations {
        let mut files = Vec::new();
        walk(location, location, &mut files)?;
        files.sort();
        for (relative, path) in files {
            let file = relative.rsplit('/').next().unwrap_or(&relative).to_string();
            match parse_name(&file, naming) {
                Name::NotMigration => {}
                Name::Invalid(reason) => found.skipped.push((relative, reason)),
                Name::Callback(event) => {
                    let text = read_text(&path, &relative)?;
                    found.callbacks.push(Callback {
                        event,
                        script: relative,
                        text,
                    });
                }
                Name::Migration {
                    kind,
                    version,
                    description,
                } => {
                    let bytes = std::fs::read(&path).map_err(|source| MigrateError::Read {
                        path: path.clone(),
                        source,
                    })?;
                    let text = decode(&bytes, &relative)?.to_string();
                    let meta = read_script_conf(&path, &relative)?;
                    let script = Script {
                        kind,
                        version,
                        description,
                        checksum: checksum::of_text(&text),
                        equivalent_checksum: None,
                        script: relative,
                        path,
                        text,
                        execute_in_transaction: meta.0,
                        placeholder_replacement: meta.1,
                    };
                    match kind {
                        Kind::Versioned => found.versioned.push(script),
                        Kind::Undo => found.undo.push(script),
                        Kind::Repeatable => found.repeatable.push(script),
                    }
                }
            }
        }
    }
    for list in [&mut found.versioned, &mut found.undo] {
        list.sort_by(|a, b| a.version.cmp(&b.version));
        if let Some(pair) = list.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(MigrateError::DuplicateVersion {
                version: pair[0]
                    .version
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                first: pair[0].script.clone(),
                second: pair[1].script.clone(),
            });
        }
    }
    found
        .repeatable
        .sort_by(|a, b| a.description.cmp(&b.description));
    if let Some(pair) = found
        .repeatable
        .windows(2)
        .find(|w| w[0].description == w[1].description)
    {
        return Err(MigrateError::DuplicateRepeatable {
            description: pair[0].description.clone(),
            first: pair[0].script.clone(),
            second: pair[1].script.clone(),
        });
    }
    Ok(found)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), MigrateError> {
    let entries = std::fs::read_dir(dir).map_err(|source| MigrateError::Location {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| MigrateError::Location {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // Directories are walked without following links to them; files (and links to files)
        // are read.
        let file_type = entry.file_type().map_err(|source| MigrateError::Location {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            walk(root, &path, out)?;
        } else if path.is_file() {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, path));
        }
    }
    Ok(())
}

fn decode<'a>(bytes: &'a [u8], script: &str) -> Result<&'a str, MigrateError> {
    checksum::decode(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        MigrateError::Encoding {
            script: script.to_string(),
            offset: e.valid_up_to(),
            line,
        }
    })
}

fn read_text(path: &Path, script: &str) -> Result<String, MigrateError> {
    let bytes = std::fs::read(path).map_err(|source| MigrateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, script).map(str::to_string)
}

/// Reads `<script>.conf` beside a migration: (`executeInTransaction`, `placeholderReplacement`).
fn read_script_conf(
    path: &Path,
    script: &str,
) -> Result<(Option<bool>, Option<bool>), MigrateError> {
    let mut conf = path.as_os_str().to_owned();
    conf.push(".conf");
    let conf = PathBuf::from(conf);
    let text = match std::fs::read_to_string(&conf) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(source) => return Err(MigrateError::Read { path: conf, source }),
    };
    let mut meta = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (key, value) = line
            .split_once(['=', ':'])
            .map(|(k, v)| (k.trim(), v.trim()))
            .unwrap_or((line, ""));
        let bad = || MigrateError::ScriptConf {
            script: script.to_string(),
            message: format!("'{key}={value}' is not understood"),
        };
        let flag = match value.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        match key {
            "executeInTransaction" => meta.0 = Some(flag.ok_or_else(bad)?),
            "placeholderReplacement" => meta.1 = Some(flag.ok_or_else(bad)?),
            "encoding" if value.eq_ignore_ascii_case("UTF-8") => {}
            _ => return Err(bad()),
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(file: &str) -> Name {
        parse_name(file, &Naming::default())
    }

    #[test]
    fn versioned_names_split_at_the_first_separator() {
        let Name::Migration {
            kind,
            version,
            description,
        } = name("V1_1__add__email_column.sql")
        else {
            panic!("not a migration")
        };
        assert_eq!(kind, Kind::Versioned);
        assert_eq!(version.unwrap().as_str(), "1.1");
        assert_eq!(description, "add  email column");
    }

    #[test]
    fn suffix_is_case_insensitive_and_other_files_are_not_migrations() {
        assert!(matches!(name("V2__x.SQL"), Name::Migration { .. }));
        assert_eq!(name("V1__x.sql.conf"), Name::NotMigration);
        assert_eq!(name("README.md"), Name::NotMigration);
    }

    #[test]
    fn repeatables_undo_and_callbacks() {
        assert!(matches!(
            name("R__my_view.sql"),
            Name::Migration { kind: Kind::Repeatable, version: None, ref description } if description == "my view"
        ));
        assert!(matches!(
            name("U1.10__x.sql"),
            Name::Migration {
                kind: Kind::Undo,
                ..
            }
        ));
        assert_eq!(
            name("beforeMigrate.sql"),
            Name::Callback(Event::BeforeMigrate)
        );
        assert_eq!(
            name("afterMigrate__vacuum.sql"),
            Name::Callback(Event::AfterMigrate)
        );
        assert_eq!(
            name("afterMigrateError.sql"),
            Name::Callback(Event::AfterMigrateError)
        );
    }

    #[test]
    fn malformed_names_say_why() {
        for (file, reason) in [
            ("V1_create.sql", "no separator"),
            ("V__x.sql", "version is empty"),
            ("V1a__x.sql", "0..9"),
            ("R1__x.sql", "nothing between"),
            ("create_users.sql", "starts with none"),
        ] {
            match name(file) {
                Name::Invalid(why) => assert!(why.contains(reason), "{file}: {why}"),
                other => panic!("{file}: {other:?}"),
            }
        }
    }

    #[test]
    fn scan_finds_nested_scripts_and_refuses_duplicate_versions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("V1__a.sql"), "select 1;").unwrap();
        std::fs::write(dir.path().join("sub/V1.1__b.sql"), "select 2;").unwrap();
        std::fs::write(dir.path().join("bad.sql"), "select 3;").unwrap();
        let found = scan(&[dir.path().to_path_buf()], &Naming::default()).unwrap();
        let scripts: Vec<_> = found.versioned.iter().map(|s| s.script.as_str()).collect();
        assert_eq!(scripts, ["V1__a.sql", "sub/V1.1__b.sql"]);
        assert_eq!(found.skipped.len(), 1);

        std::fs::write(dir.path().join("V1.0__c.sql"), "select 4;").unwrap();
        let err = scan(&[dir.path().to_path_buf()], &Naming::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("more than one migration with version"),
            "{err}"
        );
    }

    #[test]
    fn script_conf_sets_execute_in_transaction() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("V1__a.sql"), "vacuum;").unwrap();
        std::fs::write(
            dir.path().join("V1__a.sql.conf"),
            "executeInTransaction=false\n",
        )
        .unwrap();
        let found = scan(&[dir.path().to_path_buf()], &Naming::default()).unwrap();
        assert_eq!(found.versioned[0].execute_in_transaction, Some(false));
    }
}

/// Property tests of Flyway file names: any name and any naming is classified without a panic,
/// and a well-formed name gives back its version and description.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "V",
        "U",
        "R",
        "__",
        "_",
        ".",
        "1",
        "01",
        ".sql",
        ".SQL",
        ".ſql",
        "ß",
        "ŉ",
        "ʼN",
        "é",
        "beforeMigrate",
        "afterMigrate",
        "conf",
    ];

    fn naming() -> impl Strategy<Value = Naming> {
        let part = || rampart_fuzz::soup(TOKENS, 3);
        (
            part(),
            part(),
            part(),
            part(),
            prop::collection::vec(part(), 1..3),
        )
            .prop_map(
                |(versioned, undo, repeatable, separator, suffixes)| Naming {
                    versioned,
                    undo,
                    repeatable,
                    separator,
                    suffixes,
                },
            )
    }

    /// Found by `fuzz_parse_name_never_panics`: the upper-cased name ended with the upper-cased
    /// suffix, but the name itself is shorter than the suffix (a subtraction overflow), or the
    /// cut fell inside a character (`é.sql` against `.ſql`).
    #[test]
    fn fuzz_regression_suffix_that_upper_casing_lengthens() {
        let naming = |suffix: &str| Naming {
            suffixes: vec![suffix.into()],
            ..Naming::default()
        };
        assert_eq!(parse_name("ŉ", &naming("ʼN")), Name::NotMigration);
        assert_eq!(parse_name("é.sql", &naming(".ſql")), Name::NotMigration);
        assert!(matches!(
            parse_name("V1__x.ſQL", &naming(".ſql")),
            Name::Migration { .. }
        ));
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(3000))]

        #[test]
        fn fuzz_parse_name_never_panics(file in rampart_fuzz::soup(TOKENS, 12), naming in prop_oneof![Just(Naming::default()), naming()]) {
            let _ = parse_name(&file, &naming);
        }

        #[test]
        fn fuzz_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(text) = decode(&bytes, "V1__x.sql") {
                prop_assert!(text.len() <= bytes.len());
            }
        }

        #[test]
        fn prop_versioned_name_round_trips(parts in prop::collection::vec("[0-9]{1,4}", 1..4), dots in prop::collection::vec(prop::bool::ANY, 3), description in "[A-Za-z0-9_]{0,12}") {
            let mut version = parts[0].clone();
            for (part, dot) in parts[1..].iter().zip(dots) {
                version.push(if dot { '.' } else { '_' });
                version.push_str(part);
            }
            let file = format!("V{version}__{description}.sql");
            let Name::Migration { kind, version: Some(parsed), description: got } = parse_name(&file, &Naming::default()) else {
                return Err(TestCaseError::fail(format!("{file} is not a versioned migration")));
            };
            prop_assert_eq!(kind, Kind::Versioned);
            prop_assert_eq!(parsed.as_str(), version.replace('_', "."));
            prop_assert_eq!(got, description.replace('_', " "));
        }
    }
}
