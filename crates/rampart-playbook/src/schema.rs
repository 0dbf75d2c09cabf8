//! What a module takes: the argument schema of every built-in module, checked when a playbook
//! is loaded (before anything runs), and the coercions Ansible applies to arguments.
//!
//! The schema is the language's half of a module; the function that runs it is the agent's
//! (`rampart_agent::modules`), which pairs each [`ModuleSchema`] with its run function.

use serde_json::{Value, json};

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

/// A module's declaration as the playbook language sees it: its name and arguments, checked
/// when a playbook is loaded; the agent pairs each with the function that runs it.
#[derive(Debug)]
pub struct ModuleSchema {
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
}

impl ModuleSchema {
    /// Finds an argument by its name or an alias.
    pub fn arg(&self, name: &str) -> Option<&'static ArgSpec> {
        self.args
            .iter()
            .find(|a| a.name == name || a.aliases.contains(&name))
    }
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
}
