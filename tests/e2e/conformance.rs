//! The Ansible conformance suite: every scenario under `tests/conformance/` runs with real
//! ansible-core 2.19 (`ansible-playbook -i localhost, -c local`) and with `rampart run --local`,
//! each on a fresh copy of the same files at the same path, and the two runs are compared
//! (`tests/conformance/README.md` says what a scenario holds and what is compared).
//!
//! Inputs: the scenario folders, `tests/conformance/PENDING` (scenarios skipped, with why),
//! `RAMPART_ANSIBLE_PLAYBOOK` (an `ansible-playbook` to use; else `target/ansible-venv` is
//! created once, under a file lock), `RAMPART_CONFORMANCE_ONLY` (comma-separated scenario names
//! to run, pending or not), `RAMPART_CONFORMANCE_JOBS` (scenarios at a time, default 2). Output: one report of every mismatch of every scenario, then the
//! test fails; the wall time of the suite is printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rampart_tests::deploy::free_port;
use rampart_tests::{CliRun, KillOnDrop, bin, bin_dir, run_to_end};
use serde_json::{Value, json};

/// Scenarios run at the same time (the suite is sized for 2 cores); `RAMPART_CONFORMANCE_JOBS`
/// (1 to 16) says otherwise.
const WORKERS: usize = 2;
const MAX_WORKERS: usize = 16;
/// The longest one tool may take on one scenario.
const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// What is read of the work dir: entries, depth, bytes of one file.
const MAX_ENTRIES: usize = 2000;
const MAX_DEPTH: usize = 12;
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Result keys compared on every task when Ansible's result has them.
const DEFAULT_KEYS: &[&str] = &["changed", "rc", "stdout", "status", "content"];
/// Actions whose result is Ansible's bookkeeping (what was included), not a module's: only their
/// status is compared.
const NO_RESULT: &[&str] = &["include_tasks", "include_role"];
/// The ansible-core the suite is the reference of.
const ANSIBLE_CORE: &str = "ansible-core>=2.19,<2.20";

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// One scenario folder.
#[derive(Debug)]
struct Scenario {
    name: String,
    dir: PathBuf,
    /// Extra CLI arguments for both tools (`args`, whitespace-separated).
    args: Vec<String>,
    /// Result keys to compare besides the defaults (`compare`, one a line; `-key`: not that
    /// default).
    keys: Vec<String>,
    /// `http`: a static HTTP server on 127.0.0.1 serves the work dir (`-e http_port=N`).
    http: bool,
    /// `differs`: the differences Rampart keeps on purpose, one a line exactly as the suite
    /// reports them; the scenario agrees when its differences are exactly these.
    differs: Option<Vec<String>>,
    /// `inventory`: both tools get `-i inventory` (else Ansible gets `-i localhost,` and
    /// Rampart none); `args` then holds `--limit HOST`, since `rampart run --local` runs one.
    inventory: bool,
}

impl Scenario {
    fn load(dir: &Path) -> Scenario {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        Scenario {
            name,
            dir: dir.to_path_buf(),
            args: read("args").split_whitespace().map(String::from).collect(),
            keys: read("compare")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
            http: dir.join("http").is_file(),
            inventory: dir.join("inventory").is_file(),
            differs: std::fs::read_to_string(dir.join("differs")).ok().map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect()
            }),
        }
    }
}

/// `name: reason` lines of `PENDING` (`#` comments and blank lines ignored).
fn pending(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(':') {
            Some((n, r)) => (n.trim().to_string(), r.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// One task result as either tool reported it.
#[derive(Debug, Clone)]
struct TaskObs {
    name: String,
    status: String,
    action: String,
    result: Value,
}

/// What is left under the work dir: kind, mode, content or link target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Link { target: String },
    Other,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dir { mode } => write!(f, "dir {mode:04o}"),
            Node::File { mode, content } => {
                write!(
                    f,
                    "file {mode:04o} {:?}",
                    short(&String::from_utf8_lossy(content))
                )
            }
            Node::Link { target } => write!(f, "link -> {target}"),
            Node::Other => write!(f, "special file"),
        }
    }
}

