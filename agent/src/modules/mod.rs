//! Modules: the actions a task can run, with Ansible's names, arguments and results.
//!
//! Each module is declared by a [`ModuleSpec`]: its arguments (checked when the playbook is
//! loaded, before anything runs), how its free-form text is read, and a `run` function that gets
//! templated, type-checked arguments and returns Ansible's result object (`changed`, `failed`,
//! `msg`, ...). Modules that change the host honour check mode by reporting what would change.

use std::path::PathBuf;

use minijinja::value::Value as MjValue;
use serde_json::{Map, Value, json};

use crate::template::Templar;

pub mod capture_state;
pub mod command;
pub mod control;
pub mod deploy_lock;
pub mod files;
pub mod forensics;
pub mod health;
pub mod migrate;
pub mod release;
pub mod service;
pub mod wait_for;

/// The JSON object a module returns.
pub type ModuleResult = Map<String, Value>;

/// The type an argument must have after templating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// Text (numbers and booleans are converted to text, as Ansible does).
    Str,
    /// A boolean; accepts yes/no/on/off/true/false/1/0.
    Bool,
    /// An integer; accepts numeric text.
    Int,
    /// A number (seconds and the like); accepts numeric text.
    Num,
    /// A list; a single value becomes a one-element list.
    List,
    /// A mapping.
    Map,
    /// Anything.
    Any,
    /// A Jinja2 expression, not templated before the module sees it (`assert.that`, `debug.var`).
    Expr,
}

/// One argument of a module.
#[derive(Debug, Clone, Copy)]
pub struct ArgSpec {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: ArgKind,
    /// Whether the task must give it.
    pub required: bool,
    /// Other names accepted for it (Ansible's aliases).
    pub aliases: &'static [&'static str],
    /// Allowed values, when the argument is a choice.
    pub choices: &'static [&'static str],
}

impl ArgSpec {
    /// An optional argument.
    pub const fn opt(name: &'static str, kind: ArgKind) -> Self {
        ArgSpec {
            name,
            kind,
            required: false,
            aliases: &[],
            choices: &[],
        }
    }
    /// A required argument.
    pub const fn req(name: &'static str, kind: ArgKind) -> Self {
        ArgSpec {
            name,
            kind,
            required: true,
            aliases: &[],
            choices: &[],
        }
    }
    /// With aliases.
    pub const fn aliases(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }
    /// With allowed values.
    pub const fn choices(mut self, choices: &'static [&'static str]) -> Self {
        self.choices = choices;
        self
    }
}

/// How a module reads `module: some text` (Ansible's free form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeForm {
    /// Only `key=value` pairs (`debug: msg=hi`, `file: path=/x state=absent`).
    KeyValue,
    /// A command line: leading `key=value` pairs naming known arguments, the rest is
    /// `_raw_params` (`command: chdir=/tmp ls -l`).
    Command,
}

/// What a module does in check mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// It reports what would change and changes nothing.
    Supported,
    /// It is skipped (command, shell), unless the task says `check_mode: false`.
    Skip,
}

/// What a module may use while it runs.
#[derive(Debug)]
pub struct ModuleCtx<'a> {
    /// Check mode: change nothing.
    pub check: bool,
    /// The templating engine, for modules that evaluate expressions.
    pub templar: &'a Templar,
    /// The task's variables.
    pub scope: &'a MjValue,
    /// Where relative `src` paths are looked up (the playbook's directory, when known).
    pub base_dir: Option<PathBuf>,
    /// The host's state directory (`apps/`, `artifacts/`, `journal/`).
    pub state_dir: &'a std::path::Path,
    /// The transaction running the module.
    pub txid: &'a str,
    /// Reports progress while the module runs (journaled and streamed as `task_progress`).
    pub progress: Option<Progress<'a>>,
}

/// Where a running module reports progress.
#[derive(Clone, Copy)]
pub struct Progress<'a>(pub &'a dyn Fn(Value));

