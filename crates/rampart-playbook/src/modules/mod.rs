//! The built-in modules' schemas, one file per module family (the same families as the
//! agent's `modules/`, where their run functions are).

use crate::schema::ModuleSchema;

pub mod archive;
pub mod capture_state;
pub mod command;
pub mod control;
pub mod cron;
pub mod deploy_lock;
pub mod files;
pub mod forensics;
pub mod health;
pub mod migrate;
pub mod net;
pub mod proxy_switch;
pub mod release;
pub mod service;
pub mod textedit;
pub mod users;
pub mod wait_for;

/// Every built-in module, in the order `--help` lists them.
pub static BUILTIN: &[&ModuleSchema] = &[
    &command::COMMAND,
    &command::SHELL,
    &control::FAIL,
    &control::ASSERT,
    &control::DEBUG,
    &control::SET_FACT,
    &control::PAUSE,
    &control::META,
    &control::INCLUDE_VARS,
    &wait_for::WAIT_FOR,
    &files::FILE,
    &files::COPY,
    &files::TEMPLATE,
    &files::STAT,
    &net::URI,
    &net::GET_URL,
    &archive::UNARCHIVE,
    &textedit::LINEINFILE,
    &textedit::BLOCKINFILE,
    &textedit::REPLACE,
    &capture_state::CAPTURE_STATE,
    &deploy_lock::DEPLOY_LOCK,
    &release::RELEASE,
    &service::SERVICE,
    &service::SYSTEMD_SERVICE,
    &service::SYSTEMD,
    &forensics::FORENSICS,
    &migrate::MIGRATE,
    &health::HEALTH,
    &proxy_switch::PROXY_SWITCH,
    &cron::CRON,
    &users::USER,
    &users::GROUP,
];

/// Looks a module up by short name or `ansible.builtin.` / `ansible.legacy.` FQCN.
pub fn lookup(name: &str) -> Option<&'static ModuleSchema> {
    let short = name
        .strip_prefix("ansible.builtin.")
        .or_else(|| name.strip_prefix("ansible.legacy."))
        .unwrap_or(name);
    BUILTIN.iter().copied().find(|m| m.name == short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_accepts_fqcn() {
        assert_eq!(lookup("ansible.builtin.copy").unwrap().name, "copy");
        assert_eq!(lookup("ansible.legacy.debug").unwrap().name, "debug");
        assert_eq!(lookup("debug").unwrap().name, "debug");
        assert!(lookup("ansible.builtin.nosuch").is_none());
    }
}
