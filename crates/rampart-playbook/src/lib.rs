//! The playbook language, pure: what a playbook says and whether it can run, with no I/O
//! beyond the text it is given. Used by the agent (which runs it), the controller (which
//! validates environments' playbooks and reads `serial`) and the CLI.
//!
//! Layout, one concept per module:
//! - [`yaml`]: untrusted YAML into a tree that remembers positions (Ansible's YAML 1.1 scalars),
//!   with size and depth limits;
//! - [`template`]: Jinja2 templating (`{{ }}`, `when:`) with Ansible's filters and semantics;
//! - [`model`]: plays, tasks, blocks, actions, sections and task paths;
//! - [`mod@load`]: the loader, which validates the whole document before anything runs;
//! - [`schema`]: what a module takes (argument kinds, free form, check mode) and Ansible's
//!   argument coercions;
//! - [`modules`]: the built-in modules' schemas;
//! - [`serial`]: Ansible's `serial` arithmetic (waves);
//! - [`inventory`]: Ansible's YAML and INI inventories, their groups and variables, and host
//!   patterns (`web*:&prod:!web2`) over them;
//! - [`result`]: how a module's result is read for its failure message;
//! - [`error`]: [`PlaybookError`], with `file:line:column`.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod error;
pub mod inventory;
pub mod load;
pub mod model;
pub mod modules;
pub mod result;
pub mod schema;
pub mod serial;
pub mod template;
pub mod yaml;

pub use error::PlaybookError;
pub use load::{LoadOptions, load, load_tree};
pub use model::{
    Action, Block, Handler, Include, Meta, Play, Playbook, Role, Section, Task, TaskKind,
};
