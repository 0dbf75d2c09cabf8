//! Inventories in Ansible's formats: YAML (`all:` with `hosts`, `vars`, `children`) and INI
//! (`[group]`, `[group:vars]`, `[group:children]`, `host key=value`), host ranges such as
//! `web[01:03]` included.
//!
//! Input: the inventory's text. Output: an [`Inventory`]: hosts in file order, groups with their
//! direct hosts and children, and each host's variables merged as Ansible merges them (`all`,
//! then groups from the outermost to the innermost, same depth by name, then the host's own).
//! At most [`MAX_HOSTS`] hosts; a YAML inventory has the playbook loader's size and depth limits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::yaml::{self, Yaml};
use serde_json::{Map, Value};

/// Hosts an inventory may name: ranges expand to 10,000 each, so a few lines could otherwise
/// name millions.
pub const MAX_HOSTS: usize = 100_000;

/// A parsed inventory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Host names in the order they first appear.
    pub hosts: Vec<String>,
    /// Groups by name (`all` and `ungrouped` included).
    pub groups: BTreeMap<String, Group>,
    /// Each host's own variables.
    host_vars: BTreeMap<String, Map<String, Value>>,
}

/// One group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// Hosts listed directly in it.
    pub hosts: BTreeSet<String>,
    /// Its child groups.
    pub children: BTreeSet<String>,
    /// Its variables.
    pub vars: Map<String, Value>,
}

impl Inventory {
    /// Parses YAML or INI: a document whose first meaningful line is a `[section]` or a host
    /// line is INI.
    pub fn parse(text: &str) -> Result<Inventory, String> {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && l != &"---");
        match first {
            Some(l) if l.starts_with('[') || (!l.contains(':') && !l.starts_with('-')) => {
                Inventory::parse_ini(text)
            }
            None => Ok(Inventory::default()),
            _ => Inventory::parse_yaml(text),
        }
    }

    fn group_mut(&mut self, name: &str) -> &mut Group {
        self.groups.entry(name.to_string()).or_default()
    }

    fn add_host(
        &mut self,
        group: &str,
        host: &str,
        vars: Map<String, Value>,
    ) -> Result<(), String> {
        // Every host has a `host_vars` entry, so it is the index of who is known already.
        if !self.host_vars.contains_key(host) {
            if self.hosts.len() >= MAX_HOSTS {
                return Err(format!(
                    "more than {MAX_HOSTS} hosts (host ranges included)"
                ));
            }
            self.hosts.push(host.to_string());
        }
        self.group_mut(group).hosts.insert(host.to_string());
        self.host_vars
            .entry(host.to_string())
            .or_default()
            .extend(vars);
        Ok(())
    }

    /// Parses Ansible's YAML inventory.
    pub fn parse_yaml(text: &str) -> Result<Inventory, String> {
        let docs = yaml::parse(text, &yaml::Limits::default()).map_err(|e| e.to_string())?;
        let mut inv = Inventory::default();
        let Some(doc) = docs.first() else {
            return Ok(inv);
        };
        let top = doc
            .as_map()
            .ok_or("an inventory is a mapping of groups (all: ...)")?;
        for (name, body) in top {
            let name = name.as_str().ok_or("group names are strings")?;
            inv.yaml_group(name, body, 0)?;
            if name != "all" {
                inv.group_mut("all").children.insert(name.to_string());
            }
        }
        inv.finish();
        Ok(inv)
    }

    fn yaml_group(&mut self, name: &str, body: &Yaml, depth: usize) -> Result<(), String> {
        if depth > 32 {
            return Err(format!("group {name}: children nest deeper than 32 levels"));
        }
        self.group_mut(name);
        let Some(entries) = body.as_map() else {
            // `group:` with nothing under it.
            return Ok(());
        };
        for (key, value) in entries {
            match key.as_str() {
                Some("hosts") => {
                    for (host, vars) in value.as_map().unwrap_or_default() {
                        let host = host
                            .as_str()
                            .ok_or_else(|| format!("group {name}: a host name is not a string"))?;
                        let vars = match vars.to_json() {
                            Value::Object(m) => m,
                            Value::Null => Map::new(),
                            other => {
                                return Err(format!(
                                    "host {host}: variables must be a mapping, not {other}"
                                ));
                            }
                        };
                        for expanded in expand_range(host)? {
                            self.add_host(name, &expanded, vars.clone())?;
                        }
                    }
                }
                Some("vars") => match value.to_json() {
                    Value::Object(m) => self.group_mut(name).vars.extend(m),
                    Value::Null => {}
                    other => {
                        return Err(format!("group {name}: vars must be a mapping, not {other}"));
                    }
                },
                Some("children") => {
                    for (child, child_body) in value.as_map().unwrap_or_default() {
                        let child = child
                            .as_str()
                            .ok_or_else(|| format!("group {name}: a child name is not a string"))?;
                        self.group_mut(name).children.insert(child.to_string());
                        self.yaml_group(child, child_body, depth + 1)?;
                    }
                }
                Some(other) => {
                    return Err(format!(
                        "group {name}: unknown key `{other}` (a group has hosts, vars and children)"
                    ));
                }
                None => return Err(format!("group {name}: keys are strings")),
            }
        }
        Ok(())
    }

    /// Parses Ansible's INI inventory.
    pub fn parse_ini(text: &str) -> Result<Inventory, String> {
        let mut inv = Inventory::default();
        // Hosts before any section belong to `ungrouped`.
        let mut section = ("ungrouped".to_string(), "hosts".to_string());
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", n + 1);
            if let Some(header) = line.strip_prefix('[') {
                let header = header
                    .strip_suffix(']')
                    .ok_or_else(|| at(format!("section {line} has no closing ]")))?;
                let (group, kind) = header.split_once(':').unwrap_or((header, "hosts"));
                if !matches!(kind, "hosts" | "vars" | "children") {
                    return Err(at(format!(
                        "section [{header}]: `:{kind}` is not :vars or :children"
                    )));
                }
                section = (group.to_string(), kind.to_string());
                inv.group_mut(group);
                continue;
            }
            let (group, kind) = (&section.0, section.1.as_str());
            match kind {
                "hosts" => {
                    let mut words = split_words(line).map_err(at)?.into_iter();
                    let host = words.next().unwrap_or_default();
                    let mut vars = Map::new();
                    for w in words {
                        let (k, v) = w
                            .split_once('=')
                            .ok_or_else(|| at(format!("`{w}` is not key=value")))?;
                        vars.insert(k.to_string(), ini_value(v));
                    }
                    for expanded in expand_range(&host).map_err(at)? {
                        inv.add_host(group, &expanded, vars.clone()).map_err(at)?;
                    }
                }
                "vars" => {
                    let (k, v) = line
                        .split_once('=')
                        .ok_or_else(|| at(format!("`{line}` is not key=value")))?;
                    inv.group_mut(group)
                        .vars
                        .insert(k.trim().to_string(), ini_value(v.trim()));
                }
                _ => {
                    inv.group_mut(group).children.insert(line.to_string());
                    inv.group_mut(line);
                }
            }
        }
        inv.finish();
        Ok(inv)
    }

    /// Every group belongs to `all`; hosts in no group but `all` are `ungrouped`.
    fn finish(&mut self) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        let children: BTreeSet<String> = self
            .groups
            .values()
            .flat_map(|g| g.children.iter().cloned())
            .collect();
        for name in names {
            if name != "all" && !children.contains(&name) {
                self.group_mut("all").children.insert(name);
            }
        }
        let grouped: BTreeSet<String> = self
            .groups
            .iter()
            .filter(|(n, _)| *n != "all" && *n != "ungrouped")
            .flat_map(|(_, g)| g.hosts.iter().cloned())
            .collect();
        let loose: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| !grouped.contains(*h))
            .cloned()
            .collect();
        for h in loose {
            self.group_mut("ungrouped").hosts.insert(h);
        }
        // `all` reaches its hosts through its children.
        self.group_mut("all").hosts.clear();
        let ungrouped_empty = self
            .groups
            .get("ungrouped")
            .is_none_or(|g| g.hosts.is_empty());
        if !ungrouped_empty {
            self.group_mut("all").children.insert("ungrouped".into());
        }
    }

    /// Groups with their depth below `all` (the deepest path), for variable precedence.
    fn depths(&self) -> BTreeMap<&str, usize> {
        let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
        let mut frontier = vec![("all", 0usize)];
        // Bounded: a depth never exceeds the number of groups (cycles stop there).
        while let Some((g, d)) = frontier.pop() {
            if d > self.groups.len() || depth.get(g).is_some_and(|&old| old >= d) {
                continue;
            }
            depth.insert(g, d);
            if let Some(group) = self.groups.get(g) {
                frontier.extend(group.children.iter().map(|c| (c.as_str(), d + 1)));
            }
        }
        depth
    }

    /// The groups a host belongs to, directly or through children, `all` included.
    pub fn groups_of(&self, host: &str) -> BTreeSet<String> {
        let mut member: BTreeSet<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.hosts.contains(host))
            .map(|(n, _)| n.clone())
            .collect();
        // Parents of member groups, until nothing changes (bounded by the group count).
        for _ in 0..=self.groups.len() {
            let parents: BTreeSet<String> = self
                .groups
                .iter()
                .filter(|(_, g)| g.children.iter().any(|c| member.contains(c)))
                .map(|(n, _)| n.clone())
                .collect();
            let before = member.len();
            member.extend(parents);
            if member.len() == before {
                break;
            }
        }
        member.insert("all".into());
        member
    }

    /// A host's variables: `all`, then its groups from the outermost to the innermost (the
    /// same depth by name), then its own.
    pub fn host_vars(&self, host: &str) -> Map<String, Value> {
        let depths = self.depths();
        let mut groups: Vec<String> = self.groups_of(host).into_iter().collect();
        groups.sort_by_key(|g| (depths.get(g.as_str()).copied().unwrap_or(0), g.clone()));
        let mut vars = Map::new();
        for g in groups {
            if let Some(group) = self.groups.get(&g) {
                vars.extend(group.vars.clone());
            }
        }
        vars.extend(self.host_vars.get(host).cloned().unwrap_or_default());
        vars
    }

    /// The hosts an Ansible host pattern selects ([`select`]); none for a pattern that does
    /// not evaluate.
    pub fn hosts_of(&self, pattern: &str) -> Vec<String> {
        select(pattern, &self.hosts, &self.group_hosts()).map_or_else(|_| Vec::new(), |s| s.hosts)
    }

    /// What a run against this inventory sees of it: `groups` and every host's variables;
    /// `host` is left empty for the caller to set per host (`InventoryView { host, ..view }`).
    pub fn view(&self) -> InventoryView {
        InventoryView {
            host: String::new(),
            groups: self.group_hosts(),
            hostvars: self
                .hosts
                .iter()
                .map(|h| (h.clone(), self.host_vars(h)))
                .collect(),
            every_play: false,
        }
    }

    /// Every group with the hosts in it (directly or through child groups), each list in
    /// inventory order; `all` (every host) and `ungrouped` included.
    ///
    /// Inventory order is first appearance ([`Inventory::hosts`]); Ansible lists a group's
    /// own hosts first, then each child's, which differs where a child's host appeared earlier.
    pub fn group_hosts(&self) -> BTreeMap<String, Vec<String>> {
        let position: HashMap<&str, usize> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.as_str(), i))
            .collect();
        let mut out = BTreeMap::new();
        for name in self.groups.keys() {
            if name == "all" {
                continue;
            }
            // The group and its descendants, each visited once (cycles end there).
            let mut seen: BTreeSet<&str> = BTreeSet::new();
            let mut todo = vec![name.as_str()];
            let mut members: BTreeSet<usize> = BTreeSet::new();
            while let Some(g) = todo.pop() {
                if !seen.insert(g) {
                    continue;
                }
                if let Some(group) = self.groups.get(g) {
                    members.extend(
                        group
                            .hosts
                            .iter()
                            .filter_map(|h| position.get(h.as_str()).copied()),
                    );
                    todo.extend(group.children.iter().map(String::as_str));
                }
            }
            let hosts = members.into_iter().map(|i| self.hosts[i].clone()).collect();
            out.insert(name.clone(), hosts);
        }
        out.insert("all".to_string(), self.hosts.clone());
        out.entry("ungrouped".to_string()).or_default();
        out
    }
}

