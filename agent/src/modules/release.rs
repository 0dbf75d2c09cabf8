//! `release`: stages, activates, restores and prunes a component's releases on this host.
//!
//! Layout under the state directory (ARCHITECTURE.md, "On-host layout"):
//! `apps/<component>/releases/<version>/` (with `version.txt` and `.rampart-release.json`: artifact
//! digest, staged time, txid), `apps/<component>/current -> releases/<version>`,
//! `apps/<component>/state.json` (`current`, `previous`, `known_good`) and
//! `apps/<component>/failed/<version>-<txid>/`. The public `path` (e.g. `/opt/app/backend`) is a
//! symlink to `<state_dir>/apps/<component>/current`.
//!
//! Inputs: `component`, `version`, `artifact` (a local path, relative to the playbook; an
//! `http://` or `https://` URL; or `sha256:<hex>` of a cached artifact), `sha256` (required with a
//! path or a URL), `path`, `state`, `keep` (for `pruned`, default 3), and for `staged`:
//! `max_bytes` / `max_entries` (extraction limits, default [`Limits::default`]), `timeout`
//! (seconds for a download, default [`DEFAULT_DOWNLOAD_TIMEOUT_SECS`]) and `ca_file` (PEM
//! certificates trusted for https instead of the webpki roots, for a private CA). Outputs:
//! `changed`, `component`, `version`, `release_path`, plus `sha256`, `entries`, `bytes` and `url`
//! (staged), `previous` (active, restored), `removed` / `removed_failed` / `removed_staging`
//! (pruned), `failed_path` (failed) and `intact`, `modified`, `missing`, `added` (verified);
//! `failed` and `msg` on error. Credentials in a URL are masked in results and messages.
//!
//! - `staged`: the artifact is verified, decompressed and extracted in one pass
//!   ([`rampart_host::extract`]) into `apps/<component>/.staging-<version>-<txid>`, which is renamed to
//!   `releases/<version>` only when complete. A local or downloaded artifact is copied into the
//!   cache while it is read and published there only when its digest matched; an artifact
//!   already cached is not read or downloaded again (rustls with ring; connect timeout 10 s, at
//!   most 5 redirects, non-2xx refused). Re-staging the same digest is `ok`; a different digest
//!   is an error naming both. Reversed by removing `releases/<version>` (or `state: pruned`); on
//!   error nothing is left.
//! - `active`: `current` is switched by renaming a temp symlink over it and fsyncing the directory;
//!   the public path symlink is created when missing (a non-symlink there is refused). The version
//!   goes first in `known_good` (the simple rule: an activated release is good until a later
//!   health-check step says otherwise, i.e. `failed` drops it), which keeps the newest
//!   [`KNOWN_GOOD_KEEP`], and the previous one is recorded as `previous`. Reversed by
//!   `state: restored` with the `previous` version from the result.
//! - `restored`: the same switch back to `version` (which must still be staged); it goes first in
//!   `known_good` too (a rollback's target ran before), so after a rescue sets the left release
//!   apart the host still records a known-good release. Reversed by `restored` (or `active`) with
//!   the version it replaced.
//! - `pruned`: removes releases beyond the newest `keep` (by staged time), never the current, the
//!   previous or the newest known-good one other than the current (`known_good` records the
//!   last [`KNOWN_GOOD_KEEP`] switched to and not failed); `failed/` keeps its newest
//!   [`FAILED_KEEP`] entries apart, so
//!   failed attempts never evict a good release; `.staging-*` dirs left by interrupted
//!   transactions go too. Then the artifact cache loses every artifact no remaining release of
//!   any component (in `releases/`, `failed/` or staging) references, except those that arrived
//!   since the transaction began (`removed_artifacts`, `freed_bytes`). Not reversible except by
//!   staging again from the artifact, downloaded or uploaded again.
//! - `failed`: moves `releases/<version>` to `failed/<version>-<txid>` and drops it from
//!   `known_good`, so a failed attempt never counts as a good release (forensics reads it there).
//!   Refused while it is `current` with a previous release (restore that first); on a failed
//!   first deploy (`current` with nothing before it) `current` and the public path are unlinked,
//!   back to no release. `ok` when the release is not in `releases/`.
//! - `verified`: read only. The release must be present and every regular file (content and
//!   mode) and symlink must be what its artifact holds (the cached artifact is re-hashed first);
//!   `version.txt` and the metadata file are ours and not compared. Fails, listing what was
//!   modified, is missing or was added, when anything differs or the artifact is no longer cached.
//!
//! Check mode reports what would change and changes nothing.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use rampart_host::cas::{self as artifacts, Upload};
use rampart_host::durable::{self, write_atomic};
use rampart_host::extract::{self, Limits};
use rampart_migrate::redact_url;
use rampart_playbook::modules::release as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_f64, arg_i64, arg_str, failed};

/// Releases kept by `state: pruned` when `keep` is not given.
pub const DEFAULT_KEEP: i64 = 3;
/// Entries kept in `failed/` by `state: pruned`.
pub const FAILED_KEEP: usize = 3;
/// Releases recorded as known-good per component (newest first): the one running and the good
/// ones before it, so the last good release before a rescue survives two more deploys. Pruning
/// never removes them; `failed` drops a release from the list.
pub const KNOWN_GOOD_KEEP: usize = 3;
/// The release metadata file inside each release.
pub const RELEASE_META: &str = ".rampart-release.json";
/// The file holding the version inside each release.
pub const VERSION_FILE: &str = "version.txt";

/// `release`: stages, activates, restores and prunes a component's releases.
pub static RELEASE: ModuleSpec = ModuleSpec {
    schema: &schema::RELEASE,
    run: run_release,
};

/// `apps/<component>/state.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AppState {
    current: Option<String>,
    previous: Option<String>,
    #[serde(default)]
    known_good: Vec<String>,
}

/// `releases/<version>/.rampart-release.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReleaseMeta {
    component: String,
    version: String,
    artifact_sha256: String,
    staged_at: String,
    txid: String,
}

/// Paths of one component.
#[derive(Debug)]
struct App {
    name: String,
    dir: PathBuf,
}

impl App {
    fn new(state_dir: &Path, component: &str) -> Result<App, String> {
        check_name("component", component)?;
        // Absolute, so the public path symlink does not depend on the agent's working directory.
        let state_dir = std::path::absolute(state_dir)
            .map_err(|e| format!("cannot resolve {}: {e}", state_dir.display()))?;
        Ok(App {
            name: component.to_string(),
            dir: state_dir.join("apps").join(component),
        })
    }
    fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }
    fn release(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }
    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }
    fn failed(&self) -> PathBuf {
        self.dir.join("failed")
    }
    fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The version `current` points at.
    fn current_version(&self) -> Option<String> {
        let target = fs::read_link(self.current()).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    fn load_state(&self) -> Result<AppState, String> {
        match fs::read(self.state_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("cannot parse {}: {e}", self.state_file().display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AppState::default()),
            Err(e) => Err(format!("cannot read {}: {e}", self.state_file().display())),
        }
    }

    fn save_state(&self, state: &AppState) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        write_atomic(&self.state_file(), &bytes, Some(0o644))
            .map_err(|e| format!("cannot write {}: {e}", self.state_file().display()))
    }

    fn meta(&self, version: &str) -> Result<ReleaseMeta, String> {
        let path = self.release(version).join(RELEASE_META);
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("cannot parse {}: {e}", path.display()))
    }
}

