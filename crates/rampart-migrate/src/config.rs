//! Flyway configuration, read the way Flyway users already keep it, into one typed [`Config`]
//! for the Flyway-compatible PostgreSQL migration runner (`rampart migrate ...`).
//!
//! Inputs, lowest precedence first (a later source overrides an earlier one setting by setting):
//!
//! 1. config files, in the order given ([`Sources::files`]; [`default_files`] lists the ones
//!    Flyway reads by default): `.toml` files are Flyway TOML (`[flyway]`,
//!    `[environments.<name>]`, `[environments.<name>.flyway]`), any other file is a Java
//!    properties file of `flyway.*` keys (`flyway.conf`);
//! 2. environment variables `FLYWAY_*` ([`Sources::env`], passed in by the caller: nothing here
//!    reads the process environment);
//! 3. command-line settings ([`Sources::cli`], usually from [`parse_cli_args`]).
//!
//! Output: a [`Config`] with Flyway's defaults for everything not set, or a [`ConfigError`]
//! saying which setting, from which source, could not be used. Unknown `flyway.*` keys in files
//! and unknown command-line flags are errors; unknown `FLYWAY_*` variables are ignored (Flyway
//! has many settings this runner does not support, and `FLYWAY_HOME` and the like exist).
//!
//! Deliberately not supported: `FLYWAY_CONFIG_FILES` (the caller decides which files to read),
//! `${VAR}` expansion in values (values are literal), `classpath:`, `s3:` and `gcs:` locations,
//! and Flyway's command-line-only switches (`-X`, `-q`, `-n`, `-outputType`, ...), which the
//! caller must remove before [`parse_cli_args`]. `flyway.driver`, `flyway.jarDirs` and
//! `flyway.licenseKey` (and `driver`/`displayName` in an environment) are accepted and ignored:
//! they mean nothing to a native PostgreSQL runner. Wildcards in locations are kept literally.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Default name of the schema history table.
pub const DEFAULT_TABLE: &str = "flyway_schema_history";
/// Default description of the baseline row in the schema history table.
pub const DEFAULT_BASELINE_DESCRIPTION: &str = "<< Flyway Baseline >>";

const DEFAULT_BASELINE_VERSION: &str = "1";
const DEFAULT_PLACEHOLDER_PREFIX: &str = "${";
const DEFAULT_PLACEHOLDER_SUFFIX: &str = "}";
const DEFAULT_ENCODING: &str = "UTF-8";
const DEFAULT_LOCK_RETRY_COUNT: u32 = 50;
const DEFAULT_IGNORE_MIGRATION_PATTERN: &str = "*:future";
const DEFAULT_SQL_MIGRATION_PREFIX: &str = "V";
const DEFAULT_UNDO_SQL_MIGRATION_PREFIX: &str = "U";
const DEFAULT_REPEATABLE_SQL_MIGRATION_PREFIX: &str = "R";
const DEFAULT_SQL_MIGRATION_SEPARATOR: &str = "__";
const DEFAULT_SQL_MIGRATION_SUFFIX: &str = ".sql";
/// The TOML environment used when none is selected.
const DEFAULT_ENVIRONMENT: &str = "default";
const DEFAULT_PG_HOST: &str = "localhost";
const DEFAULT_PG_PORT: u16 = 5432;

/// Prefix of keys in `.conf` files.
const CONF_PREFIX: &str = "flyway.";
/// Prefix of environment variables.
const ENV_PREFIX: &str = "FLYWAY_";
/// Prefix (after [`ENV_PREFIX`]) of placeholder environment variables.
const ENV_PLACEHOLDER_PREFIX: &str = "PLACEHOLDERS_";
/// Environment variables selecting the TOML environment (Flyway documents the lower-case one).
const ENV_ENVIRONMENT: [&str; 2] = ["FLYWAY_ENVIRONMENT", "flyway_environment"];
/// Key prefix of placeholders (`placeholders.<name>`).
const PLACEHOLDER_KEY_PREFIX: &str = "placeholders.";
/// TOML table / key names.
const TOML_FLYWAY: &str = "flyway";
const TOML_ENVIRONMENTS: &str = "environments";
const TOML_PLACEHOLDERS: &str = "placeholders";
/// Key selecting the TOML environment.
const ENVIRONMENT_KEY: &str = "environment";
/// Command-line key listing config files.
const CONFIG_FILES_KEY: &str = "configFiles";
/// Flyway keys accepted everywhere and ignored: meaningless to a native PostgreSQL runner.
const IGNORED_KEYS: [&str; 3] = ["driver", "jarDirs", "licenseKey"];
/// Keys accepted and ignored inside `[environments.<name>]`.
const IGNORED_ENVIRONMENT_KEYS: [&str; 2] = ["driver", "displayName"];
/// Origin named in errors about command-line settings.
const CLI_ORIGIN: &str = "the command line";
/// Shown instead of a password.
const MASK: &str = "***";
/// Default config file names.
const CONF_FILE: &str = "flyway.conf";
const TOML_FILE: &str = "flyway.toml";
const USER_TOML_FILE: &str = "flyway.user.toml";
/// Location prefixes.
const FILESYSTEM_SCHEME: &str = "filesystem";

/// Flyway settings for the migration runner, with Flyway's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// JDBC URL, e.g. `jdbc:postgresql://host:5432/db` (see [`parse_jdbc_url`]).
    pub url: Option<String>,
    /// Database user (falls back to the URL's `user` when `None`).
    pub user: Option<String>,
    /// Database password (falls back to the URL's `password` when `None`).
    pub password: Option<String>,
    /// Schemas managed by Flyway; the first is the default schema unless `default_schema` is set.
    pub schemas: Vec<String>,
    /// Schema holding the history table and used for unqualified names.
    pub default_schema: Option<String>,
    /// Name of the schema history table.
    pub table: String,
    /// Directories to scan for migrations, absolute (relative ones resolved against
    /// [`Sources::working_dir`]); empty when not configured (the caller decides).
    pub locations: Vec<PathBuf>,
    /// Baseline a non-empty schema without history on `migrate`.
    pub baseline_on_migrate: bool,
    /// Version to tag an existing schema with on `baseline`.
    pub baseline_version: String,
    /// Description of the baseline row.
    pub baseline_description: String,
    /// Apply versioned migrations older than the current version.
    pub out_of_order: bool,
    /// Validate before migrating.
    pub validate_on_migrate: bool,
    /// Refuse `clean`.
    pub clean_disabled: bool,
    /// Placeholder values by name (names lower-cased: Flyway treats them case-insensitively).
    pub placeholders: BTreeMap<String, String>,
    /// Start of a placeholder in SQL.
    pub placeholder_prefix: String,
    /// End of a placeholder in SQL.
    pub placeholder_suffix: String,
    /// Replace placeholders in SQL at all.
    pub placeholder_replacement: bool,
    /// Migrate up to this: `None` (latest), `latest`, `current`, `next` or a version.
    pub target: Option<String>,
    /// Apply all pending migrations in one transaction.
    pub group: bool,
    /// Allow transactional and non-transactional statements in one migration.
    pub mixed: bool,
    /// Create the managed schemas when they do not exist.
    pub create_schemas: bool,
    /// Encoding of SQL migrations.
    pub encoding: String,
    /// Recorded as `installed_by` in the history table (`None`: the database user).
    pub installed_by: Option<String>,
    /// How often to retry taking the history table lock.
    pub lock_retry_count: u32,
    /// `type:state` patterns of migrations to ignore when validating.
    pub ignore_migration_patterns: Vec<String>,
    /// How often to retry connecting.
    pub connect_retries: u32,
    /// File name prefix of versioned migrations.
    pub sql_migration_prefix: String,
    /// File name prefix of undo migrations.
    pub undo_sql_migration_prefix: String,
    /// File name prefix of repeatable migrations.
    pub repeatable_sql_migration_prefix: String,
    /// Separator between version and description in file names.
    pub sql_migration_separator: String,
    /// File name suffixes of SQL migrations.
    pub sql_migration_suffixes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            user: None,
            password: None,
            schemas: Vec::new(),
            default_schema: None,
            table: DEFAULT_TABLE.to_owned(),
            locations: Vec::new(),
            baseline_on_migrate: false,
            baseline_version: DEFAULT_BASELINE_VERSION.to_owned(),
            baseline_description: DEFAULT_BASELINE_DESCRIPTION.to_owned(),
            out_of_order: false,
            validate_on_migrate: true,
            clean_disabled: true,
            placeholders: BTreeMap::new(),
            placeholder_prefix: DEFAULT_PLACEHOLDER_PREFIX.to_owned(),
            placeholder_suffix: DEFAULT_PLACEHOLDER_SUFFIX.to_owned(),
            placeholder_replacement: true,
            target: None,
            group: false,
            mixed: false,
            create_schemas: true,
            encoding: DEFAULT_ENCODING.to_owned(),
            installed_by: None,
            lock_retry_count: DEFAULT_LOCK_RETRY_COUNT,
            ignore_migration_patterns: vec![DEFAULT_IGNORE_MIGRATION_PATTERN.to_owned()],
            connect_retries: 0,
            sql_migration_prefix: DEFAULT_SQL_MIGRATION_PREFIX.to_owned(),
            undo_sql_migration_prefix: DEFAULT_UNDO_SQL_MIGRATION_PREFIX.to_owned(),
            repeatable_sql_migration_prefix: DEFAULT_REPEATABLE_SQL_MIGRATION_PREFIX.to_owned(),
            sql_migration_separator: DEFAULT_SQL_MIGRATION_SEPARATOR.to_owned(),
            sql_migration_suffixes: vec![DEFAULT_SQL_MIGRATION_SUFFIX.to_owned()],
        }
    }
}