/// Longest host pattern [`select`] takes, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Most terms one host pattern may have.
pub const MAX_PATTERN_TERMS: usize = 256;

/// Compiled size of one term's regex (or glob), and of its lazy DFA, in bytes: a `~` term is
/// the user's regex, so a few characters such as `\w{1000}{1000}` must not take the memory.
const TERM_REGEX_SIZE: usize = 1 << 20;

/// The part of an inventory one host's run sees: its name there (`inventory_hostname`), every
/// group with its hosts (`groups`) and every host's inventory variables (`hostvars`; the
/// host's own are also its variables, below play vars).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InventoryView {
    /// This host's name in the inventory.
    pub host: String,
    /// Each group's hosts in inventory order, `all` and `ungrouped` included.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Each host's variables from the inventory (groups and host merged).
    pub hostvars: BTreeMap<String, Map<String, Value>>,
    /// Every play runs on the host whatever its `hosts` pattern says: the controller's
    /// environment picked the hosts. `false` (`rampart run -i`): a play whose pattern does not
    /// select the host is skipped, as Ansible does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub every_play: bool,
}

/// The largest inventory view a run takes, as JSON.
pub const MAX_INVENTORY_VIEW: usize = 8 << 20;

impl InventoryView {
    /// Checks a view from the network or a journal: the host is in it, each group's hosts
    /// have variables, names are non-empty and without control characters.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |n: &str| n.is_empty() || n.len() > 255 || n.chars().any(char::is_control);
        if bad(&self.host) {
            return Err(format!("bad inventory host name {:?}", self.host));
        }
        if !self.hostvars.contains_key(&self.host) {
            return Err(format!(
                "the inventory view has no variables for its own host {:?}",
                self.host
            ));
        }
        let all = self
            .groups
            .get("all")
            .ok_or("the inventory view has no group `all`")?;
        if !all.contains(&self.host) {
            return Err(format!("host {:?} is not in the group `all`", self.host));
        }
        for (g, hosts) in &self.groups {
            if bad(g) {
                return Err(format!("bad inventory group name {g:?}"));
            }
            if let Some(h) = hosts.iter().find(|h| !self.hostvars.contains_key(*h)) {
                return Err(format!(
                    "group {g:?} names host {h:?}, which has no variables"
                ));
            }
        }
        if let Some(h) = self.hostvars.keys().find(|h| bad(h)) {
            return Err(format!("bad inventory host name {h:?}"));
        }
        Ok(())
    }

    /// Each host's `group_names`: the groups it is in, sorted, without `all` (Ansible keeps
    /// `ungrouped` in them); one pass over the groups.
    pub fn all_group_names(&self) -> BTreeMap<&str, Vec<String>> {
        let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (g, hosts) in self.groups.iter().filter(|(g, _)| *g != "all") {
            for h in hosts {
                let names = out.entry(h.as_str()).or_default();
                // A host listed twice in one group is one membership.
                if names.last() != Some(g) {
                    names.push(g.clone());
                }
            }
        }
        out
    }
}

/// The port of a host's agent when its variables give none.
pub const DEFAULT_AGENT_PORT: u16 = 7420;