/// One release present on the host (for the agent's `ListReleases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// The component.
    pub component: String,
    /// The release's version.
    pub version: String,
    /// The artifact it was extracted from, when its metadata says.
    pub artifact_sha256: Option<String>,
    /// When it was staged (RFC 3339), when its metadata says.
    pub staged_at: Option<String>,
    /// Whether `current` points at it.
    pub current: bool,
    /// Whether it is kept apart under `failed/`.
    pub failed: bool,
}

/// Lists the releases of one component (or every component), newest staged first within each.
pub fn list(state_dir: &Path, component: Option<&str>) -> Result<Vec<ReleaseInfo>, String> {
    let apps = state_dir.join("apps");
    let mut components: Vec<String> = match component {
        Some(c) => {
            check_name("component", c)?;
            vec![c.to_string()]
        }
        None => match fs::read_dir(&apps) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot list {}: {e}", apps.display())),
        },
    };
    components.sort();
    let mut out = Vec::new();
    for name in components {
        let app = App::new(state_dir, &name)?;
        let current = app.current_version();
        let mut found: Vec<ReleaseInfo> = Vec::new();
        for (dir, failed) in [(app.releases(), false), (app.failed(), true)] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let dir_name = e.file_name().to_string_lossy().into_owned();
                let meta: Option<ReleaseMeta> = fs::read(e.path().join(RELEASE_META))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let version = meta
                    .as_ref()
                    .map_or(dir_name.clone(), |m| m.version.clone());
                found.push(ReleaseInfo {
                    component: name.clone(),
                    current: !failed && current.as_deref() == Some(dir_name.as_str()),
                    version,
                    artifact_sha256: meta.as_ref().map(|m| m.artifact_sha256.clone()),
                    staged_at: meta.map(|m| m.staged_at),
                    failed,
                });
            }
        }
        found.sort_by(|a, b| {
            b.staged_at
                .cmp(&a.staged_at)
                .then_with(|| b.version.cmp(&a.version))
        });
        out.extend(found);
    }
    Ok(out)
}

/// Component and version names become directory names: no separators, no leading dot.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+@~".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} `{name}` (letters, digits and ._-+@~ only, not starting with a dot)"
        ))
    }
}

fn run_release(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let component = arg_str(args, "component").unwrap_or_default();
    let state = arg_str(args, "state").unwrap_or_default();
    let result = App::new(ctx.state_dir, component).and_then(|app| match state {
        "staged" => staged(&app, args, ctx),
        "active" => switch(&app, args, ctx, true),
        "restored" => switch(&app, args, ctx, false),
        "pruned" => pruned(&app, args, ctx).and_then(|r| prune_artifacts(r, ctx)),
        "failed" => set_apart(&app, args, ctx),
        "verified" => verified(&app, args, ctx),
        other => Err(format!("unknown state `{other}` for release")),
    });
    match result {
        Ok(r) => r,
        Err(msg) => {
            let mut r = failed(msg);
            r.insert("component".into(), json!(component));
            r.insert("version".into(), json!(arg_str(args, "version")));
            r
        }
    }
}

fn result(app: &App, version: Option<&str>, changed: bool) -> ModuleResult {
    let mut r = Map::new();
    r.insert("changed".into(), json!(changed));
    r.insert("component".into(), json!(app.name));
    r.insert("version".into(), json!(version));
    r.insert(
        "release_path".into(),
        json!(version.map(|v| app.release(v).display().to_string())),
    );
    r
}

fn required_version<'a>(args: &'a Map<String, Value>, state: &str) -> Result<&'a str, String> {
    let v = arg_str(args, "version")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("`version` is required for state={state}"))?;
    check_name("version", v)?;
    Ok(v)
}

/// Where the artifact comes from.
#[derive(Debug)]
enum Source {
    Cached(PathBuf),
    Path(PathBuf),
    Url(String),
}

/// Seconds an http(s) download may take when `timeout` is not given.
pub const DEFAULT_DOWNLOAD_TIMEOUT_SECS: f64 = 300.0;
/// Seconds to connect to an artifact server.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Redirects followed for an artifact URL.
const MAX_REDIRECTS: u32 = 5;

/// Starts an http(s) download and returns its body as a reader. rustls (ring) with the webpki
/// roots, plus the PEM certificates of `ca_file` when given (a private CA).
fn download(url: &str, args: &Map<String, Value>) -> Result<impl Read + use<>, String> {
    let shown = redact_url(url);
    let secs = arg_f64(args, "timeout").unwrap_or(DEFAULT_DOWNLOAD_TIMEOUT_SECS);
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "`timeout` must be a positive number of seconds, not {secs}"
        ));
    }
    let agent = super::net::http_agent(&super::net::ClientOptions {
        timeout: std::time::Duration::from_secs_f64(secs),
        connect_timeout: Some(std::time::Duration::from_secs(CONNECT_TIMEOUT_SECS)),
        ca_file: arg_str(args, "ca_file"),
        ca_arg: "ca_file",
        validate_certs: true,
        max_redirects: MAX_REDIRECTS,
    })?;
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot download {shown}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!(
            "cannot download {shown}: the server answered {status}"
        ));
    }
    Ok(resp.into_body().into_reader())
}

/// `max_bytes` / `max_entries`, over the defaults.
fn limits(args: &Map<String, Value>) -> Result<Limits, String> {
    let mut l = Limits::default();
    for (name, slot) in [
        ("max_bytes", &mut l.max_bytes),
        ("max_entries", &mut l.max_entries),
    ] {
        if let Some(v) = arg_i64(args, name) {
            *slot = u64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("`{name}` must be a positive number, not {v}"))?;
        }
    }
    Ok(l)
}

/// Resolves `artifact` and `sha256` into a source and the expected digest.
fn artifact_source(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<(Source, String), String> {
    let artifact = arg_str(args, "artifact")
        .filter(|a| !a.is_empty())
        .ok_or("`artifact` is required for state=staged")?;
    let given = arg_str(args, "sha256").map(|s| {
        let s = s.trim();
        s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase()
    });
    if let Some(g) = &given {
        artifacts::validate_hex(g).map_err(|e| e.to_string())?;
    }
    let lower = artifact.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let expected = given.ok_or("`sha256` is required when `artifact` is a URL")?;
        if artifacts::has(ctx.state_dir, &expected).is_some() {
            // Verified once already: no download.
            let cached =
                artifacts::artifact_path(ctx.state_dir, &expected).map_err(|e| e.to_string())?;
            return Ok((Source::Cached(cached), expected));
        }
        return Ok((Source::Url(artifact.to_string()), expected));
    }
    if let Some(hex) = artifact.strip_prefix("sha256:") {
        artifacts::validate_hex(hex).map_err(|e| e.to_string())?;
        if let Some(g) = given.as_deref()
            && g != hex
        {
            return Err(format!(
                "artifact sha256:{hex} does not match the sha256 argument {g}"
            ));
        }
        let path = artifacts::artifact_path(ctx.state_dir, hex).map_err(|e| e.to_string())?;
        return Ok((Source::Cached(path), hex.to_string()));
    }
    let expected = given.ok_or("`sha256` is required when `artifact` is a path")?;
    let mut path = PathBuf::from(artifact);
    if path.is_relative()
        && let Some(base) = &ctx.base_dir
    {
        path = base.join(path);
    }
    if artifacts::has(ctx.state_dir, &expected).is_some() {
        // Already verified once; the cache copy cannot have been replaced by another content.
        let cached =
            artifacts::artifact_path(ctx.state_dir, &expected).map_err(|e| e.to_string())?;
        return Ok((Source::Cached(cached), expected));
    }
    Ok((Source::Path(path), expected))
}