/// Where configuration comes from, lowest precedence first.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Config files in the order read (later wins): `.conf` = Java properties, `.toml` = Flyway
    /// TOML.
    pub files: Vec<PathBuf>,
    /// The process environment (only FLYWAY_* keys are looked at).
    pub env: Vec<(String, String)>,
    /// Command-line settings, already split into (key, value), key WITHOUT "flyway." and without
    /// dashes, e.g. ("url", "jdbc:..."), ("placeholders.name", "x"). Later wins.
    pub cli: Vec<(String, String)>,
    /// The TOML environment to read connection settings from (`[environments.<name>]`), default
    /// "default". Wins over an `environment` setting on the command line, `FLYWAY_ENVIRONMENT`
    /// and `environment` in a file, in that order.
    pub environment: Option<String>,
    /// Base for relative `filesystem:` locations.
    pub working_dir: PathBuf,
}

/// Command-line arguments split by [`parse_cli_args`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliArgs {
    /// Settings as (Flyway key, value), e.g. `("baselineOnMigrate", "true")`,
    /// `("placeholders.name", "x")`; for [`Sources::cli`].
    pub settings: Vec<(String, String)>,
    /// Files from `-configFiles=a.conf,b.toml`, as given (relative to the caller's directory).
    pub config_files: Vec<PathBuf>,
    /// From `-environment=name`.
    pub environment: Option<String>,
    /// Arguments that are not flags (the command name and its operands), in order.
    pub positional: Vec<String>,
}

/// A parsed PostgreSQL connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// Host name or address, without IPv6 brackets; `localhost` when absent.
    pub host: String,
    /// Port; 5432 when absent.
    pub port: u16,
    /// Database name; `None` when absent (PostgreSQL then uses the user name).
    pub database: Option<String>,
    /// From userinfo or `?user=` (the query wins).
    pub user: Option<String>,
    /// From userinfo or `?password=` (the query wins).
    pub password: Option<String>,
    /// From `?currentSchema=`.
    pub current_schema: Option<String>,
    /// The other query parameters, percent-decoded, in order.
    pub params: Vec<(String, String)>,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A config file is not valid properties or TOML.
    #[error("cannot parse config file {}{}: {message}", .path.display(), at_line(*.line))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value of the wrong kind.
    #[error("cannot read setting {key} from {origin}: expected {expected}, got {value:?}")]
    BadValue {
        /// The key as written (`flyway.outOfOrder`, `FLYWAY_OUT_OF_ORDER`, ...).
        key: String,
        /// The value as written (`***` for passwords).
        value: String,
        /// What would have been accepted.
        expected: String,
        /// Where the setting came from (file and line, variable, command line).
        origin: String,
    },
    /// A `flyway.*` key this runner does not know.
    #[error("cannot read setting {key} from {origin}: not a flyway setting this runner supports")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it came from.
        origin: String,
    },
    /// A valid Flyway value this runner cannot honour (e.g. a `classpath:` location).
    #[error("cannot use setting {key} = {value:?} from {origin}: {reason}")]
    Unsupported {
        /// The key as written.
        key: String,
        /// The offending value.
        value: String,
        /// Where it came from.
        origin: String,
        /// Why, and what to use instead.
        reason: String,
    },
    /// An environment was selected explicitly but no TOML file defines it.
    #[error(
        "cannot select environment {name:?}: no config file has an [environments.{name}] table"
    )]
    UnknownEnvironment {
        /// The selected environment.
        name: String,
    },
    /// A URL of another database or scheme.
    #[error(
        "cannot use database url {url}: only jdbc:postgresql://, postgresql:// and postgres:// urls are supported"
    )]
    UnsupportedUrl {
        /// The URL, password masked.
        url: String,
    },
    /// A PostgreSQL URL that does not parse.
    #[error("cannot parse database url {url}: {reason}")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A command-line flag without its value.
    #[error("cannot parse command-line flag {flag}: it needs a value")]
    MissingValue {
        /// The flag as written (without value).
        flag: String,
    },
    /// A command-line flag that is not a Flyway setting this runner knows.
    #[error("cannot parse command-line flag {flag}: not a flyway setting this runner supports")]
    UnknownFlag {
        /// The flag as written (without value).
        flag: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Setting names

/// The settings of [`Config`], by Flyway name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    Url,
    User,
    Password,
    Schemas,
    DefaultSchema,
    Table,
    Locations,
    BaselineOnMigrate,
    BaselineVersion,
    BaselineDescription,
    OutOfOrder,
    ValidateOnMigrate,
    CleanDisabled,
    PlaceholderPrefix,
    PlaceholderSuffix,
    PlaceholderReplacement,
    Target,
    Group,
    Mixed,
    CreateSchemas,
    Encoding,
    InstalledBy,
    LockRetryCount,
    IgnoreMigrationPatterns,
    ConnectRetries,
    SqlMigrationPrefix,
    UndoSqlMigrationPrefix,
    RepeatableSqlMigrationPrefix,
    SqlMigrationSeparator,
    SqlMigrationSuffixes,
}

const SETTINGS: [Setting; 30] = [
    Setting::Url,
    Setting::User,
    Setting::Password,
    Setting::Schemas,
    Setting::DefaultSchema,
    Setting::Table,
    Setting::Locations,
    Setting::BaselineOnMigrate,
    Setting::BaselineVersion,
    Setting::BaselineDescription,
    Setting::OutOfOrder,
    Setting::ValidateOnMigrate,
    Setting::CleanDisabled,
    Setting::PlaceholderPrefix,
    Setting::PlaceholderSuffix,
    Setting::PlaceholderReplacement,
    Setting::Target,
    Setting::Group,
    Setting::Mixed,
    Setting::CreateSchemas,
    Setting::Encoding,
    Setting::InstalledBy,
    Setting::LockRetryCount,
    Setting::IgnoreMigrationPatterns,
    Setting::ConnectRetries,
    Setting::SqlMigrationPrefix,
    Setting::UndoSqlMigrationPrefix,
    Setting::RepeatableSqlMigrationPrefix,
    Setting::SqlMigrationSeparator,
    Setting::SqlMigrationSuffixes,
];

/// Settings that may appear directly in `[environments.<name>]`.
const ENVIRONMENT_SETTINGS: [Setting; 5] = [
    Setting::Url,
    Setting::User,
    Setting::Password,
    Setting::Schemas,
    Setting::ConnectRetries,
];

impl Setting {
    /// Flyway's (camelCase) name.
    fn name(self) -> &'static str {
        match self {
            Setting::Url => "url",
            Setting::User => "user",
            Setting::Password => "password",
            Setting::Schemas => "schemas",
            Setting::DefaultSchema => "defaultSchema",
            Setting::Table => "table",
            Setting::Locations => "locations",
            Setting::BaselineOnMigrate => "baselineOnMigrate",
            Setting::BaselineVersion => "baselineVersion",
            Setting::BaselineDescription => "baselineDescription",
            Setting::OutOfOrder => "outOfOrder",
            Setting::ValidateOnMigrate => "validateOnMigrate",
            Setting::CleanDisabled => "cleanDisabled",
            Setting::PlaceholderPrefix => "placeholderPrefix",
            Setting::PlaceholderSuffix => "placeholderSuffix",
            Setting::PlaceholderReplacement => "placeholderReplacement",
            Setting::Target => "target",
            Setting::Group => "group",
            Setting::Mixed => "mixed",
            Setting::CreateSchemas => "createSchemas",
            Setting::Encoding => "encoding",
            Setting::InstalledBy => "installedBy",
            Setting::LockRetryCount => "lockRetryCount",
            Setting::IgnoreMigrationPatterns => "ignoreMigrationPatterns",
            Setting::ConnectRetries => "connectRetries",
            Setting::SqlMigrationPrefix => "sqlMigrationPrefix",
            Setting::UndoSqlMigrationPrefix => "undoSqlMigrationPrefix",
            Setting::RepeatableSqlMigrationPrefix => "repeatableSqlMigrationPrefix",
            Setting::SqlMigrationSeparator => "sqlMigrationSeparator",
            Setting::SqlMigrationSuffixes => "sqlMigrationSuffixes",
        }
    }
}

/// What a key (without `flyway.`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Setting(Setting),
    /// A placeholder, name lower-cased.
    Placeholder(String),
    /// Selects the TOML environment.
    Environment,
    /// A Flyway key accepted and ignored (canonical spelling).
    Ignored(&'static str),
}

impl Key {
    /// The canonical Flyway spelling.
    fn canonical(&self) -> String {
        match self {
            Key::Setting(s) => s.name().to_owned(),
            Key::Placeholder(name) => format!("{PLACEHOLDER_KEY_PREFIX}{name}"),
            Key::Environment => ENVIRONMENT_KEY.to_owned(),
            Key::Ignored(name) => (*name).to_owned(),
        }
    }
}

/// Looks up a Flyway key (without `flyway.`), case-insensitively.
fn parse_key(key: &str) -> Option<Key> {
    if let Some(name) = strip_prefix_ignore_case(key, PLACEHOLDER_KEY_PREFIX) {
        return (!name.is_empty()).then(|| Key::Placeholder(name.to_lowercase()));
    }
    if key.eq_ignore_ascii_case(ENVIRONMENT_KEY) {
        return Some(Key::Environment);
    }
    if let Some(name) = IGNORED_KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(Key::Ignored(name));
    }
    SETTINGS
        .iter()
        .find(|s| s.name().eq_ignore_ascii_case(key))
        .map(|s| Key::Setting(*s))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `baselineOnMigrate` -> `BASELINE_ON_MIGRATE`.
fn env_var_suffix(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Entries: one setting from one source

/// A value as written: one string, or a TOML array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    One(String),
    Many(Vec<String>),
}

/// One setting from one source.
#[derive(Debug, Clone)]
struct Entry {
    /// The key as written, for messages.
    written: String,
    key: Key,
    value: Value,
    /// Where it came from, for messages.
    origin: String,
}

impl Entry {
    fn is_password(&self) -> bool {
        self.key == Key::Setting(Setting::Password)
    }

    fn shown_value(&self) -> String {
        if self.is_password() {
            return MASK.to_owned();
        }
        match &self.value {
            Value::One(s) => s.clone(),
            Value::Many(items) => format!("[{}]", items.join(", ")),
        }
    }

    fn bad(&self, expected: &str) -> ConfigError {
        ConfigError::BadValue {
            key: self.written.clone(),
            value: self.shown_value(),
            expected: expected.to_owned(),
            origin: self.origin.clone(),
        }
    }

