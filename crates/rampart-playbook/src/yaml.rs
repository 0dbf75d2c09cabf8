//! Loader for untrusted playbook YAML.
//!
//! Input: the text of a YAML stream (`&str`, so always valid UTF-8) and [`Limits`].
//! Output: one [`Yaml`] tree per document, in which every node remembers the [`Mark`]
//! (1-based line and column) where it starts, so callers can report `file:line:column`.
//!
//! Plain (unquoted, untagged) scalars are resolved the way Ansible's PyYAML does for
//! YAML 1.1: `yes`/`no`/`on`/`off` are booleans, `0755` is octal, `~` is null, and so on
//! (see [`Node`]). Quoted and block scalars are always strings. Aliases are expanded by
//! copying the anchored node; the merge key `<<` merges mappings in (keys written in the
//! mapping itself win, then earlier merged mappings win over later ones).
//!
//! Hostile input is bounded: the text size is checked before parsing, nesting depth is
//! checked as parser events arrive (the tree is built with an explicit stack, never by
//! recursion), and alias expansion is charged against [`Limits::max_nodes`] (nodes) and
//! [`Limits::max_bytes`] (scalar text) before anything is copied. Duplicate keys, unknown
//! tags and non-scalar keys are refused rather than guessed at.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Tag};
use serde_json::Value;

/// A position in the source text. Both `line` and `col` count from 1; `col` counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mark {
    /// Line number, from 1.
    pub line: usize,
    /// Column number (in characters), from 1.
    pub col: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// The value of a YAML node, after YAML 1.1 (PyYAML) scalar resolution.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// `~`, `null`, `Null`, `NULL`, or an empty plain scalar.
    Null,
    /// `yes`/`no`/`true`/`false`/`on`/`off` in lower, Title or UPPER case (not `y`/`n`).
    Bool(bool),
    /// Decimal (`1_000`), hex (`0x1F`), octal (`0o17`, `017`) or binary (`0b101`) within `i64`.
    Int(i64),
    /// `1.5`, `-2.0e+3`, `.5`, `1.`, `.inf`, `-.inf`, `.nan` (PyYAML needs a `.` and a signed exponent).
    Float(f64),
    /// Any other scalar, and every quoted, literal (`|`) or folded (`>`) scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Yaml>),
    /// A mapping, in document order (merged-in entries first). Keys are scalars and unique.
    Map(Vec<(Yaml, Yaml)>),
}

/// A node together with where it starts in the source.
///
/// A node copied from an alias carries the alias's mark at its top level; its
/// descendants keep the marks of the anchored original.
#[derive(Clone, Debug, PartialEq)]
pub struct Yaml {
    /// The node's value.
    pub node: Node,
    /// Where the node starts (for a collection, where it opens; for a block mapping, its first key).
    pub mark: Mark,
}

/// Bounds on what a document may cost to load.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum input size in bytes; also the cap on scalar text after alias expansion.
    pub max_bytes: usize,
    /// Maximum nesting of sequences and mappings (aliases included). Code walking the
    /// tree (including `Drop` and [`Yaml::to_json`]) recurses once per level, so keep it modest.
    pub max_depth: usize,
    /// Maximum number of nodes in the whole stream, counting every node copied by an alias.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 20,
            max_depth: 64,
            max_nodes: 200_000,
        }
    }
}

/// Why a YAML stream was refused. Each variant's fields are the values its message names
/// (`mark`: where, `limit`: the limit crossed).
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The parser rejected the text.
    #[error("{mark}: {message}")]
    Syntax { mark: Mark, message: String },
    /// The text is over [`Limits::max_bytes`], or its scalar text is once aliases are expanded.
    #[error("document is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// Sequences and mappings nest deeper than [`Limits::max_depth`] (or than the parser's own
    /// limit of 255 flow levels, whichever is lower).
    #[error("{mark}: nesting deeper than {limit} levels")]
    TooDeep { mark: Mark, limit: usize },
    /// More than [`Limits::max_nodes`] nodes, counting the copies aliases make.
    #[error("{mark}: document expands to more than {limit} nodes (aliases included)")]
    TooManyNodes { mark: Mark, limit: usize },
    /// A key appears twice in one mapping (`1` and `"1"` count as the same key).
    #[error("{mark}: duplicate key `{key}` (first at {first})")]
    DuplicateKey {
        mark: Mark,
        key: String,
        first: Mark,
    },
    /// An alias names an anchor that is not defined (earlier in the same document).
    #[error("{mark}: alias to an unknown anchor")]
    UnknownAnchor { mark: Mark },
    /// Valid YAML that this loader refuses: unknown tags, non-scalar keys, bad merges.
    #[error("{mark}: {message}")]
    Unsupported { mark: Mark, message: String },
}

