//! Inventories in Ansible's formats: YAML (`all:` with `hosts`, `vars`, `children`) and INI
//! (`[group]`, `[group:vars]`, `[group:children]`, `host key=value`), host ranges such as
//! `web[01:03]` included.
//!
//! Input: the inventory's text. Output: an [`Inventory`]: hosts in file order, groups with their
//! direct hosts and children, and each host's variables merged as Ansible merges them (`all`,
//! then groups from the outermost to the innermost, same depth by name, then the host's own).
//! At most [`MAX_HOSTS`] hosts; a YAML inventory has the playbook loader's size and depth limits.

use std::collections::{BTreeMap, BTreeSet};

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

    /// The hosts a pattern names (a group, a host, `all`), in inventory order.
    pub fn hosts_of(&self, pattern: &str) -> Vec<String> {
        if pattern == "all" || pattern == "*" {
            return self.hosts.clone();
        }
        if self.hosts.iter().any(|h| h == pattern) {
            return vec![pattern.to_string()];
        }
        self.hosts
            .iter()
            .filter(|h| self.groups_of(h).contains(pattern))
            .cloned()
            .collect()
    }
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
        fn fuzz_host_range_never_panics(host in rampart_fuzz::text(&["[", "]", ":", "0", "1", "9", "09", "h", "é"], 10)) {
            if let Ok(hosts) = expand_range(&host) {
                prop_assert!(!hosts.is_empty() && hosts.len() <= 10_000);
            }
        }
    }
}