/// Reads an artifact (a local file, a download) while copying it into the cache.
struct Tee<'a, R> {
    inner: R,
    upload: &'a mut Upload,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.upload
            .write(&buf[..n])
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(n)
    }
}

fn staged(
    app: &App,
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<ModuleResult, String> {
    let version = required_version(args, "staged")?;
    let (source, expected) = artifact_source(args, ctx)?;
    let release = app.release(version);
    let mut r = result(app, Some(version), false);
    r.insert("sha256".into(), json!(expected));
    if fs::symlink_metadata(&release).is_ok() {
        let meta = app.meta(version)?;
        if meta.artifact_sha256 == expected {
            return Ok(r);
        }
        return Err(format!(
            "release {version} of {} is already staged from a different artifact (staged {}, requested {expected})",
            app.name, meta.artifact_sha256
        ));
    }
    if let Source::Cached(p) | Source::Path(p) = &source
        && !p.is_file()
    {
        return Err(format!("artifact {} not found", p.display()));
    }
    let limits = limits(args)?;
    r.insert("changed".into(), json!(true));
    if ctx.check {
        return Ok(r);
    }
    fs::create_dir_all(&app.dir)
        .map_err(|e| format!("cannot create {}: {e}", app.dir.display()))?;
    let staging = app.dir.join(format!(".staging-{version}-{}", ctx.txid));
    if fs::symlink_metadata(&staging).is_ok() {
        // Left by an interrupted run of this same transaction.
        fs::remove_dir_all(&staging)
            .map_err(|e| format!("cannot remove stale {}: {e}", staging.display()))?;
    }
    let open = |p: &Path| File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()));
    let unpack = |reader: &mut dyn Read| {
        extract::extract(reader, &expected, &staging, limits)
            .map_err(|e| format!("cannot stage release {version} of {}: {e}", app.name))
    };
    // A local file or a download is copied into the cache while it is extracted, and published
    // there only when its digest matched.
    let through_cache = |reader: Box<dyn Read>| -> Result<extract::Extracted, String> {
        let mut upload = Upload::new(ctx.state_dir).map_err(|e| e.to_string())?;
        let out = unpack(&mut Tee {
            inner: reader,
            upload: &mut upload,
        })?;
        if let Err(e) = upload.finish(&expected) {
            let _ = fs::remove_dir_all(&staging);
            return Err(format!("cannot cache artifact: {e}"));
        }
        Ok(out)
    };
    let extracted = match &source {
        Source::Cached(p) => unpack(&mut open(p)?),
        Source::Path(p) => through_cache(Box::new(open(p)?)),
        Source::Url(url) => {
            r.insert("url".into(), json!(redact_url(url)));
            through_cache(Box::new(download(url, args)?))
        }
    }?;
    let publish = || -> Result<(), String> {
        let meta = ReleaseMeta {
            component: app.name.clone(),
            version: version.to_string(),
            artifact_sha256: extracted.sha256.clone(),
            staged_at: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
            txid: ctx.txid.to_string(),
        };
        let vfile = staging.join(VERSION_FILE);
        write_atomic(&vfile, format!("{version}\n").as_bytes(), Some(0o644))
            .map_err(|e| format!("cannot write {}: {e}", vfile.display()))?;
        let mfile = staging.join(RELEASE_META);
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
        write_atomic(&mfile, &bytes, Some(0o644))
            .map_err(|e| format!("cannot write {}: {e}", mfile.display()))?;
        fs::create_dir_all(app.releases())
            .map_err(|e| format!("cannot create {}: {e}", app.releases().display()))?;
        fs::rename(&staging, &release).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                staging.display(),
                release.display()
            )
        })?;
        fsync_dir(&app.releases())?;
        fsync_dir(&app.dir)
    };
    if let Err(e) = publish() {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    r.insert("entries".into(), json!(extracted.entries));
    r.insert("bytes".into(), json!(extracted.bytes));
    Ok(r)
}

fn fsync_dir(dir: &Path) -> Result<(), String> {
    durable::fsync_dir(dir).map_err(|e| format!("cannot fsync {}: {e}", dir.display()))
}

/// Points the symlink `link` at `target` in one step ([`durable::swap_symlink`]).
fn replace_symlink(link: &Path, target: &Path) -> Result<(), String> {
    durable::swap_symlink(link, target)
        .map_err(|e| format!("cannot switch {}: {e}", link.display()))
}

/// What the public path needs.
fn public_path_change(public: &Path, target: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(public) {
        Ok(m) if m.file_type().is_symlink() => {
            Ok(fs::read_link(public).ok().as_deref() != Some(target))
        }
        Ok(_) => Err(format!(
            "refusing to replace {}: it exists and is not a symlink",
            public.display()
        )),
        Err(_) => Ok(true),
    }
}

/// `active` (records known-good) and `restored`: switch `current` and the public path.
fn switch(
    app: &App,
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
    activate: bool,
) -> Result<ModuleResult, String> {
    let state_name = if activate { "active" } else { "restored" };
    let version = required_version(args, state_name)?;
    let release = app.release(version);
    if !release.is_dir() && ctx.check && activate {
        // Check mode staged nothing: predict the switch a real run makes after staging.
        let mut r = result(app, Some(version), true);
        r.insert("previous".into(), json!(app.current_version()));
        r.insert(
            "msg".into(),
            json!(format!(
                "would activate {version} of {} once staged (check mode staged nothing)",
                app.name
            )),
        );
        return Ok(r);
    }
    if !release.is_dir() {
        return Err(format!(
            "release {version} of {} is not staged ({} is missing)",
            app.name,
            release.display()
        ));
    }
    let before = app.current_version();
    let switch_current = before.as_deref() != Some(version);
    let public = arg_str(args, "path")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let current = app.current();
    let switch_public = match &public {
        Some(p) => public_path_change(p, &current)?,
        None => false,
    };
    // A switch cut short after `current` moved (a full disk failing the state write) left the
    // state file behind: the retry finds `current` right and must still write the state.
    let mut state = app.load_state()?;
    let state_stale = state.current.as_deref() != Some(version);
    let mut r = result(
        app,
        Some(version),
        switch_current || switch_public || state_stale,
    );
    r.insert("previous".into(), json!(before));
    if ctx.check {
        return Ok(r);
    }
    if switch_current {
        replace_symlink(&current, &Path::new("releases").join(version))?;
    }
    if switch_current || state_stale {
        if switch_current {
            state.previous = before.clone();
        }
        state.current = Some(version.to_string());
        // A release switched to is what runs now; the one it replaced (when good) stays
        // recorded behind it, so a rollback's target is never the first one pruning takes.
        state.known_good.retain(|v| v != version);
        state.known_good.insert(0, version.to_string());
        state.known_good.truncate(KNOWN_GOOD_KEEP);
        app.save_state(&state)?;
    }
    if let (Some(p), true) = (&public, switch_public) {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        replace_symlink(p, &current)?;
    }
    Ok(r)
}