impl Progress<'_> {
    /// Reports one piece of progress.
    pub fn report(&self, data: Value) {
        (self.0)(data);
    }
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// A module's declaration.
#[derive(Debug)]
pub struct ModuleSpec {
    /// Short name (`command`); `ansible.builtin.<name>` is accepted too.
    pub name: &'static str,
    /// Its arguments.
    pub args: &'static [ArgSpec],
    /// How free-form text is read.
    pub free_form: FreeForm,
    /// Accepts arbitrary argument names (set_fact).
    pub any_args: bool,
    /// Groups of which at least one argument must be given (e.g. `copy`: content or src).
    pub one_of: &'static [&'static [&'static str]],
    /// Pairs of arguments that exclude each other.
    pub exclusive: &'static [(&'static str, &'static str)],
    /// Check mode behaviour.
    pub check_mode: CheckMode,
    /// Runs the module.
    pub run: fn(&Map<String, Value>, &ModuleCtx<'_>) -> ModuleResult,
}

impl ModuleSpec {
    /// Finds an argument by its name or an alias.
    pub fn arg(&self, name: &str) -> Option<&'static ArgSpec> {
        self.args
            .iter()
            .find(|a| a.name == name || a.aliases.contains(&name))
    }
}

/// Every module, in the order `--help` lists them.
pub static MODULES: &[&ModuleSpec] = &[
    &command::COMMAND,
    &command::SHELL,
    &control::FAIL,
    &control::ASSERT,
    &control::DEBUG,
    &control::SET_FACT,
    &control::PAUSE,
    &wait_for::WAIT_FOR,
    &files::FILE,
    &files::COPY,
    &files::TEMPLATE,
    &files::STAT,
    &capture_state::CAPTURE_STATE,
    &deploy_lock::DEPLOY_LOCK,
    &release::RELEASE,
    &service::SERVICE,
    &forensics::FORENSICS,
    &migrate::MIGRATE,
    &health::HEALTH,
];

/// Looks a module up by short name or `ansible.builtin.` / `ansible.legacy.` FQCN.
pub fn lookup(name: &str) -> Option<&'static ModuleSpec> {
    let short = name
        .strip_prefix("ansible.builtin.")
        .or_else(|| name.strip_prefix("ansible.legacy."))
        .unwrap_or(name);
    MODULES.iter().copied().find(|m| m.name == short)
}

/// A failed result with `msg`.
pub fn failed(msg: impl Into<String>) -> ModuleResult {
    let mut m = Map::new();
    m.insert("changed".into(), json!(false));
    m.insert("failed".into(), json!(true));
    m.insert("msg".into(), json!(msg.into()));
    m
}

/// A successful result.
pub fn ok(changed: bool) -> ModuleResult {
    let mut m = Map::new();
    m.insert("changed".into(), json!(changed));
    m
}

/// Reads a list of strings (other values as their JSON text; a single string is a list of one).
pub fn arg_strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Reads a string argument (already type-checked).
pub fn arg_str<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

/// Reads a boolean argument (already type-checked).
pub fn arg_bool(args: &Map<String, Value>, name: &str) -> Option<bool> {
    args.get(name).and_then(Value::as_bool)
}

/// Reads a number argument (already type-checked).
pub fn arg_f64(args: &Map<String, Value>, name: &str) -> Option<f64> {
    args.get(name).and_then(Value::as_f64)
}

/// Reads an integer argument (already type-checked).
pub fn arg_i64(args: &Map<String, Value>, name: &str) -> Option<i64> {
    args.get(name).and_then(Value::as_i64)
}

/// Parses Ansible's boolean spellings.
pub fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "yes" | "on" | "true" | "1" | "y" | "t" => Some(true),
            "no" | "off" | "false" | "0" | "n" | "f" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Converts a templated argument to its declared type; the error says what was expected.