/// Where a host's agent listens (`HOST:PORT`), from its variables: `rampart_agent`, else
/// `ansible_host` (else the inventory name) and `rampart_agent_port` (else
/// [`DEFAULT_AGENT_PORT`]). A string or a number is taken as written.
pub fn agent_addr(host: &str, vars: &Map<String, Value>) -> String {
    let text = |k: &str| match vars.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(a) = text("rampart_agent") {
        return a;
    }
    let h = text("ansible_host").unwrap_or_else(|| host.to_string());
    let port = text("rampart_agent_port").unwrap_or_else(|| DEFAULT_AGENT_PORT.to_string());
    format!("{h}:{port}")
}

/// What a host pattern selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The hosts, without duplicates: the plain terms' hosts in the order of the terms, less
    /// what `&` and `!` terms removed.
    pub hosts: Vec<String>,
    /// Terms that matched nothing (Ansible warns about them), as written (`!web9`, `db[0]`).
    pub unmatched: Vec<String>,
}

/// Selects hosts with an Ansible host pattern (`hosts:` of a play, `--limit`), as ansible-core
/// 2.19's inventory manager does, from `all` (every host, in inventory order) and `groups`
/// (as [`Inventory::group_hosts`] gives them).
///
/// Implemented:
/// - terms separated by `,`, or, without a comma, by `:` and whitespace outside `[...]`; a
///   pattern that is one address (`host:port`, `[host]:port`, an IPv6 address) is one term;
///   a YAML list of patterns is the caller's to join with `,`;
/// - plain terms first (a union in the order given), then `&term` (intersection), then
///   `!term` (exclusion), wherever they appear; with no plain term, `all` is the start;
/// - a term is `all` or `*` (every host), a host name, an fnmatch glob (`*`, `?`, `[seq]`,
///   `[!seq]`; case-sensitive, whole name) or `~regex` (anchored at the start only, as
///   Python's `re.match`). The groups whose name matches give their hosts, then the hosts
///   whose name matches are added when no group matched or the term is a regex or has one of
///   `.?*[`;
/// - a subscript on a term that is not a regex: `[i]` (`-1` is the last), `[a:b]` (both ends
///   included), `[a:]`, and the old `[a-b]`, counting the term's hosts as Ansible does: each
///   matching group's, then each matching host, duplicates included. `[:b]` is not one
///   (Ansible reads it as a glob).
///
/// Not implemented: `@file` limits (a term starting with `@` is an `Err`), the implicit
/// `localhost` (unmatched unless the inventory has it), warnings (the caller reads
/// [`Selection::unmatched`]) and `host_pattern_mismatch`. Order differs from Ansible's where
/// it walks groups: it lists a group's own hosts, then each child's, and takes the groups one
/// term matches in the order they were created; here a group's hosts are in inventory order
/// and the groups in the order of their first host in `all`. `~` regexes are the `regex`
/// crate's syntax, which has no look-around or backreferences.
///
/// As in Ansible, an empty pattern (or one of only `&`/`!` terms) starts from every host: a
/// caller that must not select everything by accident refuses an empty pattern itself.
///
/// Errors (naming the term): a pattern over [`MAX_PATTERN_LEN`] bytes or [`MAX_PATTERN_TERMS`]
/// terms, an invalid or too large regex, a `[i]` subscript outside the term's hosts, a bare
/// `&` or `!` (which Ansible fails on too).
pub fn select(
    pattern: &str,
    all: &[String],
    groups: &BTreeMap<String, Vec<String>>,
) -> Result<Selection, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "host pattern of {} bytes: at most {MAX_PATTERN_LEN} are allowed; name a group \
             instead of listing many hosts",
            pattern.len()
        ));
    }
    let terms = split_pattern(pattern);
    if terms.len() > MAX_PATTERN_TERMS {
        return Err(format!(
            "host pattern with {} terms: at most {MAX_PATTERN_TERMS} are allowed; name a group \
             instead of listing many hosts",
            terms.len()
        ));
    }
    if let Some(t) = terms.iter().find(|t| t.starts_with('@')) {
        return Err(format!(
            "host pattern term `{t}`: `@file` limits are not supported; list the hosts in \
             the pattern or put them in a group"
        ));
    }
    if let Some(t) = terms.iter().find(|t| matches!(**t, "&" | "!")) {
        return Err(format!(
            "host pattern term `{t}` has no name after it: write `{t}group` or `{t}host`, \
             without a space"
        ));
    }
    let mut plain: Vec<&str> = terms
        .iter()
        .copied()
        .filter(|t| !t.starts_with(['&', '!']))
        .collect();
    if plain.is_empty() {
        plain.push("all");
    }
    let universe = Universe::new(all, groups);
    let mut unmatched = Vec::new();
    let mut hosts: Vec<&str> = Vec::new();
    let mut chosen: HashSet<&str> = HashSet::new();
    for term in plain {
        let (found, matched) = universe.term(term, true)?;
        if !matched && !unmatched.iter().any(|u| u == term) {
            unmatched.push(term.to_string());
        }
        for h in found {
            if chosen.insert(h) {
                hosts.push(h);
            }
        }
    }
    for prefix in ['&', '!'] {
        for term in terms.iter().filter(|t| t.starts_with(prefix)) {
            let (found, matched) = universe.term(&term[1..], false)?;
            if !matched && !unmatched.iter().any(|u| u == term) {
                unmatched.push(term.to_string());
            }
            let found: HashSet<&str> = found.into_iter().collect();
            hosts.retain(|h| found.contains(h) == (prefix == '&'));
        }
    }
    Ok(Selection {
        hosts: hosts.into_iter().map(str::to_string).collect(),
        unmatched,
    })
}

/// The hosts and groups a pattern is evaluated against, indexed.
struct Universe<'a> {
    all: &'a [String],
    /// Each host's position in `all`.
    position: HashMap<&'a str, usize>,
    /// Groups in the order of their first host in `all` (empty ones last, by name).
    groups: Vec<(&'a str, &'a [String])>,
}

impl<'a> Universe<'a> {
    fn new(all: &'a [String], groups: &'a BTreeMap<String, Vec<String>>) -> Universe<'a> {
        let mut position = HashMap::with_capacity(all.len());
        for (i, h) in all.iter().enumerate() {
            position.entry(h.as_str()).or_insert(i);
        }
        let mut ordered: Vec<(&str, &[String])> = groups
            .iter()
            .map(|(name, hosts)| (name.as_str(), hosts.as_slice()))
            .collect();
        let first = |hosts: &[String]| {
            hosts
                .iter()
                .filter_map(|h| position.get(h.as_str()).copied())
                .min()
                .unwrap_or(usize::MAX)
        };
        // Stable: the same first host (or none) keeps the name order.
        ordered.sort_by_cached_key(|(_, hosts)| first(hosts));
        Universe {
            all,
            position,
            groups: ordered,
        }
    }

    /// One term without its `&`/`!`: its hosts, and whether it matched a group or a host.
    /// `plain`: a term without `&`/`!`, which is the host of that name if there is one, before
    /// any group (Ansible looks the term up as written, prefix included).
    fn term(&self, term: &str, plain: bool) -> Result<(Vec<&'a str>, bool), String> {
        if let Some(&i) = self.position.get(term).filter(|_| plain) {
            return Ok((vec![self.all[i].as_str()], true));
        }
        let (expr, subscript) = split_subscript(term);
        let (mut hosts, matched) = self.enumerate(expr, term)?;
        if let Some(sub) = subscript {
            hosts = apply_subscript(hosts, sub, term)?;
        }
        let mut taken: HashSet<&str> = HashSet::new();
        hosts.retain(|h| taken.insert(h));
        Ok((hosts, matched))
    }

    /// The hosts of the groups `expr` names, then the hosts it names, duplicates kept: as in
    /// Ansible, a subscript counts them (`*[1:]` drops the first host of `all`, and the same
    /// host comes back from a later group or from the host names).
    fn enumerate(&self, expr: &str, term: &str) -> Result<(Vec<&'a str>, bool), String> {
        if expr == "all" {
            return Ok((self.all.iter().map(String::as_str).collect(), true));
        }
        let matcher = Matcher::new(expr, term)?;
        let mut hosts: Vec<&'a str> = Vec::new();
        let mut any_group = false;
        for (name, members) in &self.groups {
            if matcher.matches(name) {
                any_group = true;
                hosts.extend(members.iter().map(String::as_str));
            }
        }
        if !any_group || expr.starts_with('~') || expr.contains(['.', '?', '*', '[']) {
            hosts.extend(
                self.all
                    .iter()
                    .map(String::as_str)
                    .filter(|h| matcher.matches(h)),
            );
        }
        let matched = any_group || !hosts.is_empty();
        Ok((hosts, matched))
    }
}