    fn one(&self) -> Result<String, ConfigError> {
        match &self.value {
            Value::One(s) => Ok(s.clone()),
            Value::Many(_) => Err(self.bad("a single value, not an array")),
        }
    }

    fn non_empty(&self, expected: &str) -> Result<String, ConfigError> {
        let s = self.one()?;
        if s.is_empty() {
            return Err(self.bad(expected));
        }
        Ok(s)
    }

    fn flag(&self) -> Result<bool, ConfigError> {
        let s = self.one()?;
        match s.trim() {
            t if t.eq_ignore_ascii_case("true") => Ok(true),
            t if t.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(self.bad("true or false")),
        }
    }

    fn count(&self) -> Result<u32, ConfigError> {
        self.one()?
            .trim()
            .parse()
            .map_err(|_| self.bad("a whole number from 0 to 4294967295"))
    }

    /// A comma-separated string or an array; items trimmed, empty ones dropped.
    fn list(&self) -> Vec<String> {
        let items: Vec<&str> = match &self.value {
            Value::One(s) => s.split(',').collect(),
            Value::Many(items) => items.iter().map(String::as_str).collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Applies one entry to `cfg`. Selector and ignored keys do nothing here.
fn apply(cfg: &mut Config, entry: &Entry, working_dir: &Path) -> Result<(), ConfigError> {
    let setting = match &entry.key {
        Key::Setting(s) => *s,
        Key::Placeholder(name) => {
            cfg.placeholders.insert(name.clone(), entry.one()?);
            return Ok(());
        }
        Key::Environment | Key::Ignored(_) => return Ok(()),
    };
    match setting {
        Setting::Url => cfg.url = Some(entry.one()?),
        Setting::User => cfg.user = Some(entry.one()?),
        Setting::Password => cfg.password = Some(entry.one()?),
        Setting::Schemas => cfg.schemas = entry.list(),
        Setting::DefaultSchema => cfg.default_schema = Some(entry.non_empty("a schema name")?),
        Setting::Table => cfg.table = entry.non_empty("a table name")?,
        Setting::Locations => {
            cfg.locations = entry
                .list()
                .iter()
                .map(|item| location(entry, item, working_dir))
                .collect::<Result<_, _>>()?;
        }
        Setting::BaselineOnMigrate => cfg.baseline_on_migrate = entry.flag()?,
        Setting::BaselineVersion => {
            let v = entry.one()?.trim().to_owned();
            if !is_version(&v) {
                return Err(entry.bad("a version such as 1 or 1.2.3"));
            }
            cfg.baseline_version = v;
        }
        Setting::BaselineDescription => cfg.baseline_description = entry.one()?,
        Setting::OutOfOrder => cfg.out_of_order = entry.flag()?,
        Setting::ValidateOnMigrate => cfg.validate_on_migrate = entry.flag()?,
        Setting::CleanDisabled => cfg.clean_disabled = entry.flag()?,
        Setting::PlaceholderPrefix => {
            cfg.placeholder_prefix = entry.non_empty("a non-empty placeholder prefix")?;
        }
        Setting::PlaceholderSuffix => {
            cfg.placeholder_suffix = entry.non_empty("a non-empty placeholder suffix")?;
        }
        Setting::PlaceholderReplacement => cfg.placeholder_replacement = entry.flag()?,
        Setting::Target => {
            // Empty means "not set" (latest), e.g. `FLYWAY_TARGET=`.
            let v = entry.one()?.trim().to_owned();
            let word = ["latest", "current", "next"]
                .iter()
                .any(|w| w.eq_ignore_ascii_case(&v));
            if !v.is_empty() && !word && !is_version(&v) {
                return Err(entry.bad("latest, current, next or a version such as 1.2"));
            }
            cfg.target = (!v.is_empty()).then_some(v);
        }
        Setting::Group => cfg.group = entry.flag()?,
        Setting::Mixed => cfg.mixed = entry.flag()?,
        Setting::CreateSchemas => cfg.create_schemas = entry.flag()?,
        Setting::Encoding => cfg.encoding = entry.non_empty("an encoding name")?,
        Setting::InstalledBy => cfg.installed_by = Some(entry.one()?),
        Setting::LockRetryCount => cfg.lock_retry_count = entry.count()?,
        Setting::IgnoreMigrationPatterns => cfg.ignore_migration_patterns = entry.list(),
        Setting::ConnectRetries => cfg.connect_retries = entry.count()?,
        Setting::SqlMigrationPrefix => {
            cfg.sql_migration_prefix = entry.non_empty("a non-empty prefix")?;
        }
        Setting::UndoSqlMigrationPrefix => {
            cfg.undo_sql_migration_prefix = entry.non_empty("a non-empty prefix")?;
        }
        Setting::RepeatableSqlMigrationPrefix => {
            cfg.repeatable_sql_migration_prefix = entry.non_empty("a non-empty prefix")?;
        }
        Setting::SqlMigrationSeparator => {
            cfg.sql_migration_separator = entry.non_empty("a non-empty separator")?;
        }
        Setting::SqlMigrationSuffixes => {
            let suffixes = entry.list();
            if suffixes.is_empty() {
                return Err(entry.bad("at least one suffix such as .sql"));
            }
            cfg.sql_migration_suffixes = suffixes;
        }
    }
    Ok(())
}

/// A Flyway version: digit groups separated by `.` or `_`.
fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.split(['.', '_'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// One `locations` item: `filesystem:dir` or a bare path; other prefixes are unsupported.
fn location(entry: &Entry, item: &str, working_dir: &Path) -> Result<PathBuf, ConfigError> {
    let unsupported = |reason: &str| ConfigError::Unsupported {
        key: entry.written.clone(),
        value: item.to_owned(),
        origin: entry.origin.clone(),
        reason: reason.to_owned(),
    };
    let path = match item.split_once(':') {
        // A one-letter "scheme" is a Windows drive, not a prefix.
        Some((scheme, rest))
            if scheme.len() > 1 && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            if scheme.eq_ignore_ascii_case(FILESYSTEM_SCHEME) {
                rest
            } else if scheme.eq_ignore_ascii_case("classpath") {
                return Err(unsupported(
                    "classpath: locations need a java classpath; use filesystem:<dir>",
                ));
            } else {
                return Err(unsupported(&format!(
                    "{scheme}: locations are not supported; use filesystem:<dir>"
                )));
            }
        }
        _ => item,
    };
    if path.is_empty() {
        return Err(entry.bad("a directory after filesystem:"));
    }
    Ok(resolve(working_dir, Path::new(path)))
}

/// `path` made absolute against `base`, `.` components dropped (`..` kept: symlinks).
fn resolve(base: &Path, path: &Path) -> PathBuf {
    let mut out = if path.is_absolute() {
        PathBuf::new()
    } else {
        base.to_path_buf()
    };
    for c in path.components() {
        if c != Component::CurDir {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Loading

/// One config file, parsed.
#[derive(Debug, Default)]
struct FileSettings {
    /// `flyway.*` / `[flyway]` settings, in order.
    entries: Vec<Entry>,
    /// `[environments.<name>]` tables, not yet validated (only the selected one is).
    environments: Vec<(String, toml::Table)>,
    path: PathBuf,
}

/// Reads every source in `sources` and combines them: files in order, then `FLYWAY_*`
/// variables, then command-line settings; a TOML file's selected environment overrides its
/// `[flyway]` table. The URL, when set, must be a PostgreSQL URL.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let files = sources
        .files
        .iter()
        .map(|path| read_file(path))
        .collect::<Result<Vec<_>, _>>()?;
    let env_entries = env_entries(&sources.env);
    let cli_entries = cli_entries(&sources.cli)?;

    // The environment: Sources::environment, else the last `environment` setting on the
    // command line, in FLYWAY_ENVIRONMENT, in the files (last file first). Empty means unset.
    let mut chosen = sources.environment.clone().filter(|e| !e.is_empty());
    let file_entries = files.iter().rev().flat_map(|f| f.entries.iter().rev());
    for entry in cli_entries
        .iter()
        .rev()
        .chain(env_entries.iter().rev())
        .chain(file_entries)
    {
        if chosen.is_some() {
            break;
        }
        if entry.key == Key::Environment {
            chosen = Some(entry.one()?).filter(|e| !e.is_empty());
        }
    }
    // `default` need not be defined; any other environment asked for must be.
    let required = chosen.as_deref().is_some_and(|e| e != DEFAULT_ENVIRONMENT);
    let environment = chosen.unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_owned());

    let mut cfg = Config::default();
    let wd = &sources.working_dir;
    let mut found = false;
    for file in &files {
        for entry in &file.entries {
            apply(&mut cfg, entry, wd)?;
        }
        for (name, table) in &file.environments {
            if *name == environment {
                found = true;
                for entry in environment_entries(&file.path, name, table)? {
                    apply(&mut cfg, &entry, wd)?;
                }
            }
        }
    }
    if required && !found {
        return Err(ConfigError::UnknownEnvironment { name: environment });
    }
    for entry in env_entries.iter().chain(&cli_entries) {
        apply(&mut cfg, entry, wd)?;
    }
    if let Some(url) = &cfg.url {
        parse_jdbc_url(url)?;
    }
    Ok(cfg)
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        toml_settings(path, &text)
    } else {
        conf_settings(path, &text)
    }
}

/// `FLYWAY_*` variables that name a setting; others are ignored.
fn env_entries(env: &[(String, String)]) -> Vec<Entry> {
    let mut out = Vec::new();
    for (name, value) in env {
        let key = if ENV_ENVIRONMENT.contains(&name.as_str()) {
            Key::Environment
        } else {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if let Some(placeholder) = rest.strip_prefix(ENV_PLACEHOLDER_PREFIX) {
                if placeholder.is_empty() {
                    continue;
                }
                Key::Placeholder(placeholder.to_lowercase())
            } else if let Some(s) = SETTINGS.iter().find(|s| env_var_suffix(s.name()) == rest) {
                Key::Setting(*s)
            } else {
                continue;
            }
        };
        out.push(Entry {
            written: name.clone(),
            key,
            value: Value::One(value.clone()),
            origin: format!("environment variable {name}"),
        });
    }
    out
}

fn cli_entries(cli: &[(String, String)]) -> Result<Vec<Entry>, ConfigError> {
    cli.iter()
        .map(|(written, value)| {
            let bare = strip_prefix_ignore_case(written, CONF_PREFIX).unwrap_or(written);
            let key = parse_key(bare).ok_or_else(|| ConfigError::UnknownKey {
                key: written.clone(),
                origin: CLI_ORIGIN.to_owned(),
            })?;
            Ok(Entry {
                written: written.clone(),
                key,
                value: Value::One(value.clone()),
                origin: CLI_ORIGIN.to_owned(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// .conf (Java properties)

fn conf_settings(path: &Path, text: &str) -> Result<FileSettings, ConfigError> {
    let mut entries = Vec::new();
    for (key, value, line) in parse_properties(path, text)? {
        let Some(bare) = strip_prefix_ignore_case(&key, CONF_PREFIX) else {
            continue; // not Flyway's
        };
        let origin = format!("{} line {line}", path.display());
        let Some(parsed) = parse_key(bare) else {
            return Err(ConfigError::UnknownKey { key, origin });
        };
        entries.push(Entry {
            written: key,
            key: parsed,
            value: Value::One(value),
            origin,
        });
    }
    Ok(FileSettings {
        entries,
        environments: Vec::new(),
        path: path.to_path_buf(),
    })
}

/// Whitespace as `java.util.Properties` sees it.
fn is_prop_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Parses a Java properties file into (key, value, 1-based line) in file order.
fn parse_properties(path: &Path, text: &str) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = normalized.split('\n').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let first = lines[i].trim_start_matches(is_prop_space);
        i += 1;
        if first.is_empty() || first.starts_with(['#', '!']) {
            continue;
        }
        let mut logical = first.to_owned();
        while ends_with_odd_backslashes(&logical) {
            logical.pop();
            let Some(next) = lines.get(i) else { break };
            logical.push_str(next.trim_start_matches(is_prop_space));
            i += 1;
        }
        let (key, value) = split_property(&logical);
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            line: Some(start),
            message,
        };
        out.push((
            unescape(key).map_err(parse_error)?,
            unescape(value).map_err(parse_error)?,
            start,
        ));
    }
    Ok(out)
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Splits a logical line into raw (still escaped) key and value.
fn split_property(line: &str) -> (&str, &str) {
    let mut key_end = line.len();
    let mut escaped = false;
    for (idx, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '=' || c == ':' || is_prop_space(c) {
            key_end = idx;
            break;
        }
    }
    let key = &line[..key_end];
    let mut rest = &line[key_end..];
    let stopped_at_separator = rest.starts_with(['=', ':']);
    if stopped_at_separator {
        rest = &rest[1..];
    }
    rest = rest.trim_start_matches(is_prop_space);
    if !stopped_at_separator && rest.starts_with(['=', ':']) {
        rest = rest[1..].trim_start_matches(is_prop_space);
    }
    (key, rest)
}

/// Resolves `\t \n \r \f \uXXXX` and `\<any>` escapes.
fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    let mut high_surrogate: Option<u16> = None;
    while let Some(c) = chars.next() {
        if c != '\\' {
            if high_surrogate.is_some() {
                return Err("unpaired surrogate in \\u escape".to_owned());
            }
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else { break };
        if e != 'u' {
            if high_surrogate.is_some() {
                return Err("unpaired surrogate in \\u escape".to_owned());
            }
            out.push(match e {
                't' => '\t',
                'n' => '\n',
                'r' => '\r',
                'f' => '\x0c',
                other => other,
            });
            continue;
        }
        let hex: String = chars.by_ref().take(4).collect();
        let unit = (hex.len() == 4)
            .then(|| u16::from_str_radix(&hex, 16).ok())
            .flatten()
            .ok_or_else(|| format!("malformed \\uxxxx escape \\u{hex}"))?;
        match (high_surrogate.take(), unit) {
            (None, 0xD800..=0xDBFF) => high_surrogate = Some(unit),
            (Some(high), 0xDC00..=0xDFFF) => {
                let decoded = char::decode_utf16([high, unit])
                    .next()
                    .and_then(Result::ok)
                    .ok_or_else(|| "invalid surrogate pair in \\u escape".to_owned())?;
                out.push(decoded);
            }
            (None, _) => {
                let c = char::from_u32(u32::from(unit))
                    .ok_or_else(|| format!("unpaired surrogate \\u{hex}"))?;
                out.push(c);
            }
            (Some(_), _) => return Err("unpaired surrogate in \\u escape".to_owned()),
        }
    }
    if high_surrogate.is_some() {
        return Err("unpaired surrogate in \\u escape".to_owned());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// .toml

fn toml_settings(path: &Path, text: &str) -> Result<FileSettings, ConfigError> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().to_owned(),
        })?;
    let origin = path.display().to_string();
    let mut out = FileSettings {
        path: path.to_path_buf(),
        ..FileSettings::default()
    };
    if let Some(flyway) = doc.get(TOML_FLYWAY) {
        let table = flyway.as_table().ok_or_else(|| ConfigError::BadValue {
            key: TOML_FLYWAY.to_owned(),
            value: flyway.to_string(),
            expected: "a table".to_owned(),
            origin: origin.clone(),
        })?;
        flyway_table_entries(table, TOML_FLYWAY, &origin, true, &mut out.entries)?;
    }
    if let Some(envs) = doc.get(TOML_ENVIRONMENTS) {
        let envs = envs.as_table().ok_or_else(|| ConfigError::BadValue {
            key: TOML_ENVIRONMENTS.to_owned(),
            value: envs.to_string(),
            expected: "a table of environments".to_owned(),
            origin: origin.clone(),
        })?;
        for (name, env) in envs {
            let table = env.as_table().ok_or_else(|| ConfigError::BadValue {
                key: format!("{TOML_ENVIRONMENTS}.{name}"),
                value: env.to_string(),
                expected: "a table".to_owned(),
                origin: origin.clone(),
            })?;
            out.environments.push((name.clone(), table.clone()));
        }
    }
    Ok(out)
}

/// Entries of a `[flyway]` (or `[environments.<name>.flyway]`) table.
fn flyway_table_entries(
    table: &toml::Table,
    prefix: &str,
    origin: &str,
    allow_environment: bool,
    out: &mut Vec<Entry>,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let written = format!("{prefix}.{k}");
        if k.eq_ignore_ascii_case(TOML_PLACEHOLDERS) {
            let placeholders = v.as_table().ok_or_else(|| ConfigError::BadValue {
                key: written.clone(),
                value: v.to_string(),
                expected: "a table of placeholder names to values".to_owned(),
                origin: origin.to_owned(),
            })?;
            for (name, value) in placeholders {
                let key = Key::Placeholder(name.to_lowercase());
                let written = format!("{written}.{name}");
                let value = toml_value(&written, &key, value, origin)?;
                out.push(Entry {
                    written,
                    key,
                    value,
                    origin: origin.to_owned(),
                });
            }
            continue;
        }
        let key = match parse_key(k) {
            Some(Key::Environment) if !allow_environment => None,
            other => other,
        };
        let Some(key) = key else {
            return Err(ConfigError::UnknownKey {
                key: written,
                origin: origin.to_owned(),
            });
        };
        let value = toml_value(&written, &key, v, origin)?;
        out.push(Entry {
            written,
            key,
            value,
            origin: origin.to_owned(),
        });
    }
    Ok(())
}

/// Entries of the selected `[environments.<name>]` table, then of its `.flyway` sub-table.
fn environment_entries(
    path: &Path,
    name: &str,
    table: &toml::Table,
) -> Result<Vec<Entry>, ConfigError> {
    let origin = path.display().to_string();
    let prefix = format!("{TOML_ENVIRONMENTS}.{name}");
    let mut out = Vec::new();
    let mut overrides = None;
    for (k, v) in table {
        let written = format!("{prefix}.{k}");
        if k == TOML_FLYWAY {
            overrides = Some((written, v));
            continue;
        }
        if IGNORED_ENVIRONMENT_KEYS
            .iter()
            .any(|i| i.eq_ignore_ascii_case(k))
        {
            continue;
        }
        let setting = ENVIRONMENT_SETTINGS
            .iter()
            .find(|s| s.name().eq_ignore_ascii_case(k))
            .ok_or_else(|| ConfigError::UnknownKey {
                key: written.clone(),
                origin: origin.clone(),
            })?;
        let key = Key::Setting(*setting);
        let value = toml_value(&written, &key, v, &origin)?;
        out.push(Entry {
            written,
            key,
            value,
            origin: origin.clone(),
        });
    }
    if let Some((written, v)) = overrides {
        let t = v.as_table().ok_or_else(|| ConfigError::BadValue {
            key: written.clone(),
            value: v.to_string(),
            expected: "a table".to_owned(),
            origin: origin.clone(),
        })?;
        flyway_table_entries(t, &written, &origin, false, &mut out)?;
    }
    Ok(out)
}

/// A TOML value as a string or list of strings; floats, dates and tables are refused.
fn toml_value(
    written: &str,
    key: &Key,
    value: &toml::Value,
    origin: &str,
) -> Result<Value, ConfigError> {
    let bad = |expected: &str| ConfigError::BadValue {
        key: written.to_owned(),
        value: if *key == Key::Setting(Setting::Password) {
            MASK.to_owned()
        } else {
            value.to_string()
        },
        expected: expected.to_owned(),
        origin: origin.to_owned(),
    };
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    if let Some(s) = scalar(value) {
        return Ok(Value::One(s));
    }
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|item| scalar(item).ok_or_else(|| bad("an array of strings")))
            .collect::<Result<_, _>>()
            .map(Value::Many),
        // 1.10 would silently become "1.1": versions must be quoted.
        toml::Value::Float(_) => Err(bad("a quoted string (write versions as \"1.10\")")),
        _ => Err(bad("a string, integer, boolean or array of strings")),
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

/// Parses Flyway-style command-line flags: `-url=...`, `-user=x`, `-locations=filesystem:dir`,
/// `-placeholders.name=value`; also GNU style `--url=...` and `--url ...` (value in the next
/// argument). `-configFiles=a.conf,b.toml` and `-environment=name` are returned separately.
/// Returns the settings and the remaining non-flag arguments (e.g. the command name); a flag
/// that is not a config key (including Flyway's `-X`-style switches) is an error.
///
/// Keys are matched case-insensitively and returned in Flyway's spelling (placeholder names
/// lower-cased); a `flyway.` prefix is accepted. `--` ends the flags; `-` alone is positional.
/// A single-dash flag needs `=value`. Values are not checked here: [`load`] does that.
pub fn parse_cli_args(args: &[String]) -> Result<CliArgs, ConfigError> {
    let mut out = CliArgs::default();
    let mut it = args.iter();
    let mut flags_done = false;
    while let Some(arg) = it.next() {
        if flags_done || arg == "-" || !arg.starts_with('-') {
            out.positional.push(arg.clone());
            continue;
        }
        if arg == "--" {
            flags_done = true;
            continue;
        }
        let (dashes, body) = match arg.strip_prefix("--") {
            Some(body) => ("--", body),
            None => ("-", &arg[1..]),
        };
        let (name, inline_value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let flag = format!("{dashes}{name}");
        let bare = strip_prefix_ignore_case(name, CONF_PREFIX).unwrap_or(name);
        let is_config_files = bare.eq_ignore_ascii_case(CONFIG_FILES_KEY);
        let key = if is_config_files {
            None
        } else {
            parse_key(bare)
        };
        if !is_config_files && key.is_none() {
            return Err(ConfigError::UnknownFlag { flag });
        }
        let value = match inline_value {
            Some(v) => v.to_owned(),
            None if dashes == "--" => it
                .next()
                .cloned()
                .ok_or_else(|| ConfigError::MissingValue { flag: flag.clone() })?,
            None => return Err(ConfigError::MissingValue { flag }),
        };
        match key {
            None => out.config_files.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(PathBuf::from),
            ),
            Some(Key::Environment) => {
                if value.trim().is_empty() {
                    return Err(ConfigError::MissingValue { flag });
                }
                out.environment = Some(value);
            }
            Some(key) => out.settings.push((key.canonical(), value)),
        }
    }
    Ok(out)
}

/// The config files Flyway reads by default that exist, in reading order: `~/flyway.conf`,
/// `./flyway.conf`, `~/flyway.toml`, `./flyway.toml`, `./flyway.user.toml` (given home and
/// working dir; the caller checks nothing else).
pub fn default_files(home: Option<&Path>, working_dir: &Path) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(home) = home {
        candidates.push(home.join(CONF_FILE));
    }
    candidates.push(working_dir.join(CONF_FILE));
    if let Some(home) = home {
        candidates.push(home.join(TOML_FILE));
    }
    candidates.push(working_dir.join(TOML_FILE));
    candidates.push(working_dir.join(USER_TOML_FILE));
    let mut out: Vec<PathBuf> = Vec::new();
    for c in candidates {
        if c.is_file() && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// URLs

/// Parses `jdbc:postgresql://host[:port][/database][?key=value&...]`, or the same without
/// `jdbc:` as `postgresql://` or `postgres://`. Host defaults to `localhost`, port to 5432; an
/// absent database is `None`. Query parameters are percent-decoded; `user`, `password` and
/// `currentSchema` go to their fields (the caller uses user/password when
/// [`Config::user`]/[`Config::password`] are `None`). IPv6 hosts are written `[::1]`. Anything
/// else (e.g. `jdbc:mysql:`) is [`ConfigError::UnsupportedUrl`], naming the URL with its
/// password masked.
///
/// Also accepted: `user:password@` userinfo, and pgjdbc's `jdbc:postgresql:database` form.
/// In `jdbc:` URLs a `+` in a parameter decodes to a space (as pgjdbc's `URLDecoder` does);
/// in `postgres(ql)://` URLs it stays `+` (as libpq does). Several hosts are refused.
pub fn parse_jdbc_url(url: &str) -> Result<PgUrl, ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let (rest, jdbc) = if let Some(rest) = strip_prefix_ignore_case(url, "jdbc:postgresql:") {
        (rest, true)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "postgresql:")
        .or_else(|| strip_prefix_ignore_case(url, "postgres:"))
    {
        (rest, false)
    } else {
        return Err(ConfigError::UnsupportedUrl {
            url: redact_url(url),
        });
    };
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    let mut parsed = PgUrl {
        host: DEFAULT_PG_HOST.to_owned(),
        port: DEFAULT_PG_PORT,
        database: None,
        user: None,
        password: None,
        current_schema: None,
        params: Vec::new(),
    };
    let path = if let Some(after) = main.strip_prefix("//") {
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i + 1..]),
            None => (after, ""),
        };
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if !user.is_empty() {
                    parsed.user = Some(percent_decode(user, false).map_err(|r| bad(&r))?);
                }
                if let Some(p) = password {
                    parsed.password = Some(percent_decode(p, false).map_err(|r| bad(&r))?);
                }
                hostport
            }
            None => authority,
        };
        parse_host_port(hostport, &mut parsed).map_err(|r| bad(&r))?;
        path
    } else if jdbc {
        // pgjdbc's `jdbc:postgresql:database` and `jdbc:postgresql:/`.
        main.strip_prefix('/').unwrap_or(main)
    } else {
        return Err(bad("expected // after the scheme"));
    };
    if !path.is_empty() {
        parsed.database = Some(percent_decode(path, false).map_err(|r| bad(&r))?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, jdbc).map_err(|r| bad(&r))?;
        let v = percent_decode(v, jdbc).map_err(|r| bad(&r))?;
        if k.eq_ignore_ascii_case("user") {
            parsed.user = Some(v);
        } else if k.eq_ignore_ascii_case("password") {
            parsed.password = Some(v);
        } else if k.eq_ignore_ascii_case("currentSchema") {
            parsed.current_schema = Some(v);
        } else {
            parsed.params.push((k, v));
        }
    }
    Ok(parsed)
}

fn parse_host_port(hostport: &str, parsed: &mut PgUrl) -> Result<(), String> {
    if hostport.contains(',') {
        return Err("several hosts are not supported".to_owned());
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unterminated [ in ipv6 host".to_owned())?;
        let addr = host.split('%').next().unwrap_or(host);
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host} is not an ipv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after ipv6 host"))?,
            ),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("an ipv6 host must be in brackets, e.g. [::1]".to_owned());
            }
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        parsed.host = percent_decode(host, false)?;
    }
    if let Some(p) = port {
        parsed.port = p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?;
    }
    Ok(())
}