/// When a release was staged: its metadata, else its directory's mtime.
fn staged_at(app: &App, version: &str) -> DateTime<Utc> {
    app.meta(version)
        .ok()
        .and_then(|m| DateTime::parse_from_rfc3339(&m.staged_at).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            fs::metadata(app.release(version))
                .and_then(|m| m.modified())
                .ok()
                .map(DateTime::<Utc>::from)
        })
        .unwrap_or_default()
}

/// Which releases pruning removes: all but the newest `keep` and the protected ones.
fn prune_plan(by_age: &[String], keep: usize, protected: &[&str]) -> Vec<String> {
    by_age
        .iter()
        .skip(keep)
        .filter(|v| !protected.contains(&v.as_str()))
        .cloned()
        .collect()
}

fn list_dir(dir: &Path) -> Result<Vec<(String, std::time::SystemTime)>, String> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (e.file_name().to_string_lossy().into_owned(), t)
            })
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot list {}: {e}", dir.display())),
    }
}

fn pruned(
    app: &App,
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<ModuleResult, String> {
    let keep = arg_i64(args, "keep").unwrap_or(DEFAULT_KEEP);
    let keep =
        usize::try_from(keep).map_err(|_| format!("`keep` must be 0 or more, not {keep}"))?;
    let state = app.load_state()?;
    let current = app.current_version();
    // The floor under `keep`: the current, the previous, and the newest known-good release
    // other than the current (what a rollback returns to, even when the previous was set apart).
    let mut protected: Vec<&str> = Vec::new();
    protected.extend(current.as_deref());
    protected.extend(state.previous.as_deref());
    protected.extend(
        state
            .known_good
            .iter()
            .map(String::as_str)
            .find(|v| Some(*v) != current.as_deref()),
    );

    let mut releases: Vec<(String, DateTime<Utc>)> = list_dir(&app.releases())?
        .into_iter()
        .map(|(v, _)| {
            let t = staged_at(app, &v);
            (v, t)
        })
        .collect();
    releases.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let by_age: Vec<String> = releases.into_iter().map(|(v, _)| v).collect();
    let removed = prune_plan(&by_age, keep, &protected);

    let mut failed: Vec<(String, std::time::SystemTime)> = list_dir(&app.failed())?;
    failed.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let removed_failed: Vec<String> = failed
        .into_iter()
        .skip(FAILED_KEEP)
        .map(|(n, _)| n)
        .collect();

    // Staging dirs of transactions that were interrupted (this one's are gone by now: staging
    // either renamed its dir into releases/ or removed it).
    let mut staging: Vec<String> = match fs::read_dir(&app.dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging-"))
            .collect(),
        Err(_) => Vec::new(),
    };
    staging.sort();

    let mut r = result(
        app,
        current.as_deref(),
        !removed.is_empty() || !removed_failed.is_empty() || !staging.is_empty(),
    );
    r.insert("removed".into(), json!(removed));
    r.insert("removed_failed".into(), json!(removed_failed));
    r.insert("removed_staging".into(), json!(staging));
    if ctx.check {
        return Ok(r);
    }
    for name in &staging {
        let path = app.dir.join(name);
        fs::remove_dir_all(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    for (dir, names) in [(app.releases(), &removed), (app.failed(), &removed_failed)] {
        for name in names {
            let path = dir.join(name);
            fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        if !names.is_empty() {
            fsync_dir(&dir)?;
        }
    }
    Ok(r)
}

/// After `pruned` removed a component's releases (`r`, its result; in check mode it only lists
/// them): removes the cached artifacts no remaining release references, of any component,
/// under `releases/`, `failed/` or an unfinished staging dir. Artifacts that arrived since this
/// transaction began are spared (an upload for the next deploy may not have its release yet).
/// Adds `removed_artifacts` (digests) and `freed_bytes` to the result.
fn prune_artifacts(mut r: ModuleResult, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, String> {
    // In check mode the releases `pruned` names are still there: leave their digests out.
    let app_dir = ctx
        .state_dir
        .join("apps")
        .join(arg_str(&r, "component").unwrap_or_default());
    let names = |key: &str| -> Vec<String> { super::arg_strings(r.get(key)) };
    let going: Vec<PathBuf> = if ctx.check {
        (names("removed")
            .iter()
            .map(|v| app_dir.join("releases").join(v)))
        .chain(
            names("removed_failed")
                .iter()
                .map(|n| app_dir.join("failed").join(n)),
        )
        .chain(names("removed_staging").iter().map(|n| app_dir.join(n)))
        .collect()
    } else {
        Vec::new()
    };
    let mut referenced = std::collections::BTreeSet::new();
    let apps = ctx.state_dir.join("apps");
    for (component, _) in list_dir(&apps)? {
        let dir = apps.join(component);
        let staging = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let kept = [dir.join("releases"), dir.join("failed")]
            .iter()
            .flat_map(|d| {
                list_dir(d)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(n, _)| d.join(n))
            })
            .chain(staging)
            .filter(|p| !going.contains(p))
            .collect::<Vec<_>>();
        for release in kept {
            let digest = fs::read(release.join(RELEASE_META))
                .ok()
                .and_then(|b| serde_json::from_slice::<ReleaseMeta>(&b).ok())
                .map(|m| m.artifact_sha256);
            referenced.extend(digest);
        }
    }
    let since = crate::journal::begin_time(ctx.state_dir, ctx.txid)
        .unwrap_or_else(std::time::SystemTime::now);
    let removed = artifacts::prune(ctx.state_dir, &referenced, since, ctx.check)
        .map_err(|e| format!("cannot prune the artifact cache: {e}"))?;
    if !removed.is_empty() {
        r.insert("changed".into(), json!(true));
    }
    let freed: u64 = removed.iter().map(|(_, size)| size).sum();
    let digests: Vec<&String> = removed.iter().map(|(d, _)| d).collect();
    r.insert("removed_artifacts".into(), json!(digests));
    r.insert("freed_bytes".into(), json!(freed));
    Ok(r)
}

/// `failed`: moves `releases/<version>` to `failed/<version>-<txid>`, so a failed attempt never
/// counts among the good releases. When it is still `current` with nothing before it (a failed
/// first deploy), `current` and the public path are unlinked: the host had no release.
fn set_apart(
    app: &App,
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<ModuleResult, String> {
    let version = required_version(args, "failed")?;
    let release = app.release(version);
    let mut r = result(app, Some(version), false);
    if fs::symlink_metadata(&release).is_err() {
        return Ok(r);
    }
    let mut state = app.load_state()?;
    let is_current = app.current_version().as_deref() == Some(version);
    let public = arg_str(args, "path")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if is_current && state.previous.is_some() {
        return Err(format!(
            "release {version} of {} is current: restore the previous release ({}) first",
            app.name,
            state.previous.as_deref().unwrap_or_default()
        ));
    }
    let dest = app.failed().join(format!("{version}-{}", ctx.txid));
    r.insert("changed".into(), json!(true));
    r.insert("failed_path".into(), json!(dest.display().to_string()));
    if ctx.check {
        return Ok(r);
    }
    if is_current {
        // A first deploy that failed: back to no release at all.
        if let Some(p) = &public
            && fs::read_link(p).ok().as_deref() == Some(app.current().as_path())
        {
            fs::remove_file(p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
            fsync_dir(p.parent().unwrap_or(Path::new("/")))?;
        }
        fs::remove_file(app.current())
            .map_err(|e| format!("cannot remove {}: {e}", app.current().display()))?;
        fsync_dir(&app.dir)?;
        state.current = None;
        r.insert("unlinked_current".into(), json!(true));
    }
    fs::create_dir_all(app.failed())
        .map_err(|e| format!("cannot create {}: {e}", app.failed().display()))?;
    if fs::symlink_metadata(&dest).is_ok() {
        // Left by an interrupted run of this same step.
        fs::remove_dir_all(&dest).map_err(|e| format!("cannot remove {}: {e}", dest.display()))?;
    }
    fs::rename(&release, &dest).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            release.display(),
            dest.display()
        )
    })?;
    fsync_dir(&app.releases())?;
    fsync_dir(&app.failed())?;
    state.known_good.retain(|v| v != version);
    app.save_state(&state)?;
    Ok(r)
}

/// Paths listed in a `verified` result, at most.
const VERIFY_LIST_MAX: usize = 100;

/// `verified`: the release is present and every file, symlink and mode is what its artifact
/// holds. Read only; fails when anything differs or cannot be checked.
fn verified(
    app: &App,
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<ModuleResult, String> {
    use super::release_tree::{disk_entries, tar_entries};
    let version = required_version(args, "verified")?;
    let release = app.release(version);
    if !release.is_dir() {
        return Err(format!(
            "release {version} of {} is not staged ({} is missing): stage it again from its artifact",
            app.name,
            release.display()
        ));
    }
    let meta = app.meta(version)?;
    let digest = meta.artifact_sha256;
    let artifact = artifacts::artifact_path(ctx.state_dir, &digest).map_err(|e| e.to_string())?;
    if artifacts::has(ctx.state_dir, &digest).is_none() {
        return Err(format!(
            "cannot verify release {version} of {}: its artifact sha256:{digest} is no longer cached; upload it again (PutArtifact) or stage from the artifact",
            app.name
        ));
    }
    let (mut want, actual) = tar_entries(&artifact).map_err(|e| {
        format!(
            "cannot read the cached artifact {}: {e}; upload it again",
            artifact.display()
        )
    })?;
    if actual != digest {
        return Err(format!(
            "the cached artifact {} is corrupt (sha256 {actual}, expected {digest}): upload it again",
            artifact.display()
        ));
    }
    let mut have =
        disk_entries(&release).map_err(|e| format!("cannot read {}: {e}", release.display()))?;
    for ours in [VERSION_FILE, RELEASE_META] {
        want.remove(ours);
        have.remove(ours);
    }
    let mut modified = Vec::new();
    let mut missing = Vec::new();
    let mut added = Vec::new();
    for (path, w) in &want {
        match have.get(path) {
            None => missing.push(path.clone()),
            Some(h) if h != w => modified.push(path.clone()),
            Some(_) => {}
        }
    }
    added.extend(have.keys().filter(|p| !want.contains_key(*p)).cloned());
    let intact = modified.is_empty() && missing.is_empty() && added.is_empty();
    let mut r = result(app, Some(version), false);
    r.insert("intact".into(), json!(intact));
    r.insert("artifact_sha256".into(), json!(digest));
    r.insert("files".into(), json!(want.len()));
    let capped = |v: &[String]| json!(v.iter().take(VERIFY_LIST_MAX).collect::<Vec<_>>());
    r.insert("modified".into(), capped(&modified));
    r.insert("missing".into(), capped(&missing));
    r.insert("added".into(), capped(&added));
    if intact {
        return Ok(r);
    }
    let describe = |what: &str, v: &[String]| {
        (!v.is_empty()).then(|| {
            let more = v.len().saturating_sub(5);
            let head = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if more > 0 {
                format!("{what} ({}): {head} and {more} more", v.len())
            } else {
                format!("{what} ({}): {head}", v.len())
            }
        })
    };
    let detail: Vec<String> = [
        describe("modified", &modified),
        describe("missing", &missing),
        describe("added", &added),
    ]
    .into_iter()
    .flatten()
    .collect();
    r.insert("failed".into(), json!(true));
    r.insert(
        "msg".into(),
        json!(format!(
            "release {version} of {} differs from its artifact sha256:{digest}: {}; stage it again under a new version, or remove releases/{version} and stage it again",
            app.name,
            detail.join("; ")
        )),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use minijinja::value::Value as MjValue;

    use super::*;
    use rampart_host::digest::sha256_hex;
    use rampart_host::extract::test_archive::{E, targz};
    use rampart_playbook::template::{Layer, Scope, Templar};

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Host {
            Host {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn state(&self) -> PathBuf {
            self.dir.path().join("state")
        }
        fn app(&self) -> PathBuf {
            self.state().join("apps/backend")
        }
        fn public(&self) -> PathBuf {
            self.dir.path().join("opt/app/backend")
        }
        /// Writes an artifact for `version` and returns its path and digest.
        fn artifact(&self, version: &str) -> (String, String) {
            let content = format!("release {version}\n");
            let data = targz(&[E::Dir("bin"), E::File("bin/app", content.as_bytes(), 0o755)]);
            let path = self.dir.path().join(format!("backend-{version}.tar.gz"));
            fs::write(&path, &data).unwrap();
            (path.display().to_string(), sha256_hex(&data))
        }
        fn run(&self, args: Value, check: bool) -> ModuleResult {
            let templar = Arc::new(Templar::new());
            let scope = Scope::value(
                templar.clone(),
                vec![Layer::Fixed(Arc::new(BTreeMap::<String, MjValue>::new()))],
            );
            let state = self.state();
            let ctx = ModuleCtx {
                become_user: None,
                check,
                templar: &templar,
                scope: &scope,
                base_dir: None,
                state_dir: &state,
                txid: "tx1",
                progress: None,
            };
            let Value::Object(mut args) = args else {
                panic!("arguments must be a mapping");
            };
            args.entry("component").or_insert(json!("backend"));
            (RELEASE.run)(&args, &ctx)
        }
        fn ok(&self, args: Value) -> ModuleResult {
            let r = self.run(args, false);
            assert!(r.get("failed").is_none(), "unexpected failure: {r:?}");
            r
        }
        fn fail(&self, args: Value) -> String {
            let r = self.run(args, false);
            assert_eq!(
                r.get("failed"),
                Some(&json!(true)),
                "expected failure: {r:?}"
            );
            r["msg"].as_str().unwrap().to_string()
        }
        fn stage(&self, version: &str) -> ModuleResult {
            let (path, sha) = self.artifact(version);
            self.ok(json!({"state": "staged", "version": version, "artifact": path, "sha256": sha}))
        }
        fn current(&self) -> PathBuf {
            fs::read_link(self.app().join("current")).unwrap()
        }
        fn tree(&self) -> Vec<String> {
            let mut out = Vec::new();
            walk(&self.state(), &self.state(), &mut out);
            out.sort();
            out
        }
    }

    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }

    fn changed(r: &ModuleResult) -> bool {
        r["changed"].as_bool().unwrap()
    }

    #[test]
    fn stage_activate_restore_round_trip() {
        let h = Host::new();
        let public = h.public().display().to_string();
        let r = h.stage("v1");
        assert!(changed(&r));
        assert_eq!(
            r["release_path"],
            json!(h.app().join("releases/v1").display().to_string())
        );
        assert_eq!(
            fs::read_to_string(h.app().join("releases/v1/version.txt")).unwrap(),
            "v1\n"
        );
        // The local artifact was cached on the way.
        assert!(artifacts::has(&h.state(), r["sha256"].as_str().unwrap()).is_some());

        let r = h.ok(json!({"state": "active", "version": "v1", "path": public}));
        assert!(changed(&r));
        assert_eq!(r["previous"], Value::Null);
        assert_eq!(h.current(), Path::new("releases/v1"));
        assert_eq!(fs::read_link(h.public()).unwrap(), h.app().join("current"));
        assert_eq!(
            fs::read_to_string(h.public().join("bin/app")).unwrap(),
            "release v1\n"
        );

        h.stage("v2");
        let r = h.ok(json!({"state": "active", "version": "v2", "path": public}));
        assert_eq!(r["previous"], json!("v1"));
        assert_eq!(h.current(), Path::new("releases/v2"));
        assert_eq!(
            fs::read_to_string(h.public().join("bin/app")).unwrap(),
            "release v2\n"
        );

        let r = h.ok(json!({"state": "restored", "version": "v1", "path": public}));
        assert!(changed(&r));
        assert_eq!(r["previous"], json!("v2"));
        assert_eq!(h.current(), Path::new("releases/v1"));
        assert_eq!(
            fs::read_to_string(h.public().join("bin/app")).unwrap(),
            "release v1\n"
        );
        let r = h.ok(json!({"state": "restored", "version": "v1", "path": public}));
        assert!(!changed(&r));

        let msg = h.fail(json!({"state": "restored", "version": "v9"}));
        assert!(msg.contains("v9") && msg.contains("not staged"), "{msg}");
    }

    #[test]
    fn second_run_changes_nothing() {
        let h = Host::new();
        let public = h.public().display().to_string();
        assert!(changed(&h.stage("v1")));
        assert!(!changed(&h.stage("v1")));
        assert!(changed(&h.ok(
            json!({"state": "active", "version": "v1", "path": public})
        )));
        let before = h.tree();
        assert!(!changed(&h.ok(
            json!({"state": "active", "version": "v1", "path": public})
        )));
        // Staging from the cache by digest is also a no-op.
        let (_, sha) = h.artifact("v1");
        let r =
            h.ok(json!({"state": "staged", "version": "v1", "artifact": format!("sha256:{sha}")}));
        assert!(!changed(&r));
        assert_eq!(h.tree(), before);
    }

    #[test]
    fn restaging_with_another_digest_is_an_error_naming_both() {
        let h = Host::new();
        let first = h.stage("v1");
        let (path, sha) = h.artifact("other");
        let msg =
            h.fail(json!({"state": "staged", "version": "v1", "artifact": path, "sha256": sha}));
        assert!(
            msg.contains(&sha) && msg.contains(first["sha256"].as_str().unwrap()),
            "{msg}"
        );
    }

    #[test]
    fn check_mode_changes_nothing() {
        let h = Host::new();
        let (path, sha) = h.artifact("v1");
        let r = h.run(
            json!({"state": "staged", "version": "v1", "artifact": path, "sha256": sha}),
            true,
        );
        assert!(changed(&r));
        assert!(h.tree().is_empty(), "{:?}", h.tree());
        // Activating what check mode did not stage predicts the switch; a restore does not.
        let r = h.run(json!({"state": "active", "version": "v1"}), true);
        assert!(changed(&r), "{r:?}");
        assert!(h.tree().is_empty(), "{:?}", h.tree());
        let r = h.run(json!({"state": "restored", "version": "v1"}), true);
        assert_eq!(r.get("failed"), Some(&json!(true)), "{r:?}");
        h.stage("v1");
        let before = h.tree();
        let public = h.public().display().to_string();
        let r = h.run(
            json!({"state": "active", "version": "v1", "path": public}),
            true,
        );
        assert!(changed(&r));
        assert_eq!(h.tree(), before);
        assert!(fs::symlink_metadata(h.public()).is_err());
        let r = h.run(json!({"state": "pruned", "keep": 0}), true);
        assert_eq!(r["removed"], json!(["v1"]));
        assert_eq!(h.tree(), before);
    }

    #[test]
    fn bad_digest_and_malicious_archives_leave_nothing() {
        let h = Host::new();
        let (path, _) = h.artifact("v1");
        let wrong = "0".repeat(64);
        let msg =
            h.fail(json!({"state": "staged", "version": "v1", "artifact": path, "sha256": wrong}));
        assert!(msg.contains(&wrong) && msg.contains("mismatch"), "{msg}");
        let leftovers = |h: &Host| {
            h.tree()
                .into_iter()
                .filter(|p| !p.ends_with("releases") && !p.ends_with("apps/backend"))
                .filter(|p| {
                    *p != "apps"
                        && *p != "artifacts"
                        && !p.ends_with("/tmp")
                        && !p.ends_with("/sha256")
                })
                .collect::<Vec<_>>()
        };
        assert!(leftovers(&h).is_empty(), "{:?}", h.tree());

        let evil = targz(&[E::File("ok", b"x", 0o644), E::Symlink("etc", "/etc")]);
        let evil_path = h.dir.path().join("evil.tar.gz");
        fs::write(&evil_path, &evil).unwrap();
        let msg = h.fail(json!({
            "state": "staged", "version": "v1",
            "artifact": evil_path.display().to_string(), "sha256": sha256_hex(&evil),
        }));
        assert!(msg.contains("`etc`"), "{msg}");
        assert!(leftovers(&h).is_empty(), "{:?}", h.tree());
    }

    #[test]
    fn public_path_that_is_not_a_symlink_is_refused() {
        let h = Host::new();
        h.stage("v1");
        fs::create_dir_all(h.public()).unwrap();
        let msg = h.fail(
            json!({"state": "active", "version": "v1", "path": h.public().display().to_string()}),
        );
        assert!(msg.contains("not a symlink"), "{msg}");
    }

    #[test]
    fn prune_keeps_current_previous_and_known_good() {
        let h = Host::new();
        for v in ["v1", "v2", "v3", "v4", "v5", "v6"] {
            h.stage(v);
        }
        h.ok(json!({"state": "active", "version": "v2"}));
        h.ok(json!({"state": "restored", "version": "v3"}));
        h.ok(json!({"state": "restored", "version": "v4"}));
        // current v4, previous v3 (also the newest known-good besides the current: v2 is an
        // older good one and not protected), newest v6.
        let failed = h.app().join("failed");
        for (i, name) in ["a-tx", "b-tx", "c-tx", "d-tx", "e-tx"].iter().enumerate() {
            let d = failed.join(name);
            fs::create_dir_all(&d).unwrap();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
            File::open(&d).unwrap().set_modified(t).unwrap();
        }
        let r = h.ok(json!({"state": "pruned", "keep": 1}));
        assert_eq!(r["removed"], json!(["v5", "v2", "v1"]));
        assert_eq!(r["removed_failed"], json!(["b-tx", "a-tx"]));
        let mut left: Vec<_> = list_dir(&h.app().join("releases"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        left.sort();
        assert_eq!(left, ["v3", "v4", "v6"]);
        assert_eq!(list_dir(&failed).unwrap().len(), FAILED_KEEP);
        assert!(!changed(&h.ok(json!({"state": "pruned", "keep": 1}))));
    }

    /// The fleet rescue's sequence (restore the captured release, set the left one apart):
    /// the restored release is known-good, and pruning keeps it while it is the newest good
    /// release other than the current, even beyond `keep`.
    #[test]
    fn a_restored_release_stays_known_good_after_the_left_one_is_set_apart() {
        let h = Host::new();
        let known_good = || {
            App::new(&h.state(), "backend")
                .unwrap()
                .load_state()
                .unwrap()
                .known_good
        };
        h.stage("v1");
        h.ok(json!({"state": "active", "version": "v1"}));
        h.stage("v2");
        h.ok(json!({"state": "active", "version": "v2"}));
        assert_eq!(known_good(), ["v2", "v1"]);
        h.ok(json!({"state": "restored", "version": "v1"}));
        h.ok(json!({"state": "failed", "version": "v2"}));
        assert_eq!(known_good(), ["v1"]);
        // v3 is activated: v1 stays beyond `keep` (the newest good release other than the
        // current; v2, the release the rescue left, is apart and counts for nothing).
        h.stage("v3");
        h.ok(json!({"state": "active", "version": "v3"}));
        assert_eq!(known_good(), ["v3", "v1"]);
        let r = h.ok(json!({"state": "pruned", "keep": 1}));
        assert_eq!(r["removed"], json!([]));
        // Once a newer good release (v4 over v3) takes that place, v1 may go.
        h.stage("v4");
        h.ok(json!({"state": "active", "version": "v4"}));
        assert_eq!(known_good(), ["v4", "v3", "v1"]);
        let r = h.ok(json!({"state": "pruned", "keep": 1}));
        assert_eq!(r["removed"], json!(["v1"]));
    }

    /// A switch cut short after `current` moved (its state write failed on a full disk): the
    /// retry finds `current` right and still repairs the state file (found by the chaos suite:
    /// `current` on v1, the state file on v2 after the rescues).
    #[test]
    fn a_switch_whose_state_write_was_lost_is_repaired_by_the_retry() {
        let h = Host::new();
        let app = || App::new(&h.state(), "backend").unwrap();
        h.stage("v1");
        h.ok(json!({"state": "active", "version": "v1"}));
        h.stage("v2");
        h.ok(json!({"state": "active", "version": "v2"}));
        // `current` back on v1, the state file still saying v2.
        replace_symlink(&app().current(), &Path::new("releases").join("v1")).unwrap();
        assert_eq!(app().load_state().unwrap().current.as_deref(), Some("v2"));
        let r = h.ok(json!({"state": "restored", "version": "v1"}));
        assert!(changed(&r), "{r:?}");
        let state = app().load_state().unwrap();
        assert_eq!(state.current.as_deref(), Some("v1"));
        assert_eq!(state.known_good.first().map(String::as_str), Some("v1"));
        // Consistent now: the next switch to v1 changes nothing.
        assert!(!changed(
            &h.ok(json!({"state": "restored", "version": "v1"}))
        ));
    }

    #[test]
    fn failed_release_is_set_apart_and_a_failed_first_deploy_unlinks_current() {
        let h = Host::new();
        let public = h.public().display().to_string();
        // A failed first deploy: nothing ran before it.
        h.stage("v1");
        h.ok(json!({"state": "active", "version": "v1", "path": public}));
        let r = h.ok(json!({"state": "failed", "version": "v1", "path": public}));
        assert!(changed(&r));
        assert_eq!(r["unlinked_current"], json!(true));
        assert!(fs::symlink_metadata(h.app().join("current")).is_err());
        assert!(fs::symlink_metadata(h.public()).is_err());
        assert!(h.app().join("failed/v1-tx1/bin/app").is_file());
        assert!(!h.app().join("releases/v1").exists());
        assert!(!changed(&h.ok(json!({"state": "failed", "version": "v1"}))));

        // The current release with one before it must be restored away from first.
        h.stage("v2");
        h.ok(json!({"state": "active", "version": "v2", "path": public}));
        h.stage("v3");
        h.ok(json!({"state": "active", "version": "v3", "path": public}));
        let msg = h.fail(json!({"state": "failed", "version": "v3"}));
        assert!(
            msg.contains("restore the previous release (v2) first"),
            "{msg}"
        );
        h.ok(json!({"state": "restored", "version": "v2", "path": public}));
        let before = h.run(json!({"state": "failed", "version": "v3"}), true);
        assert!(changed(&before));
        assert!(h.app().join("releases/v3").is_dir(), "check mode moved it");
        h.ok(json!({"state": "failed", "version": "v3"}));
        assert!(h.app().join("failed/v3-tx1").is_dir());
        let state = App::new(&h.state(), "backend")
            .unwrap()
            .load_state()
            .unwrap();
        assert!(!state.known_good.contains(&"v3".to_string()), "{state:?}");
        assert!(h.current().ends_with("v2"));
    }

    #[test]
    fn verified_compares_every_file_with_the_artifact() {
        use std::os::unix::fs::PermissionsExt;
        let h = Host::new();
        h.stage("v1");
        let r = h.ok(json!({"state": "verified", "version": "v1"}));
        assert_eq!(r["intact"], json!(true));
        assert!(!changed(&r));
        let app = h.app().join("releases/v1/bin/app");

        fs::set_permissions(&app, fs::Permissions::from_mode(0o4755)).unwrap();
        let msg = h.fail(json!({"state": "verified", "version": "v1"}));
        assert!(msg.contains("modified (1): bin/app"), "{msg}");
        fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).unwrap();

        fs::write(h.app().join("releases/v1/bin/extra"), b"x").unwrap();
        let r = h.run(json!({"state": "verified", "version": "v1"}), false);
        assert_eq!(r["added"], json!(["bin/extra"]));
        assert_eq!(r["intact"], json!(false));
        fs::remove_file(h.app().join("releases/v1/bin/extra")).unwrap();

        fs::write(&app, b"patched by hand\n").unwrap();
        assert!(
            h.fail(json!({"state": "verified", "version": "v1"}))
                .contains("bin/app")
        );
        fs::remove_file(&app).unwrap();
        assert!(
            h.fail(json!({"state": "verified", "version": "v1"}))
                .contains("missing (1): bin/app")
        );

        let msg = h.fail(json!({"state": "verified", "version": "v9"}));
        assert!(msg.contains("not staged"), "{msg}");

        // The artifact gone from the cache: cannot be checked, and says what to do.
        h.stage("v2");
        let meta = App::new(&h.state(), "backend").unwrap().meta("v2").unwrap();
        fs::remove_file(
            h.state()
                .join("artifacts/sha256")
                .join(&meta.artifact_sha256),
        )
        .unwrap();
        let msg = h.fail(json!({"state": "verified", "version": "v2"}));
        assert!(msg.contains("no longer cached"), "{msg}");
    }

    #[test]
    fn prune_removes_stale_staging_dirs() {
        let h = Host::new();
        h.stage("v1");
        let stale = h.app().join(".staging-v2-txold");
        fs::create_dir_all(stale.join("bin")).unwrap();
        let r = h.ok(json!({"state": "pruned"}));
        assert_eq!(r["removed_staging"], json!([".staging-v2-txold"]));
        assert!(!stale.exists());
        assert!(h.app().join("releases/v1").is_dir());
    }

    /// A plain HTTP server on 127.0.0.1 for one test: `/ok` serves `body`, `/short` promises
    /// more than it sends and hangs up, anything else is 404. Serves at most `max` requests.
    struct HttpServer {
        port: u16,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl HttpServer {
        fn start(body: Vec<u8>, max: usize) -> HttpServer {
            use std::io::{BufRead, BufReader, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = hits.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(max) {
                    let Ok(mut stream) = stream else { continue };
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request = String::new();
                    let _ = reader.read_line(&mut request);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("");
                    let head = |status: &str, len: usize| {
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                        )
                    };
                    let _ = match path {
                        "/ok" => stream
                            .write_all(head("200 OK", body.len()).as_bytes())
                            .and_then(|()| stream.write_all(&body)),
                        "/short" => stream
                            .write_all(head("200 OK", body.len()).as_bytes())
                            .and_then(|()| stream.write_all(&body[..body.len() / 2])),
                        _ => stream.write_all(head("404 Not Found", 0).as_bytes()),
                    };
                }
            });
            HttpServer { port, hits }
        }
        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
    }

    /// Nothing of a failed stage is left: no staging dir, no release, no cache entry or upload.
    fn assert_nothing_left(h: &Host, version: &str) {
        let tree = h.tree();
        assert!(
            tree.iter().all(|p| !p.contains(".staging-")
                && !p.contains(&format!("releases/{version}"))
                && !p.starts_with("artifacts/sha256/")
                && !p.starts_with("artifacts/tmp/")),
            "{tree:#?}"
        );
    }

    #[test]
    fn url_artifacts_are_streamed_verified_and_cached() {
        let h = Host::new();
        let data = targz(&[E::File("index.html", b"<h1>v1</h1>", 0o644)]);
        let sha = sha256_hex(&data);
        let server = HttpServer::start(data.clone(), 8);

        // Not found, cut short, wrong digest: refused, nothing left.
        let msg = h.fail(json!({"state": "staged", "version": "v1",
            "artifact": server.url("/missing"), "sha256": sha}));
        assert!(msg.contains("404") && msg.contains("/missing"), "{msg}");
        assert_nothing_left(&h, "v1");
        let msg = h.fail(json!({"state": "staged", "version": "v1",
            "artifact": server.url("/short"), "sha256": sha}));
        assert!(msg.contains("cannot stage release v1"), "{msg}");
        assert_nothing_left(&h, "v1");
        let wrong = "0".repeat(64);
        let msg = h.fail(json!({"state": "staged", "version": "v1",
            "artifact": server.url("/ok"), "sha256": wrong}));
        assert!(msg.contains(&sha) && msg.contains(&wrong), "{msg}");
        assert_nothing_left(&h, "v1");
        let msg =
            h.fail(json!({"state": "staged", "version": "v1", "artifact": server.url("/ok")}));
        assert!(msg.contains("`sha256` is required"), "{msg}");

        // Credentials in a URL never reach a message.
        let secret = format!("http://deploy:s3cret@127.0.0.1:{}/missing", server.port);
        let msg =
            h.fail(json!({"state": "staged", "version": "v1", "artifact": secret, "sha256": sha}));
        assert!(!msg.contains("s3cret") && msg.contains("***@"), "{msg}");

        let before = server.hits.load(std::sync::atomic::Ordering::SeqCst);
        let r = h.ok(json!({"state": "staged", "version": "v1",
            "artifact": server.url("/ok"), "sha256": sha}));
        assert!(changed(&r));
        assert_eq!(
            fs::read(h.app().join("releases/v1/index.html")).unwrap(),
            b"<h1>v1</h1>"
        );
        assert_eq!(
            fs::read(h.state().join("artifacts/sha256").join(&sha)).unwrap(),
            data
        );
        // Cached now: another version from the same URL and digest needs no download.
        h.ok(json!({"state": "staged", "version": "v1b",
            "artifact": server.url("/ok"), "sha256": sha}));
        assert_eq!(
            server.hits.load(std::sync::atomic::Ordering::SeqCst),
            before + 1
        );
    }

    #[test]
    fn https_artifacts_need_a_trusted_certificate() {
        let h = Host::new();
        let www = h.dir.path().join("www");
        fs::create_dir_all(&www).unwrap();
        let data = targz(&[E::File("index.html", b"<h1>tls</h1>", 0o644)]);
        fs::write(www.join("app.tar.gz"), &data).unwrap();
        let sha = sha256_hex(&data);
        let server = crate::modules::testing::HttpsServer::start(&www);
        let url = format!("https://127.0.0.1:{}/app.tar.gz", server.port);

        // A private CA is not among the webpki roots.
        let msg =
            h.fail(json!({"state": "staged", "version": "v1", "artifact": url, "sha256": sha}));
        assert!(
            msg.contains("cannot download") && msg.to_lowercase().contains("certificate"),
            "{msg}"
        );
        assert_nothing_left(&h, "v1");

        let ca = www.join("ca.pem").display().to_string();
        h.ok(json!({"state": "staged", "version": "v1", "artifact": url, "sha256": sha, "ca_file": ca}));
        assert_eq!(
            fs::read(h.app().join("releases/v1/index.html")).unwrap(),
            b"<h1>tls</h1>"
        );
    }

    #[test]
    fn limits_are_module_arguments() {
        let h = Host::new();
        let big = vec![0u8; 64 * 1024];
        let data = targz(&[E::File("a", &big, 0o644), E::File("b", b"b", 0o644)]);
        let path = h.dir.path().join("limits.tar.gz");
        fs::write(&path, &data).unwrap();
        let sha = sha256_hex(&data);
        let path = path.display().to_string();
        let msg = h.fail(json!({"state": "staged", "version": "v1", "artifact": path,
            "sha256": sha, "max_bytes": 1024}));
        assert!(
            msg.contains("`a`") || msg.contains(" a"),
            "names the entry: {msg}"
        );
        assert_nothing_left(&h, "v1");
        let msg = h.fail(json!({"state": "staged", "version": "v1", "artifact": path,
            "sha256": sha, "max_entries": 1}));
        assert!(msg.contains('b'), "names the entry: {msg}");
        assert_nothing_left(&h, "v1");
        let msg = h.fail(json!({"state": "staged", "version": "v1", "artifact": path,
            "sha256": sha, "max_entries": 0}));
        assert!(
            msg.contains("`max_entries` must be a positive number"),
            "{msg}"
        );
        h.ok(
            json!({"state": "staged", "version": "v1", "artifact": path, "sha256": sha,
            "max_bytes": 65 * 1024, "max_entries": 2}),
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("version", "1.2.3-rc1+b7").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", ".staging"] {
            assert!(check_name("version", bad).is_err(), "{bad}");
        }
        assert_eq!(
            prune_plan(&["c".into(), "b".into(), "a".into()], 1, &["a"]),
            vec!["b".to_string()]
        );
    }
}