/// A term's name test: a `~regex` or an fnmatch glob, compiled with a size limit.
enum Matcher {
    Regex(regex::Regex),
    /// A glob with a `[seq]` that can match no character.
    Nothing,
}

impl Matcher {
    fn new(expr: &str, term: &str) -> Result<Matcher, String> {
        let (source, what) = match expr.strip_prefix('~') {
            Some(re) => (format!("^(?:{re})"), "regex"),
            None => match glob_to_regex(expr) {
                Some(re) => (re, "glob"),
                None => return Ok(Matcher::Nothing),
            },
        };
        regex::RegexBuilder::new(&source)
            .size_limit(TERM_REGEX_SIZE)
            .dfa_size_limit(TERM_REGEX_SIZE)
            .build()
            .map(Matcher::Regex)
            .map_err(|e| {
                let why = e.to_string();
                let why = why.lines().last().unwrap_or("unknown error").trim();
                if what == "glob" {
                    return format!("host pattern term `{term}`: {why}; shorten the glob");
                }
                format!(
                    "host pattern term `{term}`: invalid regular expression ({why}); correct it \
                     (the `regex` crate's syntax: no look-around or backreferences; and in a \
                     pattern without `,`, a `:` splits terms)"
                )
            })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Regex(re) => re.is_match(name),
            Matcher::Nothing => false,
        }
    }
}

/// An fnmatch glob as an anchored regex: `*`, `?`, `[seq]` and `[!seq]` (with `a-z` ranges;
/// a `[` without its `]` is a `[`), everything else literal. `None`: a `[seq]` matches no
/// character (only reversed ranges), so the glob matches nothing.
fn glob_to_regex(glob: &str) -> Option<String> {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::from("(?s)^(?:");
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                // The set's `]`: a `]` first (after `!`) is a member, not the end.
                let mut j = i + 1;
                if chars.get(j) == Some(&'!') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                match chars[j.min(chars.len())..].iter().position(|&c| c == ']') {
                    None => out.push_str(r"\["),
                    Some(len) => {
                        let end = j + len;
                        out.push_str(&glob_set(&chars[i + 1..end])?);
                        i = end;
                    }
                }
            }
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
        i += 1;
    }
    out.push_str(")$");
    Some(out)
}

/// The inside of a glob's `[...]` as a regex class, every member escaped.
fn glob_set(set: &[char]) -> Option<String> {
    let (negated, set) = match set.split_first() {
        Some(('!', rest)) => (true, rest),
        _ => (false, set),
    };
    let mut class = String::new();
    let mut k = 0;
    while k < set.len() {
        if set.get(k + 1) == Some(&'-') && k + 2 < set.len() {
            let (a, b) = (set[k], set[k + 2]);
            // Python drops a reversed range such as `z-a`.
            if a <= b {
                class.push_str(&format!("\\x{{{:x}}}-\\x{{{:x}}}", a as u32, b as u32));
            }
            k += 3;
        } else {
            class.push_str(&format!("\\x{{{:x}}}", set[k] as u32));
            k += 1;
        }
    }
    match (class.is_empty(), negated) {
        (true, true) => Some(".".to_string()),
        (true, false) => None,
        (false, true) => Some(format!("[^{class}]")),
        (false, false) => Some(format!("[{class}]")),
    }
}

/// A term's trailing subscript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscript {
    /// `[i]`, `[-i]`, or `[a:0]` (Ansible reads an end of 0 as no end).
    Index(i128),
    /// `[a:b]` (`b` included) or `[a:]` (`None`: to the last).
    Range(usize, Option<usize>),
}

/// Splits `name[i]`, `name[a:b]`, `name[a:]` or `name[a-b]` into the name and its subscript;
/// a regex (`~...`) never has one, and `[:b]` or `[x]` are left to the glob.
fn split_subscript(term: &str) -> (&str, Option<Subscript>) {
    if term.starts_with('~') {
        return (term, None);
    }
    let Some(inner) = term.strip_suffix(']') else {
        return (term, None);
    };
    // A subscript holds no `[`, so it opens at the last one; the name before is not empty.
    let Some(open) = inner.rfind('[').filter(|&o| o > 0) else {
        return (term, None);
    };
    let (name, body) = (&term[..open], &inner[open + 1..]);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // Python's ints have no bound; past usize every index is out of range anyway.
    let number = |s: &str| s.parse::<usize>().unwrap_or(usize::MAX);
    if let Some(n) = body.strip_prefix('-').filter(|n| digits(n)) {
        return (name, Some(Subscript::Index(-(number(n) as i128))));
    }
    if digits(body) {
        return (name, Some(Subscript::Index(number(body) as i128)));
    }
    let Some(sep) = body.find([':', '-']) else {
        return (term, None);
    };
    let (start, end) = (&body[..sep], &body[sep + 1..]);
    if !digits(start) || !(end.is_empty() || digits(end)) {
        return (term, None);
    }
    let sub = match end {
        "" => Subscript::Range(number(start), None),
        e if number(e) == 0 => Subscript::Index(number(start) as i128),
        e => Subscript::Range(number(start), Some(number(e))),
    };
    (name, Some(sub))
}

/// A subscript applied to a term's hosts (none stay none); an index outside them is an error.
fn apply_subscript<'a>(
    hosts: Vec<&'a str>,
    sub: Subscript,
    term: &str,
) -> Result<Vec<&'a str>, String> {
    if hosts.is_empty() {
        return Ok(hosts);
    }
    let len = hosts.len();
    match sub {
        Subscript::Index(i) => {
            let at = if i < 0 { len as i128 + i } else { i };
            usize::try_from(at)
                .ok()
                .and_then(|at| hosts.get(at).copied())
                .map(|h| vec![h])
                .ok_or_else(|| {
                    format!(
                        "host pattern term `{term}`: no host at that index (it selects {len} \
                         host{}, indexed from 0, or from -1 for the last)",
                        if len == 1 { "" } else { "s" }
                    )
                })
        }
        Subscript::Range(start, end) => {
            let end = end.map_or(len, |e| e.saturating_add(1).min(len));
            Ok(hosts.get(start..end).map(<[_]>::to_vec).unwrap_or_default())
        }
    }
}