pub fn coerce(spec: &ArgSpec, v: Value) -> Result<Value, String> {
    let bad = |v: &Value, what: &str| format!("argument `{}` must be {what}, not {v}", spec.name);
    let out = match spec.kind {
        ArgKind::Any | ArgKind::Expr => v,
        ArgKind::Str => match v {
            Value::String(_) => v,
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(if b { "True" } else { "False" }.into()),
            Value::Null => Value::Null,
            other => return Err(bad(&other, "text")),
        },
        ArgKind::Bool => match parse_bool(&v) {
            Some(b) => Value::Bool(b),
            None if v.is_null() => Value::Null,
            None => return Err(bad(&v, "a boolean (yes/no/true/false)")),
        },
        ArgKind::Int => match &v {
            Value::Number(n) if n.is_i64() => v,
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                json!(n.as_f64().unwrap_or_default() as i64)
            }
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(i) => json!(i),
                Err(_) => return Err(bad(&v, "an integer")),
            },
            Value::Null => v,
            _ => return Err(bad(&v, "an integer")),
        },
        ArgKind::Num => match &v {
            Value::Number(_) | Value::Null => v,
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(f) => json!(f),
                Err(_) => return Err(bad(&v, "a number")),
            },
            _ => return Err(bad(&v, "a number")),
        },
        ArgKind::List => match v {
            Value::Array(_) | Value::Null => v,
            other => Value::Array(vec![other]),
        },
        ArgKind::Map => match v {
            Value::Object(_) | Value::Null => v,
            other => return Err(bad(&other, "a mapping")),
        },
    };
    if !spec.choices.is_empty()
        && let Some(s) = out.as_str()
        && !spec.choices.contains(&s)
    {
        return Err(format!(
            "argument `{}` must be one of {}, not `{s}`",
            spec.name,
            spec.choices.join(", ")
        ));
    }
    Ok(out)
}

/// Splits Ansible's `key=value key2="quoted value"` text; returns the pairs and the leftover
/// words (for command lines), keeping quotes inside the leftover as written.
pub fn split_key_values(
    text: &str,
    known: impl Fn(&str) -> bool,
) -> (Vec<(String, String)>, String) {
    let mut pairs = Vec::new();
    let mut rest_words: Vec<String> = Vec::new();
    for word in split_words_raw(text) {
        if rest_words.is_empty()
            && let Some((k, v)) = word.split_once('=')
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && known(k)
        {
            pairs.push((k.to_string(), unquote(v)));
            continue;
        }
        rest_words.push(word);
    }
    (pairs, rest_words.join(" "))
}