/// One tool's run of one scenario.
#[derive(Debug)]
struct Observed {
    code: i32,
    tasks: Vec<TaskObs>,
    /// ok, changed, failed, skipped, rescued, ignored; `None` without a summary line.
    recap: Option<[u64; 6]>,
    /// Rampart's outcome (`rolled_back`, ...); none for Ansible.
    outcome: Option<String>,
    files: BTreeMap<String, Node>,
    stderr: String,
}

const RECAP_KEYS: [&str; 6] = ["ok", "changed", "failed", "skipped", "rescued", "ignored"];

/// What a run showed, with the scenario copy's path written `<case>` in results, file contents
/// and link targets (the path differs from run to run; a cached run was elsewhere).
fn observe(run: &CliRun, place: &Place) -> Observed {
    let case = place.case().to_string_lossy().into_owned();
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .map(|v| unplace(v, &case))
        .collect();
    let tasks = lines
        .iter()
        .filter(|v| v["type"] == "task")
        .map(|v| TaskObs {
            name: v["name"].as_str().unwrap_or_default().to_string(),
            status: v["status"].as_str().unwrap_or_default().to_string(),
            action: short_action(v["action"].as_str().unwrap_or_default()).to_string(),
            result: v["result"].clone(),
        })
        .collect();
    let summary = lines.iter().rev().find(|v| v["type"] == "summary");
    let recap = summary.map(|s| RECAP_KEYS.map(|k| s["recap"][k].as_u64().unwrap_or(0)));
    Observed {
        code: run.code,
        tasks,
        recap,
        outcome: summary.and_then(|s| s["outcome"].as_str().map(String::from)),
        files: snapshot(&place.work())
            .into_iter()
            .map(|(k, n)| (k, unplace_node(n, &case)))
            .collect(),
        stderr: run.stderr.replace(&case, CASE),
    }
}

/// Ansible's runs are kept in `target/conformance-cache/`, keyed by everything they depend on
/// (ansible-core's version, the callback plugin, every byte and mode of the scenario folder, this
/// format); `RAMPART_CONFORMANCE_FRESH=1` runs Ansible anyway. Ansible takes seconds a scenario,
/// Rampart milliseconds: a warm suite runs only Rampart.
const CACHE_FORMAT: &str = "rampart-conformance-cache 1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The cache key of a scenario's Ansible run.
fn cache_key(sc: &Scenario, ansible_version: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT);
    h.update([0]);
    h.update(ansible_version);
    h.update([0]);
    let plugin = suite_dir().join("callback_plugins/rampart_conformance.py");
    h.update(std::fs::read(plugin).unwrap_or_default());
    for (rel, node) in snapshot(&sc.dir) {
        h.update([0]);
        h.update(rel);
        h.update([0]);
        h.update(node.to_key());
    }
    hex(&h.finalize()[..16])
}

impl Node {
    fn to_key(&self) -> Vec<u8> {
        match self {
            Node::File { mode, content } => [format!("f{mode:o}:").as_bytes(), content].concat(),
            other => other.to_string().into_bytes(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Node::Dir { mode } => json!({"kind": "dir", "mode": mode}),
            Node::File { mode, content } => {
                json!({"kind": "file", "mode": mode, "content": hex(content)})
            }
            Node::Link { target } => json!({"kind": "link", "target": target}),
            Node::Other => json!({"kind": "other"}),
        }
    }

    fn from_json(v: &Value) -> Option<Node> {
        let mode = || v["mode"].as_u64().map(|m| m as u32);
        Some(match v["kind"].as_str()? {
            "dir" => Node::Dir { mode: mode()? },
            "file" => Node::File {
                mode: mode()?,
                content: unhex(v["content"].as_str()?)?,
            },
            "link" => Node::Link {
                target: v["target"].as_str()?.to_string(),
            },
            _ => Node::Other,
        })
    }
}

impl Observed {
    fn to_json(&self) -> Value {
        json!({
            "code": self.code,
            "tasks": self.tasks.iter().map(|t| json!({
                "name": t.name, "status": t.status, "action": t.action, "result": t.result,
            })).collect::<Vec<_>>(),
            "recap": self.recap,
            "outcome": self.outcome,
            "files": self.files.iter().map(|(k, n)| (k.clone(), n.to_json())).collect::<serde_json::Map<_, _>>(),
            "stderr": self.stderr,
        })
    }