/// Splits a pattern into its terms, trimmed, the empty ones dropped: on `,` if it has one;
/// else kept whole if it is one address (`host:port`, IPv6); else on `:` and whitespace,
/// a complete `[...]` staying in its term (a lone `[` or `]` separates, as in Ansible).
fn split_pattern(pattern: &str) -> Vec<&str> {
    let terms: Vec<&str> = if pattern.contains(',') {
        pattern.split(',').collect()
    } else if is_address(pattern) {
        vec![pattern]
    } else {
        let mut terms = Vec::new();
        let mut start: Option<usize> = None;
        let mut i = 0;
        while let Some(c) = pattern[i..].chars().next() {
            let bracket_end = if c == '[' {
                pattern[i..].find(']').map(|e| i + e + 1)
            } else {
                None
            };
            let separates = c.is_whitespace() || matches!(c, ':' | ']') || c == '[';
            if separates && bracket_end.is_none() {
                if let Some(s) = start.take() {
                    terms.push(&pattern[s..i]);
                }
                i += c.len_utf8();
            } else {
                start.get_or_insert(i);
                i = bracket_end.unwrap_or(i + c.len_utf8());
            }
        }
        if let Some(s) = start {
            terms.push(&pattern[s..]);
        }
        terms
    };
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether the whole pattern is one host address, as Ansible's `parse_address` with ranges
/// reads it: an optional `[...]:port` or `...:port`, then an IPv6 address or a host name
/// (labels of word characters and `-`, not ending in `-` or `_`; `[a:b]` ranges allowed).
fn is_address(pattern: &str) -> bool {
    let mut address = pattern;
    if let Some((inner, _)) = address
        .strip_prefix('[')
        .and_then(|rest| rest.rsplit_once("]:"))
        .filter(|(inner, port)| !inner.is_empty() && is_port(port))
    {
        address = inner;
    }
    if let Some((host, port)) = address.rsplit_once(':')
        && is_port(port)
        && !host_has_bare_colon(host)
    {
        address = host;
    }
    is_ipv6(address) || is_hostname(address)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A `:`, `[` or `]` outside complete `[...]` groups (then `host:port` does not apply).
fn host_has_bare_colon(host: &str) -> bool {
    let mut rest = host;
    while let Some(i) = rest.find([':', '[', ']']) {
        if !rest[i..].starts_with('[') {
            return true;
        }
        match rest[i..].find(']') {
            Some(e) => rest = &rest[i + e + 1..],
            None => return true,
        }
    }
    false
}

/// `[x:y]` or `[x:y:step]` with both ends matching `end`.
fn is_range(s: &str, end: impl Fn(&str) -> bool) -> bool {
    let Some(body) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    let parts: Vec<&str> = body.split(':').collect();
    (parts.len() == 2 || parts.len() == 3)
        && end(parts[0])
        && end(parts[1])
        && parts.get(2).is_none_or(|step| is_port(step))
}

fn is_ipv6(s: &str) -> bool {
    // Each `[x:y]` hexadecimal range stands for one component.
    let mut plain = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            return false;
        };
        let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
        // A range is a whole component: `::[1:3]`, not `::1[0:1]`.
        let alone = (open == 0 && plain.is_empty() || rest[..open].ends_with(':'))
            && (rest.len() == close + 1 || rest[close + 1..].starts_with(':'));
        if !alone || !is_range(&rest[open..=close], hex) {
            return false;
        }
        plain.push_str(&rest[..open]);
        plain.push('0');
        rest = &rest[close + 1..];
    }
    plain.push_str(rest);
    plain.contains(':') && plain.parse::<std::net::Ipv6Addr>().is_ok()
}

fn is_hostname(s: &str) -> bool {
    let range = |r: &str| {
        let letter = |p: &str| p.len() == 1 && p.bytes().all(|b| b.is_ascii_alphabetic());
        is_range(r, letter) || is_range(r, is_port)
    };
    !s.is_empty()
        && s.split('.').all(|label| {
            let mut rest = label;
            let mut count = 0;
            let mut last = ' ';
            while let Some(c) = rest.chars().next() {
                if c == '[' {
                    let Some(close) = rest.find(']') else {
                        return false;
                    };
                    if !range(&rest[..=close]) {
                        return false;
                    }
                    last = ']';
                    rest = &rest[close + 1..];
                } else if c.is_alphanumeric() || c == '_' || (c == '-' && count > 0) {
                    last = c;
                    rest = &rest[c.len_utf8()..];
                } else {
                    return false;
                }
                count += 1;
            }
            count > 0 && last != '-' && last != '_'
        })
}

/// Splits an INI host line on whitespace, keeping quoted values whole.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (None, '#') if cur.is_empty() => break,
            _ => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in `{line}`"));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// An INI value as Ansible reads it: numbers and True/False as such, the rest as text.
fn ini_value(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = v.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match v {
        "True" | "true" => Value::Bool(true),
        "False" | "false" => Value::Bool(false),
        _ => Value::String(v.to_string()),
    }
}