/// Splits on whitespace outside quotes and outside `{{ }}` / `{% %}`, keeping each word's quotes.
fn split_words_raw(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut jinja = 0usize;
    let mut prev = '\0';
    for c in text.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        if quote.is_none() {
            if prev == '{' && (c == '{' || c == '%') {
                jinja += 1;
            } else if (prev == '}' || prev == '%') && c == '}' && jinja > 0 {
                jinja -= 1;
            }
        }
        prev = c;
        if jinja > 0 && quote.is_none() && c.is_whitespace() {
            cur.push(c);
            continue;
        }
        match (c, quote) {
            ('\\', _) => {
                cur.push(c);
                escaped = true;
            }
            ('"' | '\'', None) => {
                quote = Some(c);
                cur.push(c);
            }
            (q, Some(open)) if q == open => {
                quote = None;
                cur.push(c);
            }
            (w, None) if w.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        let inner = &v[1..v.len() - 1];
        if b[0] == b'"' {
            return inner
                .replace("\\n", "\n")
                .replace("\\\"", "\"")
                .replace("\\\\", "\\");
        }
        return inner.to_string();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_and_leftover_command() {
        let (pairs, rest) = split_key_values("msg=\"hello world\" x=1", |_| true);
        assert_eq!(
            pairs,
            vec![
                ("msg".into(), "hello world".into()),
                ("x".into(), "1".into())
            ]
        );
        assert_eq!(rest, "");
        let (pairs, rest) = split_key_values("chdir=/tmp ls -l 'a b' x=1", |k| k == "chdir");
        assert_eq!(pairs, vec![("chdir".into(), "/tmp".into())]);
        assert_eq!(rest, "ls -l 'a b' x=1");
        let (pairs, rest) = split_key_values("dest=/x content=\"new content\\n\"", |_| true);
        assert_eq!(pairs[1].1, "new content\n");
        assert_eq!(rest, "");
        let (pairs, rest) = split_key_values("path={{ d }}/x state=directory", |_| true);
        assert_eq!(pairs[0], ("path".into(), "{{ d }}/x".into()));
        assert_eq!(pairs[1], ("state".into(), "directory".into()));
        assert_eq!(rest, "");
    }

    #[test]
    fn coercion_accepts_ansible_spellings() {
        let b = ArgSpec::opt("force", ArgKind::Bool);
        assert_eq!(coerce(&b, json!("yes")).unwrap(), json!(true));
        assert_eq!(coerce(&b, json!("off")).unwrap(), json!(false));
        assert!(coerce(&b, json!("maybe")).is_err());
        let i = ArgSpec::opt("port", ArgKind::Int);
        assert_eq!(coerce(&i, json!("8080")).unwrap(), json!(8080));
        let c = ArgSpec::opt("state", ArgKind::Str).choices(&["absent", "touch"]);
        assert!(
            coerce(&c, json!("present"))
                .unwrap_err()
                .contains("one of absent, touch")
        );
    }

    #[test]
    fn lookup_accepts_fqcn() {
        assert_eq!(lookup("ansible.builtin.copy").unwrap().name, "copy");
        assert_eq!(lookup("debug").unwrap().name, "debug");
        assert!(lookup("ansible.builtin.nosuch").is_none());
    }
}

/// Runs modules in unit tests without an engine: one place builds the [`ModuleCtx`].
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use serde_json::Value;

    use super::{ModuleCtx, ModuleResult, ModuleSpec};
    use crate::template::{Layer, Scope, Templar, from_json};

    /// How a test calls a module; `Call::default()` is a live (non-check) run with no variables.
    #[derive(Debug, Default)]
    pub(crate) struct Call<'a> {
        pub check: bool,
        pub state_dir: Option<&'a Path>,
        pub txid: Option<&'a str>,
        pub base_dir: Option<PathBuf>,
        /// Variables visible to the module, as a JSON object.
        pub vars: Option<Value>,
    }

    impl Call<'_> {
        /// Runs `spec` with `args` (a JSON object).
        pub(crate) fn run(&self, spec: &ModuleSpec, args: Value) -> ModuleResult {
            let templar = Arc::new(Templar::new());
            let vars: BTreeMap<_, _> = self
                .vars
                .as_ref()
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
                .unwrap_or_default();
            let scope = Scope::value(templar.clone(), vec![Layer::Fixed(Arc::new(vars))]);
            let ctx = ModuleCtx {
                check: self.check,
                templar: &templar,
                scope: &scope,
                base_dir: self.base_dir.clone(),
                state_dir: self.state_dir.unwrap_or(Path::new("/nonexistent")),
                txid: self.txid.unwrap_or("test"),
                progress: None,
            };
            let Value::Object(args) = args else {
                panic!("module arguments must be a JSON object");
            };
            (spec.run)(&args, &ctx)
        }
    }

    /// A CA and a leaf for 127.0.0.1 made with the openssl CLI, and a python3 HTTPS server with
    /// the leaf serving `dir`; killed on drop.
    #[derive(Debug)]
    pub struct HttpsServer {
        child: std::process::Child,
        /// Its port on 127.0.0.1.
        pub port: u16,
    }

    impl HttpsServer {
        /// Starts it; panics when openssl or python3 is missing.
        pub fn start(dir: &Path) -> HttpsServer {
            use std::io::BufRead;
            let sh = |script: &str| {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .current_dir(dir)
                    .output()
                    .expect("sh");
                assert!(
                    out.status.success(),
                    "{script}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
            sh(&format!(
                "openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 1 -subj /CN=rampart-test-ca 2>/dev/null"
            ));
            sh(&format!(
                "openssl req {ec} -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null && \
                 printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > leaf.ext && \
                 openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                   -out leaf.pem -days 1 -extfile leaf.ext 2>/dev/null"
            ));
            let server = "import http.server, ssl, sys\n\
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
                ctx.load_cert_chain('leaf.pem', 'leaf.key')\n\
                srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
                srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
                print(srv.server_address[1], flush=True)\n\
                srv.serve_forever()\n";
            let mut child = std::process::Command::new("python3")
                .args(["-c", server])
                .current_dir(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let port = line.trim().parse().expect("the server's port");
            HttpsServer { child, port }
        }
    }

    impl Drop for HttpsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
