//! `lookup('file' | 'template' | 'env')` on the host: what the engine's templates read.
//!
//! Ansible runs lookups on its controller; Rampart runs the engine on the host (the agent, or
//! `rampart run --local` in its own process), so a lookup reads the host's files and the
//! environment of the process that runs the engine. The playbook's own files travel with it
//! (the bundle), so `lookup('file', 'motd.txt')` finds `files/motd.txt` of the role or the
//! playbook as Ansible would: a relative name is searched in the role's `files/` (`templates/`
//! for `template`), the role's folder, the playbook's `files/` (`templates/`), then the
//! playbook's folder. A file larger than [`MAX_LOOKUP_BYTES`] is refused; a `template` lookup's
//! text gets the template module's `trim_blocks`.

use std::io::Read;
use std::path::Path;

use rampart_playbook::template::{Lookups, MAX_LOOKUP_BYTES};

/// Lookups reading this host's files and environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLookups;

impl Lookups for HostLookups {
    fn read(&self, kind: &str, name: &str, dirs: &[String]) -> Result<String, String> {
        let candidates: Vec<std::path::PathBuf> = if Path::new(name).is_absolute() {
            vec![name.into()]
        } else {
            dirs.iter().map(|d| Path::new(d).join(name)).collect()
        };
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "could not locate file in lookup: {name} (searched {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {} in lookup: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_LOOKUP_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {} in lookup: {e}", path.display()))?;
        if bytes.len() > MAX_LOOKUP_BYTES {
            return Err(format!(
                "{} is larger than the {} MiB a lookup may read",
                path.display(),
                MAX_LOOKUP_BYTES >> 20
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
        Ok(if kind == "template" {
            crate::modules::files::trim_blocks(&text)
        } else {
            text
        })
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use rampart_playbook::template::{Layer, Scope, Templar};
    use serde_json::json;

    use super::*;

    #[test]
    fn file_template_and_env_lookups_read_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let role = dir.path().join("roles/web");
        std::fs::create_dir_all(role.join("files")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(role.join("files/motd.txt"), "role motd\n\n").unwrap();
        std::fs::write(dir.path().join("motd.txt"), "playbook motd\n").unwrap();
        std::fs::write(
            dir.path().join("templates/t.j2"),
            "{% for x in xs %}\n{{ x }}-{{ name }}\n{% endfor %}\n",
        )
        .unwrap();
        let t = Arc::new(Templar::with_lookups(Arc::new(HostLookups)));
        let vars = |role_path: Option<&Path>| {
            let mut m = BTreeMap::new();
            m.insert(
                "playbook_dir".into(),
                dir.path().display().to_string().into(),
            );
            if let Some(r) = role_path {
                m.insert("role_path".into(), r.display().to_string().into());
            }
            m.insert("xs".into(), minijinja::Value::from(vec![1, 2]));
            m.insert("name".into(), "n".into());
            Scope::value(t.clone(), vec![Layer::Fixed(Arc::new(m))])
        };
        let in_role = vars(Some(&role));
        let outside = vars(None);
        // The role's files/ first, trailing whitespace stripped as Ansible's rstrip does.
        assert_eq!(
            t.render_str("{{ lookup('file', 'motd.txt') }}", &in_role)
                .unwrap(),
            json!("role motd")
        );
        assert_eq!(
            t.render_str("{{ lookup('file', 'motd.txt') }}", &outside)
                .unwrap(),
            json!("playbook motd")
        );
        assert_eq!(
            t.render_str("{{ lookup('file', 'motd.txt', rstrip=false) }}", &in_role)
                .unwrap(),
            json!("role motd\n\n")
        );
        let missing = t
            .render_str("{{ lookup('file', 'nope.txt') }}", &outside)
            .unwrap_err();
        assert!(
            missing
                .0
                .contains("could not locate file in lookup: nope.txt"),
            "{missing}"
        );
        // A template is rendered with the task's variables and the template module's trim_blocks.
        assert_eq!(
            t.render_str("{{ lookup('template', 't.j2') }}", &outside)
                .unwrap(),
            json!("1-n\n2-n\n")
        );
        // env: the engine's own environment; '' or the default when unset.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(
            t.render_str("{{ lookup('env', 'PATH') }}", &outside)
                .unwrap(),
            json!(path)
        );
        assert_eq!(
            t.render_str(
                "{{ lookup('env', 'RAMPART_SURELY_UNSET', default='d') }}|{{ lookup('env', 'RAMPART_SURELY_UNSET') }}",
                &outside
            )
            .unwrap(),
            json!("d|")
        );
        assert_eq!(
            t.render_str(
                "{{ query('env', 'PATH', 'RAMPART_SURELY_UNSET') }}",
                &outside
            )
            .unwrap(),
            json!([path, ""])
        );
        let other = t
            .render_str("{{ lookup('password', 'x') }}", &outside)
            .unwrap_err();
        assert!(other.0.contains("`password` is not supported"), "{other}");
    }
}