    fn from_json(v: &Value) -> Option<Observed> {
        let tasks = v["tasks"]
            .as_array()?
            .iter()
            .map(|t| {
                Some(TaskObs {
                    name: t["name"].as_str()?.to_string(),
                    status: t["status"].as_str()?.to_string(),
                    action: t["action"].as_str()?.to_string(),
                    result: t["result"].clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let recap = match &v["recap"] {
            Value::Null => None,
            r => {
                let a = r.as_array()?;
                let mut out = [0u64; 6];
                for (o, x) in out.iter_mut().zip(a) {
                    *o = x.as_u64()?;
                }
                Some(out)
            }
        };
        let files = v["files"]
            .as_object()?
            .iter()
            .map(|(k, n)| Some((k.clone(), Node::from_json(n)?)))
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Observed {
            code: i32::try_from(v["code"].as_i64()?).ok()?,
            tasks,
            recap,
            outcome: v["outcome"].as_str().map(String::from),
            files,
            stderr: v["stderr"].as_str()?.to_string(),
        })
    }
}

/// Ansible's run of `sc`: from the cache when it holds it, else run and stored.
fn ansible_observed(
    exe: &Path,
    version: &str,
    sc: &Scenario,
    place: &Place,
    port: Option<u16>,
) -> Observed {
    let fresh = std::env::var("RAMPART_CONFORMANCE_FRESH").is_ok_and(|v| v == "1");
    let dir = bin_dir()
        .parent()
        .expect("target dir")
        .join("conformance-cache");
    let file = dir.join(format!("{}-{}.json", sc.name, cache_key(sc, version)));
    if !fresh
        && let Some(o) = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| Observed::from_json(&v))
    {
        return o;
    }
    let o = run_ansible(exe, sc, place, port);
    // A write that fails only costs the next run time.
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, o.to_json().to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    o
}

/// `ansible-playbook --version`'s first line (the cache key holds it).
fn ansible_version(exe: &Path) -> String {
    let mut cmd = Command::new(exe);
    cmd.arg("--version");
    let run = run_to_end(cmd, RUN_DEADLINE);
    assert_eq!(run.code, 0, "{} --version: {}", exe.display(), run.stderr);
    run.stdout.lines().next().unwrap_or_default().to_string()
}

/// How the scenario copy's path is written in what is compared.
const CASE: &str = "<case>";

fn unplace(v: Value, case: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace(case, CASE)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| unplace(x, case)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k.replace(case, CASE), unplace(x, case)))
                .collect(),
        ),
        other => other,
    }
}

fn unplace_node(n: Node, case: &str) -> Node {
    match n {
        Node::File { mode, content } => Node::File {
            mode,
            content: replace_bytes(&content, case.as_bytes(), CASE.as_bytes()),
        },
        Node::Link { target } => Node::Link {
            target: target.replace(case, CASE),
        },
        other => other,
    }
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if !from.is_empty() && hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fn short_action(a: &str) -> &str {
    a.strip_prefix("ansible.builtin.")
        .or_else(|| a.strip_prefix("ansible.legacy."))
        .unwrap_or(a)
}

/// Every entry under `root`, by relative path (bounded by [`MAX_ENTRIES`] and [`MAX_DEPTH`]).
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if out.len() >= MAX_ENTRIES {
                out.insert("…".into(), Node::Other);
                return out;
            }
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = md.permissions().mode() & 0o7777;
            let node = if md.file_type().is_symlink() {
                Node::Link {
                    target: std::fs::read_link(&path)
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                }
            } else if md.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((path.clone(), depth + 1));
                }
                Node::Dir { mode }
            } else if md.is_file() {
                let mut content = Vec::new();
                if let Ok(f) = std::fs::File::open(&path) {
                    use std::io::Read;
                    let _ = f.take(MAX_FILE_BYTES).read_to_end(&mut content);
                }
                Node::File { mode, content }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    out
}