use YamlError as E;
type Res<T = ()> = Result<T, YamlError>;

/// The parser fails with this message past 255 nested flow collections.
const FLOW_DEPTH_MESSAGE: &str = "recursion limit exceeded";
const FLOW_DEPTH_LIMIT: usize = 255;
const UNKNOWN_ANCHOR_MESSAGE: &str = "while parsing node, found unknown anchor";

/// Parses a YAML stream into one tree per document; empty input gives an empty `Vec`.
///
/// # Errors
/// See [`YamlError`]; the first problem found is returned.
pub fn parse(text: &str, limits: &Limits) -> Result<Vec<Yaml>, YamlError> {
    if text.len() > limits.max_bytes {
        return Err(E::TooLarge {
            size: text.len(),
            limit: limits.max_bytes,
        });
    }
    let mut b = Builder {
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        made: Cost::default(),
        kept: Cost::default(),
        docs: Vec::new(),
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| scan_error(&e, limits))?;
        b.event(event, mark_of(&span.start))?;
    }
    Ok(b.docs)
}

impl Yaml {
    /// Converts to JSON. Mapping keys that are not strings are rendered (`1` -> `"1"`,
    /// `true` -> `"true"`, null -> `"null"`). Non-finite floats become the strings `"inf"`,
    /// `"-inf"` and `"nan"` (what Ansible prints for them), since JSON has no such numbers.
    #[must_use]
    pub fn to_json(&self) -> Value {
        node_json(&self.node)
    }

    /// The text of a string node.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match &self.node {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a mapping node.
    #[must_use]
    pub fn as_map(&self) -> Option<&[(Yaml, Yaml)]> {
        match &self.node {
            Node::Map(pairs) => Some(pairs),
            _ => None,
        }
    }

    /// The items of a sequence node.
    #[must_use]
    pub fn as_seq(&self) -> Option<&[Yaml]> {
        match &self.node {
            Node::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The value under the string key `key`, if this is a mapping that has it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The node's type for error messages: "null", "boolean", "integer", "float",
    /// "string", "list" or "mapping".
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self.node {
            Node::Null => "null",
            Node::Bool(_) => "boolean",
            Node::Int(_) => "integer",
            Node::Float(_) => "float",
            Node::Str(_) => "string",
            Node::Seq(_) => "list",
            Node::Map(_) => "mapping",
        }
    }
}

fn node_json(node: &Node) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::from(*i),
        Node::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Value::String(float_text(*f)), Value::Number),
        Node::Str(s) => Value::String(s.clone()),
        Node::Seq(items) => Value::Array(items.iter().map(Yaml::to_json).collect()),
        Node::Map(pairs) => Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (key_text(&k.node), v.to_json()))
                .collect(),
        ),
    }
}

fn mark_of(m: &Marker) -> Mark {
    Mark {
        line: m.line(),
        col: m.col() + 1,
    }
}

fn scan_error(e: &ScanError, limits: &Limits) -> YamlError {
    let mark = mark_of(e.marker());
    match e.info() {
        FLOW_DEPTH_MESSAGE => E::TooDeep {
            mark,
            limit: limits.max_depth.min(FLOW_DEPTH_LIMIT),
        },
        UNKNOWN_ANCHOR_MESSAGE => E::UnknownAnchor { mark },
        info => E::Syntax {
            mark,
            message: info.to_string(),
        },
    }
}

/// What a subtree costs: its node count, its scalar bytes, and its collection height.
#[derive(Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    bytes: usize,
    height: usize,
}

impl Cost {
    fn leaf(bytes: usize) -> Cost {
        Cost {
            nodes: 1,
            bytes,
            height: 0,
        }
    }

    fn add(&mut self, other: Cost) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.height = self.height.max(other.height);
    }
}