/// Decodes `%XX` (and `+` as a space when `plus_is_space`).
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "malformed percent-encoding (expected %XX)".to_owned())?;
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoded bytes are not utf-8".to_owned())
}

/// The URL with every secret replaced by `***`, for messages, journals and logs: the password in
/// its userinfo (`user:***@`), and `key=value` pairs (after `?`, `&`, `;` or a space) whose key
/// ends in `password`, or is `pwd`, `token`, `secret`, `signature` or `sig` (database URLs and
/// presigned artifact URLs alike). Rampart's one redaction policy: the agent's artifact URLs and
/// the controller's store URL use it too.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let tail = &out[start..];
        let query_at = tail.find('?').unwrap_or(tail.len());
        if let Some(at) = tail[..query_at].rfind('@')
            && let Some(colon) = tail[..at].find(':')
        {
            out.replace_range(start + colon + 1..start + at, MASK);
        }
    }
    let mut redacted = String::with_capacity(out.len());
    let mut segment = String::new();
    let flush = |segment: &mut String, redacted: &mut String| {
        match segment.split_once('=') {
            Some((k, _)) if is_secret_key(k) => {
                redacted.push_str(k);
                redacted.push('=');
                redacted.push_str(MASK);
            }
            _ => redacted.push_str(segment),
        }
        segment.clear();
    };
    for c in out.chars() {
        if matches!(c, '?' | '&' | ';' | ' ') {
            flush(&mut segment, &mut redacted);
            redacted.push(c);
        } else {
            segment.push(c);
        }
    }
    flush(&mut segment, &mut redacted);
    redacted
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let k = k.rsplit(['.', '-']).next().unwrap_or(&k);
    k.ends_with("password")
        || matches!(
            k,
            "pwd" | "token" | "access_token" | "secret" | "signature" | "sig"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn s(v: &str) -> String {
        v.to_owned()
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| s(a)).collect()
    }

    fn sources(dir: &Path, files: &[&str]) -> Sources {
        Sources {
            files: files.iter().map(|f| dir.join(f)).collect(),
            working_dir: dir.to_path_buf(),
            ..Sources::default()
        }
    }

    #[test]
    fn defaults_match_flyway() {
        let cfg = load(&Sources::default()).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.table, DEFAULT_TABLE);
        assert_eq!(cfg.baseline_description, DEFAULT_BASELINE_DESCRIPTION);
        assert_eq!(cfg.baseline_version, "1");
        assert!(!cfg.baseline_on_migrate && !cfg.out_of_order && !cfg.group && !cfg.mixed);
        assert!(cfg.validate_on_migrate && cfg.clean_disabled && cfg.create_schemas);
        assert!(cfg.placeholder_replacement);
        assert_eq!(
            (
                cfg.placeholder_prefix.as_str(),
                cfg.placeholder_suffix.as_str()
            ),
            ("${", "}")
        );
        assert_eq!(cfg.encoding, "UTF-8");
        assert_eq!(cfg.lock_retry_count, 50);
        assert_eq!(cfg.connect_retries, 0);
        assert_eq!(cfg.ignore_migration_patterns, vec![s("*:future")]);
        assert_eq!(cfg.sql_migration_prefix, "V");
        assert_eq!(cfg.undo_sql_migration_prefix, "U");
        assert_eq!(cfg.repeatable_sql_migration_prefix, "R");
        assert_eq!(cfg.sql_migration_separator, "__");
        assert_eq!(cfg.sql_migration_suffixes, vec![s(".sql")]);
        assert!(cfg.locations.is_empty() && cfg.schemas.is_empty() && cfg.placeholders.is_empty());
        assert_eq!(
            (cfg.url, cfg.user, cfg.password, cfg.target),
            (None, None, None, None)
        );
    }

    #[test]
    fn conf_file_with_every_common_key() {
        let dir = tempfile::tempdir().unwrap();
        let conf = r#"# Flyway config
! another comment style
   # indented comment

flyway.url=jdbc:postgresql://db.example:5433/app
flyway.user : deploy
flyway.password   s3cr\=t\\x
flyway.schemas=app, audit ,,
flyway.defaultSchema=app
flyway.table=schema_history
flyway.locations=filesystem:sql,\
                 filesystem:/abs/more
flyway.baselineOnMigrate=TRUE
flyway.baselineVersion=0_9
flyway.baselineDescription=Initial \
    import
flyway.outOfOrder=true
flyway.validateOnMigrate=false
flyway.cleanDisabled=False
flyway.placeholders.AppName=Rampart
flyway.placeholders.tab=a\tb\nc\u00e9\uD83D\uDE00
flyway.placeholderPrefix=#[
flyway.placeholderSuffix=]
flyway.placeholderReplacement=false
flyway.target=1.2.3
flyway.group=true
flyway.mixed=true
flyway.createSchemas=false
flyway.encoding=ISO-8859-1
flyway.installedBy=ci
flyway.lockRetryCount=7
flyway.ignoreMigrationPatterns=*:missing,*:future
flyway.connectRetries=3
flyway.sqlMigrationPrefix=M
flyway.undoSqlMigrationPrefix=UU
flyway.repeatableSqlMigrationPrefix=RR
flyway.sqlMigrationSeparator=--
flyway.sqlMigrationSuffixes=.sql,.pgsql
flyway.driver=org.postgresql.Driver
spring.datasource.url=ignored
"#;
        fs::write(dir.path().join("flyway.conf"), conf).unwrap();
        let cfg = load(&sources(dir.path(), &["flyway.conf"])).unwrap();
        let wd = dir.path();
        let expected = Config {
            url: Some(s("jdbc:postgresql://db.example:5433/app")),
            user: Some(s("deploy")),
            password: Some(s("s3cr=t\\x")),
            schemas: vec![s("app"), s("audit")],
            default_schema: Some(s("app")),
            table: s("schema_history"),
            locations: vec![wd.join("sql"), PathBuf::from("/abs/more")],
            baseline_on_migrate: true,
            baseline_version: s("0_9"),
            baseline_description: s("Initial import"),
            out_of_order: true,
            validate_on_migrate: false,
            clean_disabled: false,
            placeholders: BTreeMap::from([
                (s("appname"), s("Rampart")),
                (s("tab"), s("a\tb\nc\u{e9}\u{1F600}")),
            ]),
            placeholder_prefix: s("#["),
            placeholder_suffix: s("]"),
            placeholder_replacement: false,
            target: Some(s("1.2.3")),
            group: true,
            mixed: true,
            create_schemas: false,
            encoding: s("ISO-8859-1"),
            installed_by: Some(s("ci")),
            lock_retry_count: 7,
            ignore_migration_patterns: vec![s("*:missing"), s("*:future")],
            connect_retries: 3,
            sql_migration_prefix: s("M"),
            undo_sql_migration_prefix: s("UU"),
            repeatable_sql_migration_prefix: s("RR"),
            sql_migration_separator: s("--"),
            sql_migration_suffixes: vec![s(".sql"), s(".pgsql")],
        };
        assert_eq!(cfg, expected);
    }

    #[test]
    fn properties_parser_follows_java_rules() {
        let p = Path::new("x.conf");
        let text = "a=1\r\nb = = 2\nc==3\nd\n  e\\ f : g \n h:\\\n\\\n   i\nk\\u0041=v\\";
        let got = parse_properties(p, text).unwrap();
        let kv: Vec<(&str, &str)> = got
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("a", "1"),
                ("b", "= 2"),
                ("c", "=3"),
                ("d", ""),
                ("e f", "g "),
                ("h", "i"),
                ("kA", "v"),
            ]
        );
        assert_eq!(got[5].2, 6, "a continued entry reports its first line");
        let err = parse_properties(p, "\n\nflyway.user=\\u12G4").unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { line: Some(3), .. }),
            "{err}"
        );
        assert!(err.to_string().contains("x.conf at line 3"), "{err}");
    }

    #[test]
    fn toml_with_environments_and_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let toml = r#"