/// Copies `from` into `to` (created), keeping modes and symlinks; bounded like [`snapshot`].
fn copy_tree(from: &Path, to: &Path) {
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf(), 0usize)];
    let mut copied = 0usize;
    while let Some((src, dst, depth)) = stack.pop() {
        std::fs::create_dir_all(&dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
        for e in std::fs::read_dir(&src)
            .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
            .flatten()
        {
            copied += 1;
            assert!(
                copied <= MAX_ENTRIES,
                "{} has too many files",
                from.display()
            );
            let (s, d) = (e.path(), dst.join(e.file_name()));
            let ft = e.file_type().expect("file type");
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&s).unwrap(), &d).unwrap();
            } else if ft.is_dir() {
                assert!(depth < MAX_DEPTH, "{} is nested too deep", s.display());
                stack.push((s, d, depth + 1));
            } else {
                std::fs::copy(&s, &d)
                    .unwrap_or_else(|e| panic!("copy {} to {}: {e}", s.display(), d.display()));
            }
        }
    }
}

/// The `ansible-playbook` to run: `RAMPART_ANSIBLE_PLAYBOOK`, else `target/ansible-venv`,
/// created on first use while holding `target/ansible-venv.lock` (two test processes may race).
fn ansible_playbook() -> PathBuf {
    if let Some(p) = std::env::var_os("RAMPART_ANSIBLE_PLAYBOOK") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "RAMPART_ANSIBLE_PLAYBOOK={} does not exist",
            p.display()
        );
        return p;
    }
    let exe = |venv: &Path| venv.join("bin/ansible-playbook");
    exe(&rampart_tests::python_venv(
        "ansible-venv",
        ANSIBLE_CORE,
        |v| exe(v).exists(),
    ))
}

/// Where one scenario runs: `<tmp>/case` is the copy of its folder (work dir `case/work`), and
/// beside it what each tool keeps for itself.
struct Place {
    tmp: tempfile::TempDir,
}

impl Place {
    fn case(&self) -> PathBuf {
        self.tmp.path().join("case")
    }

    fn work(&self) -> PathBuf {
        self.case().join("work")
    }

    /// A fresh copy of the scenario at `case/`, with its `work/` (empty when it has none).
    fn fresh(&self, sc: &Scenario) {
        let case = self.case();
        if case.exists() {
            std::fs::remove_dir_all(&case).expect("remove the previous copy");
        }
        copy_tree(&sc.dir, &case);
        std::fs::create_dir_all(self.work()).expect("work dir");
    }
}

/// How long the scenario's HTTP server may take to listen.
const HTTP_START: Duration = Duration::from_secs(20);

/// Python's static file server on 127.0.0.1, serving `case/work` (the path stays, the copy
/// behind it is renewed for each tool); SIGKILLed when dropped.
fn serve_work(place: &Place) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(place.work())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3 -m http.server");
    let server = KillOnDrop::new(child);
    let until = Instant::now() + HTTP_START;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "python3 -m http.server did not listen on 127.0.0.1:{port} within {HTTP_START:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// The arguments both tools get: `-e work=...`, `-e http_port=...` with a server, then the
/// scenario's `args`.
fn common_args(sc: &Scenario, place: &Place, port: Option<u16>) -> Vec<String> {
    let mut v = vec!["-e".to_string(), format!("work={}", place.work().display())];
    if let Some(p) = port {
        v.extend(["-e".to_string(), format!("http_port={p}")]);
    }
    v.extend(sc.args.iter().cloned());
    v
}