/// An open sequence or mapping.
struct Frame {
    mark: Mark,
    anchor: usize,
    /// Cost of the collection so far; `height` is that of its tallest child.
    cost: Cost,
    kind: Kind,
}

enum Kind {
    Seq(Vec<Yaml>),
    Map(MapState),
}

#[derive(Default)]
struct MapState {
    entries: Vec<(Yaml, Yaml)>,
    /// A key waiting for its value, and whether it is the merge key `<<`.
    key: Option<(Yaml, bool)>,
    /// Rendered explicit keys, for duplicate detection.
    seen: HashMap<String, Mark>,
    /// Entries from `<<` merges, in order (earlier wins).
    merged: Vec<(Yaml, Yaml)>,
}

impl MapState {
    fn add(&mut self, y: Yaml, merge: bool) -> Res {
        let Some((key, is_merge)) = self.key.take() else {
            if matches!(y.node, Node::Seq(_) | Node::Map(_)) {
                let message = format!(
                    "a {} cannot be a mapping key; keys must be scalars",
                    y.kind()
                );
                return Err(E::Unsupported {
                    mark: y.mark,
                    message,
                });
            }
            if !merge {
                let text = key_text(&y.node);
                if let Some(first) = self.seen.get(&text) {
                    return Err(E::DuplicateKey {
                        mark: y.mark,
                        key: text,
                        first: *first,
                    });
                }
                self.seen.insert(text, y.mark);
            }
            self.key = Some((y, merge));
            return Ok(());
        };
        if !is_merge {
            self.entries.push((key, y));
            return Ok(());
        }
        let bad = |mark| E::Unsupported {
            mark,
            message: "the merge key `<<` needs a mapping or a list of mappings".to_string(),
        };
        match y.node {
            Node::Map(pairs) => self.merged.extend(pairs),
            Node::Seq(items) => {
                for item in items {
                    match item.node {
                        Node::Map(pairs) => self.merged.extend(pairs),
                        _ => return Err(bad(item.mark)),
                    }
                }
            }
            _ => return Err(bad(y.mark)),
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<(Yaml, Yaml)> {
        if let Some((key, false)) = self.key.take() {
            let null = Yaml {
                node: Node::Null,
                mark: key.mark,
            };
            self.entries.push((key, null));
        }
        if self.merged.is_empty() {
            return self.entries;
        }
        let mut out = Vec::with_capacity(self.merged.len() + self.entries.len());
        for (k, v) in self.merged {
            if self.seen.insert(key_text(&k.node), k.mark).is_none() {
                out.push((k, v));
            }
        }
        out.extend(self.entries);
        out
    }
}

struct Builder<'l> {
    limits: &'l Limits,
    stack: Vec<Frame>,
    /// Anchored nodes of the current document by parser id, with their cost.
    anchors: HashMap<usize, (Yaml, Cost)>,
    /// Everything produced so far, alias copies included.
    made: Cost,
    /// What the copies kept in `anchors` cost (nested anchors copy the same nodes again).
    kept: Cost,
    docs: Vec<Yaml>,
}

impl Builder<'_> {
    fn event(&mut self, event: Event<'_>, mark: Mark) -> Res {
        match event {
            Event::DocumentStart(_) => self.anchors.clear(),
            Event::Scalar(text, style, anchor, tag) => {
                let cost = Cost::leaf(text.len());
                charge(&mut self.made, cost, self.limits, mark)?;
                let merge = style == ScalarStyle::Plain && tag.is_none() && text == "<<";
                let node = scalar(&text, style, tag.as_deref(), mark)?;
                self.add(Yaml { node, mark }, cost, anchor, merge)?;
            }
            Event::SequenceStart(anchor, tag) => self.open(mark, anchor, tag.as_deref(), false)?,
            Event::MappingStart(anchor, tag) => self.open(mark, anchor, tag.as_deref(), true)?,
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(f) = self.stack.pop() {
                    let node = match f.kind {
                        Kind::Seq(items) => Node::Seq(items),
                        Kind::Map(map) => Node::Map(map.finish()),
                    };
                    let cost = Cost {
                        height: f.cost.height + 1,
                        ..f.cost
                    };
                    self.add(Yaml { node, mark: f.mark }, cost, f.anchor, false)?;
                }
            }
            Event::Alias(id) => {
                let Some((_, cost)) = self.anchors.get(&id) else {
                    return Err(E::UnknownAnchor { mark });
                };
                let cost = *cost;
                if self.stack.len() + cost.height > self.limits.max_depth {
                    return Err(E::TooDeep {
                        mark,
                        limit: self.limits.max_depth,
                    });
                }
                charge(&mut self.made, cost, self.limits, mark)?;
                let mut copy = self.anchors[&id].0.clone();
                copy.mark = mark;
                self.add(copy, cost, 0, false)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn open(&mut self, mark: Mark, anchor: usize, tag: Option<&Tag>, map: bool) -> Res {
        let what = if map { "mapping" } else { "list" };
        if let Some(tag) = tag {
            let name = tag_name(tag);
            let own = if map { "!!map" } else { "!!seq" };
            if name != "!" && name != own {
                return Err(E::Unsupported {
                    mark,
                    message: format!("unsupported tag `{name}` on a {what}"),
                });
            }
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(E::TooDeep {
                mark,
                limit: self.limits.max_depth,
            });
        }
        let cost = Cost::leaf(0);
        charge(&mut self.made, cost, self.limits, mark)?;
        let kind = if map {
            Kind::Map(MapState::default())
        } else {
            Kind::Seq(Vec::new())
        };
        self.stack.push(Frame {
            mark,
            anchor,
            cost,
            kind,
        });
        Ok(())
    }

    /// Places a finished node into the open collection (or as a document root).
    fn add(&mut self, y: Yaml, cost: Cost, anchor: usize, merge: bool) -> Res {
        if anchor != 0 {
            charge(&mut self.kept, cost, self.limits, y.mark)?;
            self.anchors.insert(anchor, (y.clone(), cost));
        }
        let Some(top) = self.stack.last_mut() else {
            self.docs.push(y);
            return Ok(());
        };
        top.cost.add(cost);
        match &mut top.kind {
            Kind::Seq(items) => items.push(y),
            Kind::Map(map) => map.add(y, merge)?,
        }
        Ok(())
    }
}

/// Adds `cost` to `total`, failing if that goes over the node or byte limit.
fn charge(total: &mut Cost, cost: Cost, limits: &Limits, mark: Mark) -> Res {
    total.add(cost);
    if total.nodes > limits.max_nodes {
        return Err(E::TooManyNodes {
            mark,
            limit: limits.max_nodes,
        });
    }
    if total.bytes > limits.max_bytes {
        return Err(E::TooLarge {
            size: total.bytes,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// A tag as written: `!!int` for core-schema tags, `!foo` for local ones, `!` for non-specific.
fn tag_name(tag: &Tag) -> String {
    let full = if tag.handle == "!" {
        format!("!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    };
    match full.strip_prefix("tag:yaml.org,2002:") {
        Some(core) => format!("!!{core}"),
        None => full,
    }
}

fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>, mark: Mark) -> Res<Node> {
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain {
            resolve_plain(text)
        } else {
            Node::Str(text.to_string())
        });
    };
    let name = tag_name(tag);
    let node = match name.as_str() {
        "!" | "!!str" => Some(Node::Str(text.to_string())),
        "!!null" => is_null(text).then_some(Node::Null),
        "!!bool" => parse_bool(text).map(Node::Bool),
        "!!int" => parse_int(text).map(Node::Int),
        "!!float" => parse_float(text)
            .or_else(|| parse_int(text).map(|i| i as f64))
            .map(Node::Float),
        _ => {
            return Err(E::Unsupported {
                mark,
                message: format!("unsupported tag `{name}`"),
            });
        }
    };
    node.ok_or_else(|| {
        let shown: String = text.chars().take(40).collect();
        E::Unsupported {
            mark,
            message: format!("`{shown}` is not a valid {name}"),
        }
    })
}

fn resolve_plain(s: &str) -> Node {
    if is_null(s) {
        Node::Null
    } else if let Some(b) = parse_bool(s) {
        Node::Bool(b)
    } else if let Some(i) = parse_int(s) {
        Node::Int(i)
    } else if let Some(f) = parse_float(s) {
        Node::Float(f)
    } else {
        Node::Str(s.to_string())
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn split_sign(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => s.split_at(1),
        _ => ("", s),
    }
}

/// PyYAML's int forms (plus `0o`), with `_` separators; `None` if not one or out of range.
fn parse_int(s: &str) -> Option<i64> {
    let (sign, body) = split_sign(s);
    let (radix, digits) = if let Some(d) = body.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = body.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o") {
        (8, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, body)
    } else {
        (10, body)
    };
    let valid = digits.chars().all(|c| c == '_' || c.is_digit(radix));
    if !valid || (radix == 10 && !digits.starts_with(|c: char| c.is_ascii_digit())) {
        return None;
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() {
        return None;
    }
    i64::from_str_radix(&format!("{sign}{clean}"), radix).ok()
}

/// PyYAML's float forms: `[-+]?digits.digits?([eE][-+]digits)?`, `.digits…`, `[-+]?.inf`, `.nan`.
fn parse_float(s: &str) -> Option<f64> {
    let (sign, body) = split_sign(s);
    match body {
        ".inf" | ".Inf" | ".INF" => return format!("{sign}inf").parse().ok(),
        ".nan" | ".NaN" | ".NAN" if sign.is_empty() => return Some(f64::NAN),
        _ => {}
    }
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.')?;
    let digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit() || c == b'_');
    let starts_digit = |t: &str| t.starts_with(|c: char| c.is_ascii_digit());
    let int_ok = if int.is_empty() {
        sign.is_empty() && starts_digit(frac)
    } else {
        starts_digit(int) && digits(int)
    };
    let exp_ok = exp.is_none_or(|e| {
        e.len() > 1 && e.starts_with(['-', '+']) && e[1..].bytes().all(|c| c.is_ascii_digit())
    });
    if !(int_ok && digits(frac) && exp_ok) {
        return None;
    }
    let (int, frac, exp) = (
        int.replace('_', ""),
        frac.replace('_', ""),
        exp.unwrap_or("0"),
    );
    format!("{sign}0{int}.{frac}0e{exp}").parse().ok()
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "nan".to_string()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{f:?}")
    }
}

/// A scalar rendered as a JSON object key (and for duplicate detection).
fn key_text(node: &Node) -> String {
    match node {
        Node::Str(s) => s.clone(),
        Node::Null => "null".to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) => float_text(*f),
        Node::Seq(_) | Node::Map(_) => node_json(node).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn one(text: &str) -> Yaml {
        let mut docs = parse(text, &Limits::default()).unwrap();
        assert_eq!(docs.len(), 1, "{text:?}");
        docs.remove(0)
    }

    /// What `text` resolves to as a block mapping value.
    fn value(text: &str) -> Node {
        one(&format!("v: {text}\n")).get("v").unwrap().node.clone()
    }

    /// Checks space-separated `text=expected` cases.
    fn check<T: std::str::FromStr>(cases: &str, node: fn(T) -> Node) {
        for case in cases.split_whitespace() {
            let (text, want) = case.rsplit_once('=').unwrap();
            let want = node(want.parse().ok().unwrap());
            assert_eq!(value(text), want, "{text}");
        }
    }

    /// Checks that each space-separated scalar stays a string.
    fn strings(cases: &str) {
        for text in cases.split_whitespace() {
            assert_eq!(value(text), Node::Str(text.into()), "{text}");
        }
    }

    fn err(text: &str) -> YamlError {
        parse(text, &Limits::default()).unwrap_err()
    }

    fn at(line: usize, col: usize) -> Mark {
        Mark { line, col }
    }

    #[test]
    fn nulls_and_bools() {
        for text in ["~", "null", "Null", "NULL", ""] {
            assert_eq!(value(text), Node::Null, "{text:?}");
        }
        check(
            "yes=true Yes=true YES=true true=true True=true TRUE=true on=true On=true ON=true",
            Node::Bool,
        );
        check(
            "no=false No=false NO=false false=false False=false FALSE=false off=false Off=false OFF=false",
            Node::Bool,
        );
        strings("y n Y N yEs nULL tRUE");
    }

    #[test]
    fn ints() {
        check(
            "0=0 -0=0 42=42 +42=42 -17=-17 1_000=1000 0x1F=31 -0x10=-16 0o17=15 0755=493 0_7=7 00=0 \
             0b101=5 -0b1_0=-2 9223372036854775807=9223372036854775807 \
             -9223372036854775808=-9223372036854775808",
            Node::Int,
        );
        strings("08 0x 0b2 0X1F _1 1_a 9223372036854775808 1:30 12abc + 0o");
    }

    #[test]
    fn floats() {
        check(
            "1.5=1.5 -2.0e+3=-2000 .5=0.5 1.=1 +1_0.2_5=10.25 1.e-2=0.01 6.02E+23=6.02e23 0.0=0 \
             .inf=inf +.Inf=inf -.INF=-inf",
            Node::Float,
        );
        assert!(matches!(value(".NaN"), Node::Float(f) if f.is_nan()));
        // PyYAML needs a dot and a signed exponent; `-.5` and `-.nan` are strings too.
        strings("1e3 1.0e3 -.5 -.nan . ._5 1.2.3 .infinity 1.0e+");
    }

    #[test]
    fn quoted_and_block_scalars_stay_strings() {
        let y = one("a: \"yes\"\nb: '0755'\nc: |\n  true\nd: >\n  1.5\ne: ''\nf: 'null'\n");
        let want =
            json!({"a": "yes", "b": "0755", "c": "true\n", "d": "1.5\n", "e": "", "f": "null"});
        assert_eq!(y.to_json(), want);
    }

    #[test]
    fn explicit_tags() {
        assert_eq!(value("!!str yes"), Node::Str("yes".into()));
        assert_eq!(value("!!int \"0x10\""), Node::Int(16));
        assert_eq!(value("!!float 3"), Node::Float(3.0));
        assert_eq!(value("!!bool 'off'"), Node::Bool(false));
        assert_eq!(value("!!null ''"), Node::Null);
        assert_eq!(value("! 12"), Node::Str("12".into()));
        assert_eq!(value("!<tag:yaml.org,2002:int> '7'"), Node::Int(7));
        assert!(
            one("!!map {a: !!seq [1]}")
                .get("a")
                .unwrap()
                .as_seq()
                .is_some()
        );
        let msg = |text| err(text).to_string();
        assert_eq!(msg("a: !!int abc\n"), "1:4: `abc` is not a valid !!int");
        assert_eq!(
            msg("a: !unsafe '{{ x }}'\n"),
            "1:4: unsupported tag `!unsafe`"
        );
        assert_eq!(msg("a: !!binary aGk=\n"), "1:4: unsupported tag `!!binary`");
        assert_eq!(
            msg("a: !!str [1]\n"),
            "1:4: unsupported tag `!!str` on a list"
        );
    }

    #[test]
    fn marks_of_nested_keys() {
        let y = one(
            "# c\nplay:\n  hosts: all\n  tasks:\n    - name: x\n      ping: {data: [1, \"é\", z]}\n",
        );
        assert_eq!(y.mark, at(2, 1));
        let (k, play) = &y.as_map().unwrap()[0];
        assert_eq!((k.mark, play.mark), (at(2, 1), at(3, 3)));
        let (hk, hv) = &play.as_map().unwrap()[0];
        assert_eq!((hk.mark, hv.mark), (at(3, 3), at(3, 10)));
        let tasks = play.get("tasks").unwrap();
        let task = &tasks.as_seq().unwrap()[0];
        assert_eq!((tasks.mark, task.mark), (at(5, 5), at(5, 7)));
        let (pk, ping) = &task.as_map().unwrap()[1];
        assert_eq!((pk.mark, ping.mark), (at(6, 7), at(6, 13)));
        let data = ping.get("data").unwrap();
        assert_eq!(data.mark, at(6, 20));
        let marks: Vec<Mark> = data.as_seq().unwrap().iter().map(|i| i.mark).collect();
        assert_eq!(marks, [at(6, 21), at(6, 24), at(6, 29)]);
        assert_eq!(at(6, 29).to_string(), "6:29");
    }

    #[test]
    fn documents() {
        assert!(parse("", &Limits::default()).unwrap().is_empty());
        assert!(
            parse("# only a comment\n", &Limits::default())
                .unwrap()
                .is_empty()
        );
        let docs = parse("a: 1\n---\n- x\n...\n--- 3\n---\n", &Limits::default()).unwrap();
        let values: Vec<Value> = docs.iter().map(Yaml::to_json).collect();
        assert_eq!(
            values,
            [json!({"a": 1}), json!(["x"]), json!(3), Value::Null]
        );
        assert_eq!(docs[1].mark, at(3, 1));
        // Anchors do not carry over into the next document.
        assert!(matches!(
            err("a: &x 1\n---\nb: *x\n"),
            E::UnknownAnchor { .. }
        ));
    }

    #[test]
    fn to_json_and_accessors() {
        let y = one("1: a\ntrue: b\n~: c\n1.5: d\nf: [.inf, -.inf, .nan, 2.5]\ns: 'x'\n");
        let want = json!({"1": "a", "true": "b", "null": "c", "1.5": "d",
            "f": ["inf", "-inf", "nan", 2.5], "s": "x"});
        assert_eq!(y.to_json(), want);
        assert_eq!(y.get("s").unwrap().as_str(), Some("x"));
        assert!(y.get("1").is_none(), "get matches string keys only");
        assert!(y.get("s").unwrap().as_map().is_none());
        let kinds: Vec<&str> = "~ no 1 1.0 x [] {}"
            .split(' ')
            .map(|s| one(s).kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "null", "boolean", "integer", "float", "string", "list", "mapping"
            ]
        );
    }

    #[test]
    fn aliases_and_merge_keys() {
        let y = one(
            "b: &b {x: 1, y: 2}\no: &o {y: 3, z: 4}\nc: *b\nm:\n  <<: [*b, *o]\n  x: 9\nq: {'<<': 1}\n",
        );
        assert_eq!(y.get("c").unwrap().to_json(), json!({"x": 1, "y": 2}));
        assert_eq!(y.get("c").unwrap().mark, at(3, 4));
        assert_eq!(
            y.get("m").unwrap().to_json(),
            json!({"x": 9, "y": 2, "z": 4})
        );
        assert_eq!(y.get("q").unwrap().get("<<").unwrap().node, Node::Int(1));
        assert!(matches!(err("a:\n  <<: 1\n"), E::Unsupported { mark, .. } if mark == at(2, 7)));
    }

    #[test]
    fn error_unknown_anchor() {
        assert!(matches!(err("a: *nope\n"), E::UnknownAnchor { mark } if mark == at(1, 4)));
        // An alias inside its own anchor is not defined yet.
        assert!(matches!(err("a: &x [1, *x]\n"), E::UnknownAnchor { mark } if mark == at(1, 11)));
    }

    #[test]
    fn error_duplicate_and_non_scalar_keys() {
        assert_eq!(
            err("a: 1\nb: 2\n'a': 3\n").to_string(),
            "3:1: duplicate key `a` (first at 1:1)"
        );
        assert!(matches!(err("{1: a, '1': b}"), E::DuplicateKey { .. }));
        let e = err("? [a]\n: b\n").to_string();
        assert_eq!(
            e,
            "1:3: a list cannot be a mapping key; keys must be scalars"
        );
    }

    #[test]
    fn error_syntax_with_mark() {
        let e = err("a: [b\nc: d\n");
        assert!(
            matches!(&e, E::Syntax { mark, .. } if *mark == at(2, 2)),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "2:2: illegal placement of ':' indicator");
        assert!(matches!(err("a: b: c\n"), E::Syntax { mark, .. } if mark == at(1, 5)));
    }

    #[test]
    fn error_too_large() {
        let e = err(&"a".repeat(10 << 20));
        assert!(matches!(e, E::TooLarge { size, limit } if size == 10 << 20 && limit == 4 << 20));
        // Alias expansion is charged for the text it copies.
        let big = format!(
            "a: &a '{}'\nb: [{}]\n",
            "x".repeat(100_000),
            "*a, ".repeat(100)
        );
        assert!(matches!(err(&big), E::TooLarge { .. }));
    }

    #[test]
    fn error_billion_laughs_is_fast() {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = Instant::now();
        let e = err(&text);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(matches!(e, E::TooManyNodes { limit: 200_000, .. }), "{e}");
        let small = Limits {
            max_nodes: 10,
            ..Limits::default()
        };
        let e = parse("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", &small).unwrap_err();
        assert_eq!(
            e.to_string(),
            "1:29: document expands to more than 10 nodes (aliases included)"
        );
    }

    #[test]
    fn error_too_deep_flow() {
        assert!(matches!(
            err(&"[".repeat(100_000)),
            E::TooDeep { limit: 64, .. }
        ));
        let text = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(matches!(err(&text), E::TooDeep { mark, limit: 64 } if mark == at(1, 65)));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(&ok, &Limits::default()).is_ok());
        let roomy = Limits {
            max_depth: 1000,
            ..Limits::default()
        };
        let e = parse(&"{a: ".repeat(100_000), &roomy).unwrap_err();
        assert!(matches!(e, E::TooDeep { limit: 255, .. }), "{e}");
    }

    #[test]
    fn error_too_deep_block() {
        let e = err(&format!("{}x\n", "- ".repeat(100_000)));
        assert!(
            matches!(e, E::TooDeep { mark, limit: 64 } if mark == at(1, 129)),
            "{e}"
        );
        let nested: String = (0..2_000)
            .map(|i| format!("{}k:\n", "  ".repeat(i)))
            .collect();
        assert!(matches!(err(&nested), E::TooDeep { mark, .. } if mark == at(65, 129)));
    }

    #[test]
    fn error_too_deep_through_aliases() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let text = format!("a: &a {deep}\nb: {}*a{}\n", "[".repeat(26), "]".repeat(26));
        assert!(matches!(err(&text), E::TooDeep { limit: 64, .. }));
    }
}

/// Property tests: any text loads or is refused without a panic or a stack overflow, what loads
/// stays within the limits, and JSON (a subset of YAML) reads back as the same value.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "- ",
        ": ",
        ":",
        "\n",
        "  ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: ",
        "!!str ",
        "!!int ",
        "!!map ",
        "!!seq ",
        "!x ",
        "? ",
        "'",
        "\"",
        "\\",
        "|",
        ">-",
        "# c",
        "---\n",
        "...\n",
        "~",
        "yes",
        "Off",
        "0x1F",
        "0o7",
        "0755",
        ".inf",
        "-.5",
        "1.5e+3",
        "k",
        "é",
        "\t",
        "%YAML 1.1\n",
        "%TAG ! tag:x,2000:\n",
    ];

    /// Nodes and depth of a tree, walked without recursion.
    fn size(docs: &[Yaml]) -> (usize, usize) {
        let (mut nodes, mut depth) = (0, 0);
        let mut todo: Vec<(&Yaml, usize)> = docs.iter().map(|d| (d, 0)).collect();
        while let Some((y, d)) = todo.pop() {
            nodes += 1;
            depth = depth.max(d);
            match &y.node {
                Node::Seq(items) => todo.extend(items.iter().map(|i| (i, d + 1))),
                Node::Map(pairs) => {
                    for (k, v) in pairs {
                        todo.push((k, d + 1));
                        todo.push((v, d + 1));
                    }
                }
                _ => {}
            }
        }
        (nodes, depth)
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(&[1.5, -0.25, 1e-3, 0.0, 12345.678][..]).prop_map(Value::from),
            "(\\PC|[\t\n\"\\\\])*".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(1500))]

        #[test]
        fn fuzz_yaml_never_panics_and_keeps_its_limits(text in rampart_fuzz::text(TOKENS, 60), small in any::<bool>()) {
            let limits = if small {
                Limits { max_bytes: 200, max_depth: 6, max_nodes: 40 }
            } else {
                Limits::default()
            };
            if let Ok(docs) = parse(&text, &limits) {
                let (nodes, depth) = size(&docs);
                prop_assert!(depth <= limits.max_depth, "depth {depth} over {}", limits.max_depth);
                prop_assert!(nodes <= limits.max_nodes, "{nodes} nodes over {}", limits.max_nodes);
                for d in &docs {
                    let _ = d.to_json();
                }
            }
        }

        #[test]
        fn fuzz_yaml_deep_nesting_is_refused_not_overflowed(opens in prop::collection::vec(prop::sample::select(&["[", "{k: ", "- ", "&a [", "[*a, "][..]), 0..3000)) {
            let text = opens.concat();
            match parse(&text, &Limits::default()) {
                Ok(docs) => prop_assert!(size(&docs).1 <= 64),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn prop_json_reads_back_as_itself(value in json()) {
            for text in [serde_json::to_string(&value).unwrap(), serde_json::to_string_pretty(&value).unwrap()] {
                let docs = parse(&text, &Limits::default()).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert_eq!(docs.len(), 1);
                prop_assert_eq!(docs[0].to_json(), value.clone(), "{}", text);
            }
        }
    }
}