[environments.default]
url = "jdbc:postgresql://localhost/dev"
user = "dev"
schemas = ["public"]

[environments.prod]
url = "jdbc:postgresql://prod.db/app"
user = "app"
password = "pw"
schemas = ["app", "audit"]
connectRetries = 5
displayName = "Production"

[environments.prod.flyway]
cleanDisabled = true
locations = ["filesystem:prod-sql"]

[flyway]
environment = "prod"
locations = ["filesystem:sql", "more"]
baselineOnMigrate = true
lockRetryCount = "9"
cleanDisabled = false
sqlMigrationSuffixes = ".sql, .psql"

[flyway.placeholders]
Owner = "ops"
count = 3

[redgateCompare]
whatever = 1
"#;
        fs::write(dir.path().join("flyway.toml"), toml).unwrap();
        let cfg = load(&sources(dir.path(), &["flyway.toml"])).unwrap();
        assert_eq!(cfg.url.as_deref(), Some("jdbc:postgresql://prod.db/app"));
        assert_eq!(cfg.user.as_deref(), Some("app"));
        assert_eq!(cfg.password.as_deref(), Some("pw"));
        assert_eq!(cfg.schemas, vec![s("app"), s("audit")]);
        assert_eq!(cfg.connect_retries, 5);
        assert!(
            cfg.clean_disabled,
            "environment override wins over [flyway]"
        );
        assert_eq!(cfg.locations, vec![dir.path().join("prod-sql")]);
        assert!(cfg.baseline_on_migrate);
        assert_eq!(cfg.lock_retry_count, 9);
        assert_eq!(cfg.sql_migration_suffixes, vec![s(".sql"), s(".psql")]);
        assert_eq!(
            cfg.placeholders,
            BTreeMap::from([(s("owner"), s("ops")), (s("count"), s("3"))])
        );

        // Sources::environment wins over [flyway] environment.
        let mut src = sources(dir.path(), &["flyway.toml"]);
        src.environment = Some(s("default"));
        let cfg = load(&src).unwrap();
        assert_eq!(cfg.url.as_deref(), Some("jdbc:postgresql://localhost/dev"));
        assert_eq!(
            cfg.locations,
            vec![dir.path().join("sql"), dir.path().join("more")]
        );
        assert!(!cfg.clean_disabled);

        // FLYWAY_ENVIRONMENT wins over the file's selection.
        let mut src = sources(dir.path(), &["flyway.toml"]);
        src.env = vec![(s("FLYWAY_ENVIRONMENT"), s("default"))];
        let cfg = load(&src).unwrap();
        assert_eq!(cfg.user.as_deref(), Some("dev"));

        // "default" need not exist; any other selected environment must.
        let none = Sources {
            environment: Some(s("default")),
            ..Sources::default()
        };
        assert_eq!(load(&none).unwrap(), Config::default());
        src.environment = Some(s("staging"));
        let err = load(&src).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnvironment { ref name } if name == "staging"));
    }

    #[test]
    fn toml_flyway_table_connection_and_later_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("flyway.conf"),
            "flyway.url=jdbc:postgresql://a/a\nflyway.user=a\nflyway.table=t1\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("flyway.toml"),
            "[flyway]\nurl = \"jdbc:postgresql://b/b\"\nuser = \"b\"\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("flyway.user.toml"),
            "[environments.default]\nuser = \"me\"\npassword = \"mine\"\n",
        )
        .unwrap();
        let files = ["flyway.conf", "flyway.toml", "flyway.user.toml"];
        let cfg = load(&sources(dir.path(), &files)).unwrap();
        assert_eq!(cfg.url.as_deref(), Some("jdbc:postgresql://b/b"));
        assert_eq!(cfg.user.as_deref(), Some("me"));
        assert_eq!(cfg.password.as_deref(), Some("mine"));
        assert_eq!(cfg.table, "t1");
    }

    #[test]
    fn toml_refuses_floats_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flyway.toml");
        fs::write(&path, "[flyway]\nbaselineVersion = 1.10\n").unwrap();
        let err = load(&sources(dir.path(), &["flyway.toml"])).unwrap_err();
        assert!(
            matches!(err, ConfigError::BadValue { ref key, .. } if key == "flyway.baselineVersion")
        );

        fs::write(&path, "[flyway]\ncherryPick = \"1\"\n").unwrap();
        let err = load(&sources(dir.path(), &["flyway.toml"])).unwrap_err();
        let ConfigError::UnknownKey { key, origin } = &err else {
            panic!("{err}")
        };
        assert_eq!(key, "flyway.cherryPick");
        assert_eq!(origin, &path.display().to_string());

        fs::write(&path, "[environments.default]\ninitSql = \"set x\"\n").unwrap();
        let err = load(&sources(dir.path(), &["flyway.toml"])).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "environments.default.initSql")
        );

        fs::write(&path, "[flyway\n").unwrap();
        let err = load(&sources(dir.path(), &["flyway.toml"])).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { line: Some(1), .. }),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_files_and_cli_overrides_env() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("flyway.conf"),
            "flyway.url=jdbc:postgresql://file/db\nflyway.user=file\nflyway.schemas=f\n\
             flyway.placeholders.who=file\nflyway.baselineOnMigrate=false\nflyway.table=ft\n",
        )
        .unwrap();
        let mut src = sources(dir.path(), &["flyway.conf"]);
        src.env = vec![
            (s("FLYWAY_URL"), s("jdbc:postgresql://env/db")),
            (s("FLYWAY_USER"), s("env")),
            (s("FLYWAY_SCHEMAS"), s("e1,e2")),
            (s("FLYWAY_BASELINE_ON_MIGRATE"), s("true")),
            (s("FLYWAY_PLACEHOLDERS_WHO"), s("env")),
            (s("FLYWAY_PLACEHOLDERS_MY_VAR"), s("x")),
            (s("FLYWAY_LOCK_RETRY_COUNT"), s("3")),
            (s("FLYWAY_HOME"), s("/opt/flyway")),
            (s("FLYWAY_LICENSE_KEY"), s("nope")),
            (s("PATH"), s("/bin")),
        ];
        let cfg = load(&src).unwrap();
        assert_eq!(cfg.url.as_deref(), Some("jdbc:postgresql://env/db"));
        assert_eq!(cfg.user.as_deref(), Some("env"));
        assert_eq!(cfg.schemas, vec![s("e1"), s("e2")]);
        assert!(cfg.baseline_on_migrate);
        assert_eq!(cfg.lock_retry_count, 3);
        assert_eq!(cfg.table, "ft");
        assert_eq!(cfg.placeholders.get("who").map(String::as_str), Some("env"));
        assert_eq!(
            cfg.placeholders.get("my_var").map(String::as_str),
            Some("x")
        );

        src.cli = vec![
            (s("url"), s("jdbc:postgresql://cli/db")),
            (s("placeholders.WHO"), s("cli")),
            (s("baselineonmigrate"), s("false")),
            (s("url"), s("jdbc:postgresql://cli2/db")),
        ];
        let cfg = load(&src).unwrap();
        assert_eq!(cfg.url.as_deref(), Some("jdbc:postgresql://cli2/db"));
        assert_eq!(cfg.user.as_deref(), Some("env"));
        assert!(!cfg.baseline_on_migrate);
        assert_eq!(cfg.placeholders.get("who").map(String::as_str), Some("cli"));

        src.cli = vec![(s("bogus"), s("1"))];
        let err = load(&src).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { ref origin, .. } if origin == CLI_ORIGIN));
    }

    #[test]
    fn placeholders_are_case_insensitive() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("flyway.conf"),
            "flyway.placeholders.Schema_Name=one\nFLYWAY.PLACEHOLDERS.SCHEMA_NAME=two\n",
        )
        .unwrap();
        let mut src = sources(dir.path(), &["flyway.conf"]);
        assert_eq!(
            load(&src).unwrap().placeholders,
            BTreeMap::from([(s("schema_name"), s("two"))])
        );
        src.env = vec![(s("FLYWAY_PLACEHOLDERS_SCHEMA_NAME"), s("three"))];
        assert_eq!(
            load(&src).unwrap().placeholders,
            BTreeMap::from([(s("schema_name"), s("three"))])
        );
        src.cli = vec![(s("Placeholders.schema_NAME"), s("four"))];
        assert_eq!(
            load(&src).unwrap().placeholders,
            BTreeMap::from([(s("schema_name"), s("four"))])
        );
    }

    #[test]
    fn unknown_conf_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flyway.conf");
        fs::write(&path, "flyway.url=jdbc:postgresql://h/d\nflyway.tabel=x\n").unwrap();
        let err = load(&sources(dir.path(), &["flyway.conf"])).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "flyway.tabel"));
        assert!(msg.contains("flyway.tabel"), "{msg}");
        assert!(msg.contains(&format!("{} line 2", path.display())), "{msg}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("flyway.conf"), "flyway.outOfOrder=yes\n").unwrap();
        let err = load(&sources(dir.path(), &["flyway.conf"])).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            ConfigError::BadValue { ref key, ref value, .. } if key == "flyway.outOfOrder" && value == "yes"
        ));
        assert!(
            msg.contains("flyway.outOfOrder") && msg.contains("\"yes\""),
            "{msg}"
        );
        assert!(msg.contains("true or false"), "{msg}");

        let mut src = Sources {
            env: vec![(s("FLYWAY_CONNECT_RETRIES"), s("-1"))],
            ..Sources::default()
        };
        let err = load(&src).unwrap_err();
        assert!(
            matches!(err, ConfigError::BadValue { ref key, .. } if key == "FLYWAY_CONNECT_RETRIES")
        );

        src.env = vec![(s("FLYWAY_TARGET"), s("lates"))];
        assert!(matches!(load(&src), Err(ConfigError::BadValue { .. })));
        for ok in ["latest", "current", "NEXT", "2.0_1"] {
            src.env = vec![(s("FLYWAY_TARGET"), s(ok))];
            assert_eq!(load(&src).unwrap().target.as_deref(), Some(ok));
        }
        src.env = vec![(s("FLYWAY_TARGET"), s(" "))];
        assert_eq!(load(&src).unwrap().target, None);
    }

    #[test]
    fn cli_flag_forms() {
        let got = parse_cli_args(&args(&[
            "-url=jdbc:postgresql://h/d",
            "--user",
            "bob",
            "--password=p=w",
            "migrate",
            "-placeholders.Name=v",
            "-baselineOnMigrate=true",
            "-configFiles=a.conf, b.toml",
            "--configFiles",
            "c.conf",
            "-environment=prod",
            "--",
            "-url=not-a-flag",
        ]))
        .unwrap();
        assert_eq!(
            got,
            CliArgs {
                settings: vec![
                    (s("url"), s("jdbc:postgresql://h/d")),
                    (s("user"), s("bob")),
                    (s("password"), s("p=w")),
                    (s("placeholders.name"), s("v")),
                    (s("baselineOnMigrate"), s("true")),
                ],
                config_files: vec![
                    PathBuf::from("a.conf"),
                    PathBuf::from("b.toml"),
                    PathBuf::from("c.conf")
                ],
                environment: Some(s("prod")),
                positional: vec![s("migrate"), s("-url=not-a-flag")],
            }
        );
        let got = parse_cli_args(&args(&["info", "--url=x", "--URL", "y"])).unwrap();
        assert_eq!(got.settings, vec![(s("url"), s("x")), (s("url"), s("y"))]);
        assert_eq!(got.positional, vec![s("info")]);
    }

    #[test]
    fn cli_flag_errors() {
        let err = parse_cli_args(&args(&["-X", "migrate"])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownFlag { ref flag } if flag == "-X"));
        let err = parse_cli_args(&args(&["--nope=1"])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownFlag { ref flag } if flag == "--nope"));
        let err = parse_cli_args(&args(&["migrate", "--url"])).unwrap_err();
        assert!(matches!(err, ConfigError::MissingValue { ref flag } if flag == "--url"));
        let err = parse_cli_args(&args(&["-url"])).unwrap_err();
        assert!(matches!(err, ConfigError::MissingValue { ref flag } if flag == "-url"));
        assert_eq!(
            err.to_string(),
            "cannot parse command-line flag -url: it needs a value"
        );
    }

    #[test]
    fn cli_settings_feed_load() {
        let dir = tempfile::tempdir().unwrap();
        let cli = parse_cli_args(&args(&[
            "-outOfOrder=true",
            "-locations=filesystem:db",
            "info",
        ]))
        .unwrap();
        let src = Sources {
            cli: cli.settings,
            working_dir: dir.path().to_path_buf(),
            ..Sources::default()
        };
        let cfg = load(&src).unwrap();
        assert!(cfg.out_of_order);
        assert_eq!(cfg.locations, vec![dir.path().join("db")]);
    }

    #[test]
    fn locations_resolve_and_classpath_is_refused() {
        let wd = PathBuf::from("/srv/app");
        let mut src = Sources {
            working_dir: wd.clone(),
            ..Sources::default()
        };
        src.cli = vec![(
            s("locations"),
            s("filesystem:./sql, filesystem:/abs,bare/dir,FILESYSTEM:../up"),
        )];
        assert_eq!(
            load(&src).unwrap().locations,
            vec![
                wd.join("sql"),
                PathBuf::from("/abs"),
                wd.join("bare/dir"),
                wd.join("../up"),
            ]
        );
        src.cli = vec![(s("locations"), s("filesystem:sql,classpath:db/migration"))];
        let err = load(&src).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ConfigError::Unsupported { ref value, .. } if value == "classpath:db/migration")
        );
        assert!(msg.contains("classpath:"), "{msg}");
        src.cli = vec![(s("locations"), s("s3:bucket/x"))];
        assert!(matches!(load(&src), Err(ConfigError::Unsupported { .. })));
    }

    #[test]
    fn default_files_lists_existing_in_flyway_order() {
        let home = tempfile::tempdir().unwrap();
        let wd = tempfile::tempdir().unwrap();
        assert!(default_files(Some(home.path()), wd.path()).is_empty());
        for f in ["flyway.conf", "flyway.toml"] {
            fs::write(home.path().join(f), "").unwrap();
        }
        for f in ["flyway.conf", "flyway.toml", "flyway.user.toml"] {
            fs::write(wd.path().join(f), "").unwrap();
        }
        assert_eq!(
            default_files(Some(home.path()), wd.path()),
            vec![
                home.path().join("flyway.conf"),
                wd.path().join("flyway.conf"),
                home.path().join("flyway.toml"),
                wd.path().join("flyway.toml"),
                wd.path().join("flyway.user.toml"),
            ]
        );
        assert_eq!(default_files(None, wd.path()).len(), 3);
        assert_eq!(default_files(Some(wd.path()), wd.path()).len(), 3);
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&sources(dir.path(), &["nope.conf"])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().starts_with("cannot read config file "),
            "{err}"
        );
    }

    #[test]
    fn jdbc_url_variants() {
        let u = parse_jdbc_url("jdbc:postgresql://db.example/app").unwrap();
        assert_eq!(
            u,
            PgUrl {
                host: s("db.example"),
                port: 5432,
                database: Some(s("app")),
                user: None,
                password: None,
                current_schema: None,
                params: vec![],
            }
        );
        let u = parse_jdbc_url("jdbc:postgresql://db:6543").unwrap();
        assert_eq!((u.port, u.database), (6543, None));
        let u = parse_jdbc_url("jdbc:postgresql://db:6543/").unwrap();
        assert_eq!(u.database, None);
        let u = parse_jdbc_url(
            "jdbc:postgresql://h/d?user=al%40ice&password=p%26w+x&currentSchema=app&sslmode=require&ApplicationName=a+b",
        )
        .unwrap();
        assert_eq!(u.user.as_deref(), Some("al@ice"));
        assert_eq!(u.password.as_deref(), Some("p&w x"));
        assert_eq!(u.current_schema.as_deref(), Some("app"));
        assert_eq!(
            u.params,
            vec![
                (s("sslmode"), s("require")),
                (s("ApplicationName"), s("a b"))
            ]
        );
        let u = parse_jdbc_url("jdbc:postgresql://[::1]:5433/d").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5433));
        let u = parse_jdbc_url("jdbc:postgresql://[fe80::1]/d").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 5432));
        let u = parse_jdbc_url("postgres://bob:se%2Fcret@h:1/db?sslmode=a+b").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("se/cret"));
        assert_eq!(
            (u.host.as_str(), u.port, u.database.as_deref()),
            ("h", 1, Some("db"))
        );
        assert_eq!(u.params, vec![(s("sslmode"), s("a+b"))]);
        let u = parse_jdbc_url("postgresql:///db").unwrap();
        assert_eq!(
            (u.host.as_str(), u.database.as_deref()),
            ("localhost", Some("db"))
        );
        let u = parse_jdbc_url("jdbc:postgresql:mydb").unwrap();
        assert_eq!(
            (u.host.as_str(), u.database.as_deref()),
            ("localhost", Some("mydb"))
        );

        for bad in [
            "jdbc:postgresql://h:99999/d",
            "jdbc:postgresql://h:x/d",
            "jdbc:postgresql://a,b/d",
            "jdbc:postgresql://::1/d",
            "jdbc:postgresql://[::1/d",
            "jdbc:postgresql://h/d?x=%zz",
        ] {
            assert!(
                matches!(parse_jdbc_url(bad), Err(ConfigError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_databases_are_refused_with_password_masked() {
        let err =
            parse_jdbc_url("jdbc:mysql://root:hunter2@h:3306/d?password=hunter3").unwrap_err();
        let ConfigError::UnsupportedUrl { url } = &err else {
            panic!("{err}")
        };
        assert_eq!(url, "jdbc:mysql://root:***@h:3306/d?password=***");
        assert!(!err.to_string().contains("hunter"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let src = Sources {
            env: vec![(
                s("FLYWAY_URL"),
                s("jdbc:sqlserver://h;user=sa;password=hunter2"),
            )],
            working_dir: dir.path().to_path_buf(),
            ..Sources::default()
        };
        let err = load(&src).unwrap_err();
        assert!(matches!(err, ConfigError::UnsupportedUrl { .. }));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn redaction_masks_userinfo_and_query_passwords() {
        assert_eq!(
            redact_url("postgresql://bob:s3cr@t@db/app"),
            "postgresql://bob:***@db/app"
        );
        assert_eq!(
            redact_url("jdbc:postgresql://db/app?user=bob&password=x&sslpassword=y&ssl=true"),
            "jdbc:postgresql://db/app?user=bob&password=***&sslpassword=***&ssl=true"
        );
        assert_eq!(
            redact_url("jdbc:postgresql://db/app?user=a@b"),
            "jdbc:postgresql://db/app?user=a@b"
        );
        assert_eq!(redact_url("postgres://bob@db/app"), "postgres://bob@db/app");
        // Presigned artifact URLs: the signature and token are secrets, the rest is not.
        assert_eq!(
            redact_url("https://cdn/app.tar.gz?X-Amz-Signature=abc&X-Amz-Date=1&token=t"),
            "https://cdn/app.tar.gz?X-Amz-Signature=***&X-Amz-Date=1&token=***"
        );
        assert_eq!(
            redact_url("http://deploy:s3cret@127.0.0.1:8/a"),
            "http://deploy:***@127.0.0.1:8/a"
        );
        assert_eq!(
            redact_url("jdbc:postgresql://db/app"),
            "jdbc:postgresql://db/app"
        );
        let err = parse_jdbc_url("jdbc:postgresql://bob:pw@h:bad/d").unwrap_err();
        assert!(!err.to_string().contains(":pw@"), "{err}");
    }
}

/// Property tests of every configuration reader: `flyway.conf`, `flyway.toml`, `FLYWAY_*`,
/// flags and URLs never panic, and a properties file written the way Java writes it reads back
/// to the same keys and values.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const VALUES: &[&str] = &[
        "1",
        "0",
        "true",
        "false",
        "1.2",
        "latest",
        "jdbc:postgresql://",
        "postgres://",
        "u:p@",
        "h",
        ":5432",
        "/db",
        "?",
        "&",
        "=",
        "%",
        "%zz",
        "%41",
        "+",
        "[::1]",
        "[",
        "]",
        ",",
        "filesystem:",
        "classpath:",
        "..",
        "/",
        "a",
        "${",
        "}",
        " ",
        "\\",
        "\\u00e9",
        "\\ud800",
        "é",
    ];
    const TOML_VALUES: &[&str] = &[
        "\"x\"",
        "1",
        "true",
        "1.5",
        "[\"a\", 2]",
        "[1.5]",
        "{ a = 1 }",
        "1979-05-27",
    ];

    fn key() -> impl Strategy<Value = String> {
        let names: Vec<&'static str> = SETTINGS.iter().map(|s| s.name()).collect();
        prop_oneof![
            8 => prop::sample::select(names).prop_map(String::from),
            1 => Just("placeholders.p".to_string()),
            1 => Just("environment".to_string()),
            1 => rampart_fuzz::soup(&["url", "placeholders.", "x", ".", "é"], 4),
        ]
    }

    /// A `flyway.conf`: settings lines, comments, continuations, and noise.
    fn conf_text() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            4 => (key(), rampart_fuzz::soup(VALUES, 6)).prop_map(|(k, v)| format!("flyway.{k}={v}")),
            1 => rampart_fuzz::soup(&["#", "!", "\\", "=", ":", " ", "\t", "flyway.", "url", "\\u"], 8),
        ];
        prop::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
    }

    /// A `flyway.toml`: a `[flyway]` table and an environment, or noise.
    fn toml_text() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            3 => rampart_fuzz::soup(VALUES, 4).prop_map(|v| format!("{:?}", v)),
            2 => prop::sample::select(TOML_VALUES).prop_map(String::from),
            1 => rampart_fuzz::soup(&["\"", "[", "]", "{", "}", "=", "1", ".", "\n"], 6),
        ];
        let entry = (key(), value).prop_map(|(k, v)| format!("{k:?} = {v}\n"));
        let table = prop::sample::select(
            &[
                "[flyway]\n",
                "[environments.default]\n",
                "[environments.e.flyway]\n",
                "[flyway.placeholders]\n",
                "[environments]\n",
            ][..],
        );
        prop::collection::vec((table, prop::collection::vec(entry, 0..4)), 0..4).prop_map(
            |tables| {
                tables
                    .into_iter()
                    .map(|(t, e)| format!("{t}{}", e.concat()))
                    .collect()
            },
        )
    }

    /// Escapes like `java.util.Properties.store` (non-ASCII as `\uXXXX` when `ascii`).
    fn escape(s: &str, is_key: bool, ascii: bool) -> String {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\x0c' => out.push_str("\\f"),
                ' ' if is_key || i == 0 => out.push_str("\\ "),
                '=' | ':' | '#' | '!' => {
                    out.push('\\');
                    out.push(c);
                }
                c if (ascii && !c.is_ascii()) || c == '\u{feff}' => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(1500))]

        #[test]
        fn fuzz_properties_never_panic(text in prop_oneof![any::<String>(), conf_text()]) {
            let _ = parse_properties(Path::new("flyway.conf"), &text);
        }

        #[test]
        fn prop_properties_round_trip(pairs in prop::collection::vec(("\\PC{1,8}", "\\PC{0,8}", any::<bool>()), 0..6)) {
            let text: String = pairs.iter().map(|(k, v, ascii)| format!("{}={}\n", escape(k, true, *ascii), escape(v, false, *ascii))).collect();
            let read = parse_properties(Path::new("flyway.conf"), &text).unwrap();
            let read: Vec<(String, String)> = read.into_iter().map(|(k, v, _)| (k, v)).collect();
            let want: Vec<(String, String)> = pairs.into_iter().map(|(k, v, _)| (k, v)).collect();
            prop_assert_eq!(read, want, "{}", text);
        }

        #[test]
        fn fuzz_load_conf_toml_env_and_flags_never_panic(conf in conf_text(), toml in prop_oneof![toml_text(), any::<String>()], env in prop::collection::vec((rampart_fuzz::soup(&["FLYWAY_", "URL", "PLACEHOLDERS_", "LOCATIONS", "TARGET", "flyway_environment"], 3), rampart_fuzz::soup(VALUES, 4)), 0..3), flags in prop::collection::vec(rampart_fuzz::soup(&["-", "--", "url", "=", "placeholders.", "configFiles", "environment", "x", "flyway."], 5), 0..4)) {
            let dir = tempfile::tempdir().unwrap();
            let (conf_path, toml_path) = (dir.path().join("flyway.conf"), dir.path().join("flyway.toml"));
            std::fs::write(&conf_path, &conf).unwrap();
            std::fs::write(&toml_path, &toml).unwrap();
            let cli = parse_cli_args(&flags).map(|a| a.settings).unwrap_or_default();
            let sources = Sources { files: vec![conf_path, toml_path], env, cli, environment: None, working_dir: dir.path().to_path_buf() };
            if let Ok(cfg) = load(&sources)
                && let Some(url) = &cfg.url
            {
                prop_assert!(parse_jdbc_url(url).is_ok());
            }
        }

        #[test]
        fn fuzz_jdbc_url_never_panics_and_redaction_hides_the_password(url in rampart_fuzz::text(VALUES, 12), password in "[a-zA-Z0-9]{12}") {
            let _ = parse_jdbc_url(&url);
            let _ = redact_url(&url);
            for secret in [format!("postgresql://u:{password}@h/db{url}"), format!("jdbc:postgresql://h/db?password={password}&{url}")] {
                prop_assert!(!redact_url(&secret).contains(&password), "{}", redact_url(&secret));
                if let Err(e) = parse_jdbc_url(&secret) {
                    prop_assert!(!e.to_string().contains(&password), "{e}");
                }
            }
        }
    }
}