fn run_ansible(exe: &Path, sc: &Scenario, place: &Place, port: Option<u16>) -> Observed {
    place.fresh(sc);
    let tmp = place.tmp.path();
    let cfg = tmp.join("empty.cfg");
    std::fs::write(&cfg, "").expect("empty ansible.cfg");
    let python = exe.with_file_name("python3");
    let mut cmd = Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ANSIBLE_") {
            cmd.env_remove(k);
        }
    }
    let inventory = if sc.inventory {
        "inventory"
    } else {
        "localhost,"
    };
    cmd.current_dir(place.case())
        .args(["-i", inventory, "-c", "local", "site.yml", "-e"])
        .arg(format!("ansible_python_interpreter={}", python.display()))
        .args(common_args(sc, place, port))
        .env("ANSIBLE_CONFIG", &cfg)
        .env("ANSIBLE_HOME", tmp.join("ansible-home"))
        .env("ANSIBLE_LOCAL_TEMP", tmp.join("ansible-local"))
        .env("ANSIBLE_REMOTE_TEMP", tmp.join("ansible-remote"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .env("ANSIBLE_DEPRECATION_WARNINGS", "0")
        .env("ANSIBLE_STDOUT_CALLBACK", "rampart_conformance")
        .env(
            "ANSIBLE_CALLBACK_PLUGINS",
            suite_dir().join("callback_plugins"),
        );
    let run = run_to_end(cmd, RUN_DEADLINE);
    observe(&run, place)
}

fn run_rampart(sc: &Scenario, place: &Place, port: Option<u16>) -> Observed {
    place.fresh(sc);
    let state = place.tmp.path().join("rampart-state");
    let _ = std::fs::remove_dir_all(&state);
    let mut cmd = Command::new(bin("rampart"));
    cmd.current_dir(place.case())
        .arg("run")
        .arg(place.case().join("site.yml"))
        .args(["--local", "--json", "--state-dir"])
        .arg(&state)
        .args(common_args(sc, place, port));
    if sc.inventory {
        cmd.args(["-i", "inventory"]);
    }
    let run = run_to_end(cmd, RUN_DEADLINE);
    observe(&run, place)
}

fn short(s: &str) -> String {
    const MAX: usize = 200;
    let one = s.replace('\n', "\\n");
    match one.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

fn recap_text(r: Option<[u64; 6]>) -> String {
    match r {
        None => "none".into(),
        Some(r) => RECAP_KEYS
            .iter()
            .zip(r)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The result keys compared on one task: the defaults, `msg` of `debug`, and the scenario's.
fn keys_for(sc: &Scenario, action: &str) -> Vec<String> {
    let mut keys: Vec<String> = DEFAULT_KEYS.iter().map(|k| k.to_string()).collect();
    if action == "debug" {
        keys.push("msg".into());
    }
    for k in &sc.keys {
        match k.strip_prefix('-') {
            Some(drop) => keys.retain(|x| x != drop),
            None => keys.push(k.clone()),
        }
    }
    keys
}

/// The differences of the compared keys of one result (an object) as lines; loop results are
/// compared item by item.
fn diff_result(keys: &[String], a: &Value, r: &Value, at: &str, out: &mut Vec<String>) {
    for k in keys {
        let Some(av) = a.get(k) else { continue };
        match r.get(k) {
            Some(rv) if rv == av => {}
            rv => out.push(format!(
                "{at}{k}: ansible {} | rampart {}",
                short(&av.to_string()),
                rv.map_or("<missing>".into(), |v| short(&v.to_string()))
            )),
        }
    }
    if let Some(items) = a.get("results").and_then(Value::as_array) {
        let ritems = r.get("results").and_then(Value::as_array);
        match ritems {
            Some(ri) if ri.len() == items.len() => {
                for (i, (ai, rv)) in items.iter().zip(ri).enumerate() {
                    let mut ks = keys.to_vec();
                    ks.push("item".into());
                    diff_result(&ks, ai, rv, &format!("{at}results[{i}]."), out);
                }
            }
            _ => out.push(format!(
                "{at}results: ansible {} items | rampart {}",
                items.len(),
                ritems.map_or("<missing>".into(), |v| format!("{} items", v.len()))
            )),
        }
    }
}

/// Every difference between the two runs, as report lines (none: they agree).
fn compare(sc: &Scenario, a: &Observed, r: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let seq = |o: &Observed| -> Vec<(String, String)> {
        o.tasks
            .iter()
            .map(|t| (t.name.clone(), t.status.clone()))
            .collect()
    };
    let (sa, sr) = (seq(a), seq(r));
    if sa != sr {
        out.push("task sequence (ansible | rampart):".into());
        for i in 0..sa.len().max(sr.len()) {
            let cell = |s: &[(String, String)]| {
                s.get(i)
                    .map_or("-".to_string(), |(n, st)| format!("{n} [{st}]"))
            };
            let mark = if sa.get(i) == sr.get(i) { " " } else { "!" };
            out.push(format!(
                "  {mark} {:>2} {} | {}",
                i + 1,
                cell(&sa),
                cell(&sr)
            ));
        }
    } else {
        for (i, (ta, tr)) in a.tasks.iter().zip(&r.tasks).enumerate() {
            if NO_RESULT.contains(&ta.action.as_str()) {
                continue;
            }
            let mut lines = Vec::new();
            diff_result(
                &keys_for(sc, &ta.action),
                &ta.result,
                &tr.result,
                "",
                &mut lines,
            );
            for l in lines {
                out.push(format!("task {} {:?}: {l}", i + 1, ta.name));
            }
        }
    }
    if a.recap != r.recap {
        out.push(format!(
            "recap: ansible {} | rampart {}",
            recap_text(a.recap),
            recap_text(r.recap)
        ));
    }
    // A transaction whose block failed and whose rescue ran is rolled back, and says so in its
    // exit code (1); Ansible counts the host as rescued and exits 0 (README.md, "deliberate").
    let rescued = r.outcome.as_deref() == Some("rolled_back") && r.code == 1;
    if (a.code == 0) != (r.code == 0) && !(a.code == 0 && rescued) {
        out.push(format!(
            "exit code: ansible {} | rampart {}",
            a.code, r.code
        ));
    }
    let paths: std::collections::BTreeSet<&String> = a.files.keys().chain(r.files.keys()).collect();
    for p in paths {
        match (a.files.get(p), r.files.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => out.push(format!(
                "work/{p}: ansible {} | rampart {}",
                x.map_or("<absent>".into(), ToString::to_string),
                y.map_or("<absent>".into(), ToString::to_string)
            )),
        }
    }
    if !out.is_empty() {
        for (who, o) in [("ansible", a), ("rampart", r)] {
            let err = o.stderr.trim();
            if !err.is_empty() {
                out.push(format!("{who} stderr: {}", short(err)));
            }
        }
    }
    out
}

/// A scenario's differences once those its `differs` file lists are accounted for: none when
/// they are exactly those; else every difference, with what was expected.
fn deliberate(sc: &Scenario, diffs: Vec<String>) -> Vec<String> {
    match &sc.differs {
        None => diffs,
        Some(expected) if *expected == diffs => Vec::new(),
        Some(expected) => {
            let mut out = vec![format!(
                "the deliberate differences changed; `differs` lists {} line(s): {expected:?}; now:",
                expected.len()
            )];
            out.extend(diffs);
            out
        }
    }
}

#[test]
fn rampart_runs_every_scenario_as_ansible_core_does() {
    let started = Instant::now();
    let root = suite_dir();
    let pend = pending(&std::fs::read_to_string(root.join("PENDING")).unwrap_or_default());
    let mut all: Vec<Scenario> = std::fs::read_dir(&root)
        .expect("tests/conformance")
        .flatten()
        .filter(|e| e.path().join("site.yml").is_file())
        .map(|e| Scenario::load(&e.path()))
        .collect();
    all.sort_by(|x, y| x.name.cmp(&y.name));
    for name in pend.keys() {
        assert!(
            all.iter().any(|s| &s.name == name),
            "PENDING names {name}, which is not a scenario of tests/conformance"
        );
    }
    let only: Option<Vec<String>> = std::env::var("RAMPART_CONFORMANCE_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| match &only {
            Some(o) => o.contains(&s.name),
            None => !pend.contains_key(&s.name),
        })
        .collect();
    if only.is_none() {
        for (n, why) in &pend {
            println!("conformance: pending {n}: {why}");
        }
    }
    let exe = ansible_playbook();
    let version = ansible_version(&exe);
    let next = AtomicUsize::new(0);
    let reports: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());
    let workers = std::env::var("RAMPART_CONFORMANCE_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(WORKERS, |n| n.clamp(1, MAX_WORKERS));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(sc) = chosen.get(i) else { break };
                    let place = Place {
                        tmp: tempfile::tempdir().expect("temp dir"),
                    };
                    place.fresh(sc);
                    let server = sc.http.then(|| serve_work(&place));
                    let port = server.as_ref().map(|s| s.1);
                    let a = ansible_observed(&exe, &version, sc, &place, port);
                    let r = run_rampart(sc, &place, port);
                    drop(server);
                    let diffs = deliberate(sc, compare(sc, &a, &r));
                    reports.lock().unwrap().insert(sc.name.clone(), diffs);
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap();
    let failed: Vec<(&String, &Vec<String>)> =
        reports.iter().filter(|(_, d)| !d.is_empty()).collect();
    let mut text = String::new();
    for (name, diffs) in &failed {
        let _ = writeln!(text, "\n== {name} (tests/conformance/{name})");
        for d in *diffs {
            let _ = writeln!(text, "  {d}");
        }
    }
    println!(
        "conformance: {} scenarios run, {} agree, {} differ, {} pending; {:.1} s",
        reports.len(),
        reports.len() - failed.len(),
        failed.len(),
        if only.is_some() { 0 } else { pend.len() },
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "rampart differs from ansible-core on {} scenario(s):{text}",
        failed.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_lines_name_a_scenario_and_a_reason() {
        let p = pending("# c\n\n12-x: needs handlers\n13-y\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p["12-x"], "needs handlers");
        assert_eq!(p["13-y"], "");
    }

    #[test]
    fn a_cached_run_reads_back_as_itself() {
        let o = Observed {
            code: 2,
            tasks: vec![TaskObs {
                name: "t".into(),
                status: "failed".into(),
                action: "copy".into(),
                result: json!({"msg": "<case>/work/x"}),
            }],
            recap: Some([1, 0, 1, 0, 0, 0]),
            outcome: None,
            files: BTreeMap::from([
                ("d".to_string(), Node::Dir { mode: 0o750 }),
                (
                    "d/f".to_string(),
                    Node::File {
                        mode: 0o600,
                        content: vec![0, 255, b'\n'],
                    },
                ),
                (
                    "l".to_string(),
                    Node::Link {
                        target: "d/f".into(),
                    },
                ),
            ]),
            stderr: "warning".into(),
        };
        let back = Observed::from_json(&o.to_json()).expect("reads back");
        assert_eq!(back.files, o.files);
        assert_eq!(back.recap, o.recap);
        assert_eq!((back.code, back.stderr.as_str()), (2, "warning"));
        assert_eq!(back.tasks[0].result, o.tasks[0].result);
        assert_eq!(
            Observed::from_json(&json!({"code": 0})).map(|o| o.code),
            None
        );
    }

    #[test]
    fn the_copy_path_is_written_case() {
        let v = unplace(
            json!({"dest": "/tmp/x/case/work/a", "n": [1, "/tmp/x/case"]}),
            "/tmp/x/case",
        );
        assert_eq!(v, json!({"dest": "<case>/work/a", "n": [1, "<case>"]}));
        assert_eq!(
            replace_bytes(b"a/tmp/x/caseb", b"/tmp/x/case", b"<case>"),
            b"a<case>b"
        );
    }

    #[test]
    fn results_differ_only_on_keys_ansible_has() {
        let keys = vec!["rc".to_string(), "stdout".to_string()];
        let mut out = Vec::new();
        diff_result(
            &keys,
            &json!({"rc": 0, "results": [{"item": 1, "rc": 0}]}),
            &json!({"rc": 0, "stdout": "x", "results": [{"item": 2, "rc": 0}]}),
            "",
            &mut out,
        );
        assert_eq!(
            out,
            vec!["results[0].item: ansible 1 | rampart 2".to_string()]
        );
    }
}