/// Expands a numeric host range (`web[01:03]` → web01, web02, web03).
fn expand_range(host: &str) -> Result<Vec<String>, String> {
    // The `]` that closes the range is the first one after its `[` (`a]b[1:2` has none).
    let Some((open, close)) = host
        .find('[')
        .and_then(|open| Some((open, open + host[open..].find(']')?)))
    else {
        return Ok(vec![host.to_string()]);
    };
    let (from, to) = host[open + 1..close]
        .split_once(':')
        .ok_or_else(|| format!("host range {host} needs [start:end]"))?;
    let (a, b): (u64, u64) = match (from.parse(), to.parse()) {
        (Ok(a), Ok(b)) if a <= b && b - a < 10_000 => (a, b),
        _ => {
            return Err(format!(
                "host range {host} is not [start:end] with start <= end (at most 10000)"
            ));
        }
    };
    let width = if from.starts_with('0') { from.len() } else { 0 };
    Ok((a..=b)
        .map(|i| format!("{}{:0width$}{}", &host[..open], i, &host[close + 1..]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const YAML: &str = "
all:
  vars: {region: eu, port: 7420}
  hosts:
    bastion:
  children:
    prod:
      vars: {env: production}
      children:
        web:
          hosts:
            web[01:03]: {port: 7421}
          vars: {role: web, env: prod-web}
        db:
          hosts:
            db1: {ansible_host: 10.0.0.5}
";

    const INI: &str = "
bastion
[web]
web01 port=7421
web02 port=7421 label='a b'
web03 port=7421
[web:vars]
role=web
env=prod-web
[db]
db1 ansible_host=10.0.0.5
[prod:children]
web
db
[prod:vars]
env=production
[all:vars]
region=eu
port=7420
";

    #[test]
    fn yaml_and_ini_give_the_same_fleet() {
        for text in [YAML, INI] {
            let inv = Inventory::parse(text).unwrap();
            assert_eq!(
                inv.hosts,
                ["bastion", "web01", "web02", "web03", "db1"],
                "{text}"
            );
            assert_eq!(inv.hosts_of("web"), ["web01", "web02", "web03"]);
            assert_eq!(inv.hosts_of("prod"), ["web01", "web02", "web03", "db1"]);
            assert_eq!(inv.hosts_of("all").len(), 5);
            assert_eq!(inv.hosts_of("ungrouped"), ["bastion"]);
            assert_eq!(inv.hosts_of("db1"), ["db1"]);
            // all < prod < web < host.
            let v = inv.host_vars("web02");
            assert_eq!(v["region"], json!("eu"));
            assert_eq!(v["env"], json!("prod-web"));
            assert_eq!(v["role"], json!("web"));
            assert_eq!(v["port"], json!(7421));
            assert_eq!(inv.host_vars("db1")["env"], json!("production"));
            assert_eq!(inv.host_vars("db1")["port"], json!(7420));
            assert_eq!(inv.host_vars("bastion")["region"], json!("eu"));
        }
        assert_eq!(
            Inventory::parse(INI).unwrap().host_vars("web02")["label"],
            json!("a b")
        );
    }

    #[test]
    fn a_host_listed_under_all_and_in_a_group_is_not_ungrouped() {
        let inv = Inventory::parse(
            "all:\n  hosts:\n    h1:\n    h2:\n  children:\n    web:\n      hosts:\n        h1:\n",
        )
        .unwrap();
        assert_eq!(inv.hosts_of("ungrouped"), ["h2"]);
        assert_eq!(inv.hosts_of("web"), ["h1"]);
    }

    #[test]
    fn bad_inventories_say_where() {
        assert!(
            Inventory::parse_ini("[web\nh1")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            Inventory::parse_ini("[web:hosts_extra]\n")
                .unwrap_err()
                .contains(":vars or :children")
        );
        assert!(
            Inventory::parse_ini("[web]\nh1 port\n")
                .unwrap_err()
                .contains("key=value")
        );
        assert!(
            Inventory::parse_yaml("all:\n  hostz: {}\n")
                .unwrap_err()
                .contains("unknown key `hostz`")
        );
        assert!(
            Inventory::parse_ini("[web]\nh[3:1]\n")
                .unwrap_err()
                .contains("start <= end")
        );
    }
}

/// `group_hosts` and `select`, the expected answers checked against ansible-core 2.19.14
/// (`InventoryManager.get_hosts` on the same inventory).
#[cfg(test)]
mod patterns {
    use super::*;

    /// Top-level groups before nested ones, so that first appearance (our inventory order)
    /// is also the order Ansible walks `all` in (its own hosts, then its children's, breadth
    /// first).
    const FLEET: &str = "
bastion
[lb]
lb1
[eu]
lb1
web01
[web]
web01
web02
web03
[db]
db1
db2
[prod:children]
web
db
[empty]
";

    fn pick(pattern: &str) -> Result<Selection, String> {
        let inv = Inventory::parse(FLEET).unwrap();
        select(pattern, &inv.hosts, &inv.group_hosts())
    }

    fn hosts(pattern: &str) -> Vec<String> {
        pick(pattern)
            .unwrap_or_else(|e| panic!("{pattern}: {e}"))
            .hosts
    }

    #[test]
    fn group_hosts_gives_every_group_its_hosts_through_children_in_inventory_order() {
        let g = Inventory::parse(FLEET).unwrap().group_hosts();
        let names: Vec<&str> = g.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["all", "db", "empty", "eu", "lb", "prod", "ungrouped", "web"]
        );
        assert_eq!(
            g["all"],
            ["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"]
        );
        assert_eq!(g["prod"], ["web01", "web02", "web03", "db1", "db2"]);
        assert_eq!(g["eu"], ["lb1", "web01"]);
        assert_eq!(g["ungrouped"], ["bastion"]);
        assert!(g["empty"].is_empty());

        // Inventory order, not name order; grandchildren count; no host: `ungrouped` is there.
        let yaml = "
all:
  children:
    top:
      children:
        mid:
          children:
            leaf:
              hosts:
                zeta:
                alpha:
";
        let g = Inventory::parse(yaml).unwrap().group_hosts();
        assert_eq!(g["top"], ["zeta", "alpha"]);
        assert_eq!(g["mid"], g["top"]);
        assert_eq!(g["all"], ["zeta", "alpha"]);
        assert!(g["ungrouped"].is_empty());
    }

    #[test]
    fn group_hosts_survives_a_cycle_of_children() {
        let g = Inventory::parse("[a:children]\nb\n[b:children]\na\n[a]\nh1\n[b]\nh2\n")
            .unwrap()
            .group_hosts();
        assert_eq!(g["a"], ["h1", "h2"]);
        assert_eq!(g["b"], ["h1", "h2"]);
    }

    /// Where a host of a nested group appears before its siblings (here db1, through `eu`),
    /// Ansible lists a group's own hosts, then each child's (prod: web01 web02 db1), and walks
    /// `all` the same way; `group_hosts` keeps inventory order (first appearance).
    #[test]
    fn group_hosts_keeps_inventory_order_where_ansible_walks_children() {
        let inv = Inventory::parse(
            "[eu]\nweb01\ndb1\n[web]\nweb01\nweb02\n[db]\ndb1\n[prod:children]\nweb\ndb\n",
        )
        .unwrap();
        assert_eq!(inv.group_hosts()["prod"], ["web01", "db1", "web02"]);
        let s = select("prod[1]", &inv.hosts, &inv.group_hosts()).unwrap();
        assert_eq!(s.hosts, ["db1"], "Ansible: web02");
    }

    /// Patterns and what ansible-core 2.19.14 answered: the hosts, and the names it warned
    /// about ("Could not match supplied host pattern"), which are our unmatched terms less
    /// their `&`/`!` and subscript.
    #[test]
    fn select_agrees_with_ansible_core() {
        let rows: &[(&str, &[&str], &[&str])] = &[
            (
                "all",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            (
                "*",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("web", &["web01", "web02", "web03"], &[]),
            ("prod", &["web01", "web02", "web03", "db1", "db2"], &[]),
            ("web*", &["web01", "web02", "web03"], &[]),
            ("web*:&prod", &["web01", "web02", "web03"], &[]),
            ("web*:&prod:!web02", &["web01", "web03"], &[]),
            (
                "!web02",
                &["bastion", "lb1", "web01", "web03", "db1", "db2"],
                &[],
            ),
            ("&eu", &["lb1", "web01"], &[]),
            ("!db:!lb", &["bastion", "web01", "web02", "web03"], &[]),
            ("eu:web", &["lb1", "web01", "web02", "web03"], &[]),
            ("web:eu", &["web01", "web02", "web03", "lb1"], &[]),
            ("web,eu", &["web01", "web02", "web03", "lb1"], &[]),
            ("db,web", &["db1", "db2", "web01", "web02", "web03"], &[]),
            ("web[0]", &["web01"], &[]),
            ("web[-1]", &["web03"], &[]),
            ("web[-3]", &["web01"], &[]),
            ("web[1:2]", &["web02", "web03"], &[]),
            ("web[:2]", &[], &["web[:2]"]),
            ("web[1:]", &["web02", "web03"], &[]),
            ("web[0:0]", &["web01"], &[]),
            ("web[2:1]", &[], &[]),
            ("web[1:0]", &["web02"], &[]),
            ("web[5:9]", &[], &[]),
            ("web[5:]", &[], &[]),
            ("web[1-2]", &["web02", "web03"], &[]),
            ("web[01]", &["web02"], &[]),
            ("~web0[12]", &["web01", "web02"], &[]),
            ("~eb", &[], &["~eb"]),
            ("~(web|db)1", &["db1"], &[]),
            ("~pro", &["web01", "web02", "web03", "db1", "db2"], &[]),
            ("~e", &["lb1", "web01"], &[]),
            ("~.*1", &["lb1", "web01", "db1"], &[]),
            ("!~.*1", &["bastion", "web02", "web03", "db2"], &[]),
            (
                "~[",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            (
                "~",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("w?b0*", &["web01", "web02", "web03"], &[]),
            ("web0[!1]", &["web02", "web03"], &[]),
            ("nosuch", &[], &["nosuch"]),
            ("nosuch:web", &["web01", "web02", "web03"], &["nosuch"]),
            (
                "!nosuch",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &["nosuch"],
            ),
            ("&nosuch", &[], &["nosuch"]),
            ("empty", &[], &[]),
            ("empty:web", &["web01", "web02", "web03"], &[]),
            ("ungrouped", &["bastion"], &[]),
            ("ungr*", &["bastion"], &[]),
            (
                "al*",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("Web", &[], &["Web"]),
            ("~WEB", &[], &["~WEB"]),
            (
                "",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            (
                " web , db ",
                &["web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("web db", &["web01", "web02", "web03", "db1", "db2"], &[]),
            ("web01 : db", &["web01", "db1", "db2"], &[]),
            ("web:22", &[], &["web:22"]),
            ("web01:22", &[], &["web01:22"]),
            ("[web01]:22", &[], &["[web01]:22"]),
            ("db[0]:web[-1]", &["db1", "web03"], &[]),
            ("e*", &["lb1", "web01"], &[]),
            ("d*[1]", &["db2"], &[]),
            ("web*[0]", &["web01"], &[]),
            ("*[1]", &["lb1"], &[]),
            (
                "*b*",
                &["lb1", "web01", "web02", "web03", "db1", "db2", "bastion"],
                &[],
            ),
            ("*b*[0]", &["lb1"], &[]),
            ("e*:web0[23]", &["lb1", "web01"], &["web0"]),
            ("~web0[12]:&eu", &["web01"], &[]),
            ("!~^web", &["bastion", "lb1", "db1", "db2"], &[]),
            ("prod:&eu:!db1", &["web01"], &[]),
            ("&eu:web", &["web01"], &[]),
            ("!web:&prod", &["db1", "db2"], &[]),
            ("web,db:eu", &["web01", "web02", "web03"], &["db:eu"]),
            ("web01,web01,web", &["web01", "web02", "web03"], &[]),
            ("b?stion", &["bastion"], &[]),
            ("[bd]*", &["db1", "db2", "bastion"], &[]),
            (
                "[!w]*",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            (
                "[a-]*",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("[z-a]*", &[], &["[z-a]*"]),
            ("db[-1:]", &["db1"], &[]),
            ("web[-1:2]", &[], &["web[-1:2]"]),
            ("web0[1][0]", &["web01"], &[]),
            ("web[", &["web01", "web02", "web03"], &[]),
            ("web,web[", &["web01", "web02", "web03"], &["web["]),
            (
                "*]",
                &["bastion", "lb1", "web01", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("all:!prod", &["bastion", "lb1"], &[]),
            ("all[0]", &["bastion"], &[]),
            ("bastion[0]", &["bastion"], &[]),
            ("web01", &["web01"], &[]),
            (
                "!web01",
                &["bastion", "lb1", "web02", "web03", "db1", "db2"],
                &[],
            ),
            ("web[1:99999999999999999999]", &["web02", "web03"], &[]),
            (",,web,,", &["web01", "web02", "web03"], &[]),
        ];
        for (pattern, want, warned) in rows {
            let got = pick(pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
            assert_eq!(got.hosts, *want, "hosts of {pattern:?}");
            let names: Vec<&str> = got
                .unmatched
                .iter()
                .map(|t| split_subscript(t.strip_prefix(['&', '!']).unwrap_or(t)).0)
                .collect();
            assert_eq!(
                names, *warned,
                "unmatched of {pattern:?}: {:?}",
                got.unmatched
            );
        }
    }

    #[test]
    fn select_unions_plain_terms_in_their_order_without_duplicates() {
        assert_eq!(hosts("db,web"), ["db1", "db2", "web01", "web02", "web03"]);
        assert_eq!(hosts("eu:web"), ["lb1", "web01", "web02", "web03"]);
        assert_eq!(hosts("web01,web01,web"), ["web01", "web02", "web03"]);
        // A YAML list is the caller's to join with `,`; spaces around terms do not count.
        assert_eq!(hosts(" web , db "), hosts("web,db"));
    }

    #[test]
    fn select_intersects_then_excludes_wherever_the_terms_are() {
        assert_eq!(hosts("web*:&prod:!web02"), ["web01", "web03"]);
        assert_eq!(hosts("!web02:&prod:web*"), ["web01", "web03"]);
        assert_eq!(hosts("!web:&prod"), ["db1", "db2"]);
        assert_eq!(hosts("prod:&eu:!db1"), ["web01"]);
    }

    #[test]
    fn select_with_only_exclusions_or_intersections_starts_from_all() {
        assert_eq!(hosts("!db:!lb"), ["bastion", "web01", "web02", "web03"]);
        assert_eq!(hosts("&eu"), ["lb1", "web01"]);
        // As in Ansible, an empty pattern has no plain term either.
        assert_eq!(hosts("").len(), 7);
    }

    #[test]
    fn select_globs_match_groups_then_hosts() {
        // `*b*`: the groups lb, web and db, then the host bastion (in no such group).
        assert_eq!(
            hosts("*b*"),
            ["lb1", "web01", "web02", "web03", "db1", "db2", "bastion"]
        );
        assert_eq!(hosts("b?stion"), ["bastion"]);
        assert_eq!(hosts("web0[!1]"), ["web02", "web03"]);
        assert_eq!(hosts("[bd]*"), ["db1", "db2", "bastion"]);
        // `al*` matches the group `all`; names are case-sensitive.
        assert_eq!(hosts("al*").len(), 7);
        assert!(hosts("Web").is_empty());
    }

    #[test]
    fn select_regex_is_anchored_at_the_start_only() {
        assert_eq!(hosts("~web0[12]"), ["web01", "web02"]);
        assert_eq!(hosts("~(web|db)1"), ["db1"]);
        assert_eq!(hosts("~pro").len(), 5, "the group prod");
        assert!(hosts("~eb").is_empty());
        assert_eq!(hosts("!~.*1"), ["bastion", "web02", "web03", "db2"]);
    }

    #[test]
    fn select_subscripts_pick_by_position_with_inclusive_ends() {
        assert_eq!(hosts("web[0]"), ["web01"]);
        assert_eq!(hosts("web[-1]"), ["web03"]);
        assert_eq!(hosts("web[-3]"), ["web01"]);
        assert_eq!(hosts("web[1:2]"), ["web02", "web03"]);
        assert_eq!(hosts("web[1:]"), ["web02", "web03"]);
        assert_eq!(hosts("web[0:0]"), ["web01"]);
        assert_eq!(hosts("web[1-2]"), ["web02", "web03"]);
        assert_eq!(hosts("db[0]:web[-1]"), ["db1", "web03"]);
        // Ansible's quirks: an end of 0 is no end; a slice past the end is empty, no error.
        assert_eq!(hosts("web[1:0]"), ["web02"]);
        assert!(hosts("web[5:9]").is_empty());
        assert!(hosts("web[2:1]").is_empty());
        // `[:2]` is not a subscript but a glob (web, then one of `:` or `2`).
        let s = pick("web[:2]").unwrap();
        assert!(s.hosts.is_empty());
        assert_eq!(s.unmatched, ["web[:2]"]);
    }

    #[test]
    fn select_reads_a_plain_term_as_a_host_first_and_a_prefixed_one_as_a_group_first() {
        let yaml = "
all:
  hosts:
    web:
  children:
    svc:
      hosts:
        app1:
      children:
        web:
          hosts:
            w1:
            w2:
";
        let inv = Inventory::parse(yaml).unwrap();
        let groups = inv.group_hosts();
        let sel = |p: &str| select(p, &inv.hosts, &groups).unwrap().hosts;
        assert_eq!(sel("web"), ["web"]);
        assert_eq!(sel("&web"), ["w1", "w2"]);
        assert_eq!(sel("svc:&web"), ["w1", "w2"]);
        // `!web` removes the group, not the host of that name.
        assert_eq!(sel("all:!web"), ["web", "app1"]);
    }

    #[test]
    fn select_subscripts_count_a_terms_hosts_with_their_duplicates() {
        // `*` lists `all`, then every other group's hosts, then the hosts: `[1:]` drops
        // bastion from `all` but not from `ungrouped`; `[7]` is `ungrouped`'s first.
        assert_eq!(
            hosts("*[1:]"),
            ["lb1", "web01", "web02", "web03", "db1", "db2", "bastion"]
        );
        assert_eq!(hosts("*[7]"), ["bastion"]);
        assert_eq!(hosts("*[-1]"), ["db2"]);
        // db's hosts, then the hosts named d*: [db1, db2, db1, db2].
        assert_eq!(hosts("d*[1]"), ["db2"]);
        assert_eq!(hosts("d*[3]"), ["db2"]);
    }

    #[test]
    fn select_reports_terms_that_match_nothing() {
        let s = pick("nosuch:web:!gone:&prod").unwrap();
        assert_eq!(s.hosts, ["web01", "web02", "web03"]);
        assert_eq!(s.unmatched, ["nosuch", "!gone"]);
        // An empty group matched something: it is no unmatched term.
        assert_eq!(pick("empty").unwrap().unmatched, Vec::<String>::new());
        // An index into nothing is nothing, not an error; a term repeated is reported once.
        assert_eq!(pick("nosuch[3]").unwrap().unmatched, ["nosuch[3]"]);
        assert_eq!(pick("nosuch:nosuch").unwrap().unmatched, ["nosuch"]);
    }

    #[test]
    fn select_splits_terms_as_ansible_does() {
        // Without a comma, whitespace separates too.
        assert_eq!(hosts("web db"), hosts("web,db"));
        assert_eq!(hosts("web01 : db"), ["web01", "db1", "db2"]);
        // One address stays one term: `host:port`, IPv6.
        for p in ["web01:22", "[web01]:22", "fe80::1"] {
            assert_eq!(pick(p).unwrap().unmatched, [p], "{p}");
        }
        assert_eq!(split_pattern("fe80::[1:3]"), ["fe80::[1:3]"]);
        assert_eq!(split_pattern("::1[0:1]"), ["1[0:1]"]);
        assert_eq!(split_pattern("a[1:3]:b"), ["a[1:3]", "b"]);
        assert_eq!(split_pattern("web[:db"), ["web", "db"]);
        assert_eq!(split_pattern(",,web,,"), ["web"]);
        // `~[` is the regex `~` (the lone `[` separates), which matches everything.
        assert_eq!(hosts("~[").len(), 7);
    }

    #[test]
    fn select_errors_name_the_term_and_say_what_to_do() {
        for (pattern, term, says) in [
            ("db,~web(", "`~web(`", "invalid regular expression"),
            ("web[5]", "`web[5]`", "selects 3 hosts"),
            ("db:web[-4]", "`web[-4]`", "from -1 for the last"),
            ("web[5:0]", "`web[5:0]`", "no host at that index"),
            (
                "web[99999999999999999999]",
                "`web[99999",
                "no host at that index",
            ),
            ("web:@retry.txt", "`@retry.txt`", "not supported"),
            ("web,!", "`!` has no name after it", "`!group`"),
            ("& web", "`&` has no name after it", "without a space"),
        ] {
            let e = pick(pattern).unwrap_err();
            assert!(e.contains(term) && e.contains(says), "{pattern}: {e}");
        }
        assert_eq!(hosts("web[1:99999999999999999999]"), ["web02", "web03"]);
    }

    #[test]
    fn select_is_bounded() {
        let e = pick(&"a".repeat(MAX_PATTERN_LEN + 1)).unwrap_err();
        assert!(e.contains("at most 4096"), "{e}");
        let e = pick(&vec!["web"; MAX_PATTERN_TERMS + 1].join(",")).unwrap_err();
        assert!(e.contains("257 terms") && e.contains("at most 256"), "{e}");
        assert_eq!(hosts(&vec!["web"; MAX_PATTERN_TERMS].join(",")).len(), 3);
        // (A comma, or the `:` in `(?:` would split the term.)
        let e = pick(r"db,~(?:\w{500}){500}").unwrap_err();
        assert!(e.contains("size limit"), "{e}");
    }
}

/// Property tests: any text parses as an inventory or is refused without a panic, and what
/// parses answers every question about its hosts.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "[",
        "]",
        ":",
        "[web]",
        "[web:vars]",
        "[web:children]",
        "[all:vars]",
        "\n",
        " ",
        "=",
        "'",
        "\"",
        "#",
        ";",
        "web",
        "db",
        "h",
        "h[1:3]",
        "h[01:10]",
        "[3:1]",
        "a=1",
        "b=x",
        "all:",
        "  hosts:",
        "  vars:",
        "  children:",
        "    h1:",
        "      k: v",
        "- ",
        "{",
        "}",
        "---",
        "é",
    ];

    /// The inventory host patterns are fuzzed against.
    const PATTERN_FLEET: &str =
        "bastion\n[web]\nweb01\nweb02\n[db]\ndb1\n[prod:children]\nweb\ndb\n";

    /// Pieces of host patterns, bad ones included.
    const PATTERN_TOKENS: &[&str] = &[
        "web",
        "db",
        "prod",
        "all",
        "empty",
        "web01",
        ",",
        ":",
        "&",
        "!",
        "~",
        "*",
        "?",
        "[",
        "]",
        "[0]",
        "[-1]",
        "[1:]",
        "[0:1]",
        "[:2]",
        "[1-2]",
        "[!w]",
        "(",
        ")",
        ".",
        "\\",
        " ",
        "@",
        "é",
        "[99999999999999999999]",
        "::1",
        "{2}",
    ];

    /// Found by `fuzz_inventory_never_panics`: a `]` before the `[` sliced the host name
    /// backwards (a panic, from one INI line).
    #[test]
    fn fuzz_regression_bracket_closed_before_it_opens() {
        assert_eq!(expand_range("][").unwrap(), ["]["]);
        assert_eq!(expand_range("a]b[1:2]").unwrap(), ["a]b1", "a]b2"]);
        let inv = Inventory::parse("][\n").unwrap();
        assert_eq!(inv.hosts, ["]["]);
    }

    /// Bounded time and memory, found by reading: every host was looked up in a list (11 lines
    /// of `h[0:9999]` took 6·10^9 comparisons), and nothing capped how many ranges could add.
    #[test]
    fn fuzz_regression_many_ranges_are_capped() {
        let lines = |n| -> String { (0..n).map(|i| format!("g{i}h[0:9999]\n")).collect() };
        let e = Inventory::parse(&format!("[web]\n{}", lines(11))).unwrap_err();
        assert!(
            e.contains("more than 100000 hosts") && e.contains("line 12"),
            "{e}"
        );
        let ten = Inventory::parse(&format!("[web]\n{}", lines(10))).unwrap();
        assert_eq!(ten.hosts.len(), MAX_HOSTS);
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(1500))]

        #[test]
        fn fuzz_inventory_never_panics(text in rampart_fuzz::text(TOKENS, 30)) {
            for parsed in [Inventory::parse(&text), Inventory::parse_ini(&text), Inventory::parse_yaml(&text)] {
                let Ok(inv) = parsed else { continue };
                prop_assert_eq!(inv.hosts_of("all"), inv.hosts.clone());
                for h in &inv.hosts {
                    prop_assert!(inv.groups_of(h).contains("all"));
                    let _ = inv.host_vars(h);
                }
                for g in inv.groups.keys() {
                    for h in inv.hosts_of(g) {
                        prop_assert!(inv.hosts.contains(&h), "{h} of group {g} is not a host");
                    }
                }
            }
        }

        #[test]
        fn fuzz_select_never_panics(pattern in rampart_fuzz::text(PATTERN_TOKENS, 12)) {
            let inv = Inventory::parse(PATTERN_FLEET).unwrap();
            if let Ok(s) = select(&pattern, &inv.hosts, &inv.group_hosts()) {
                let unique: BTreeSet<&String> = s.hosts.iter().collect();
                prop_assert_eq!(unique.len(), s.hosts.len(), "duplicates from {:?}", pattern);
                for h in &s.hosts {
                    prop_assert!(inv.hosts.contains(h), "{} from {:?} is no host", h, pattern);
                }
            }
        }

        #[test]
        fn fuzz_host_range_never_panics(host in rampart_fuzz::text(&["[", "]", ":", "0", "1", "9", "09", "h", "é"], 10)) {
            if let Ok(hosts) = expand_range(&host) {
                prop_assert!(!hosts.is_empty() && hosts.len() <= 10_000);
            }
        }
    }
}
