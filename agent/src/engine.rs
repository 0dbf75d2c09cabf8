//! The engine: runs a validated playbook on this host with Ansible's block/rescue/always
//! semantics, writing a journal record before and after every task.
//!
//! Inputs: a [`Playbook`], extra variables, check mode, a [`Sink`] that makes records durable, and
//! optionally a [`Replay`] built from an interrupted journal. Output: the [`Outcome`] and the
//! [`Recap`]. During a replay the engine walks the same path again without running the tasks the
//! journal says finished (their recorded results are registered as before), then treats the
//! interruption as the journal demands: a failure of the interrupted `block` task (so `rescue`
//! and `always` run), or a fresh run of the interrupted `rescue`/`always` section.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use minijinja::value::Value as MjValue;
use serde_json::{Map, Value, json};

use crate::error::JournalError;
use crate::event::{Outcome, Recap, Record, Section, TaskStatus};
use crate::modules::{self, ArgKind, CheckMode, ModuleCtx};
use rampart_playbook::model::outermost_cleanup_section;
use rampart_playbook::template::{Layer, Scope, Templar, from_json};
use rampart_playbook::{Action, Playbook, Task, TaskKind};

/// Default `delay:` between `until` attempts, in seconds (Ansible's).
pub const DEFAULT_DELAY_SECS: f64 = 5.0;
/// Default `retries:` when `until:` is given (Ansible's).
pub const DEFAULT_RETRIES: u32 = 3;
/// Longest `delay:` accepted, so a typo cannot park a deploy for days.
const MAX_DELAY_SECS: f64 = 3600.0;
/// Most `retries:` accepted.
const MAX_RETRIES: u32 = 10_000;
const NO_LOG_MSG: &str =
    "the output has been hidden due to the fact that 'no_log: true' was specified for this result";

/// Where the engine's records go: the journal (durably) and then any watchers.
pub trait Sink {
    /// Records one event; an error stops the transaction where it is (it stays unfinished and is
    /// recovered at the next start).
    fn record(&mut self, record: Record) -> Result<(), JournalError>;
}

/// The engine's settings for one transaction.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Check mode.
    pub check: bool,
    /// The host's name (`inventory_hostname`).
    pub host: String,
    /// The transaction id (`rampart_txid`).
    pub txid: String,
    /// Where relative `src` paths are found (the playbook's directory, when known).
    pub base_dir: Option<PathBuf>,
    /// The host's state directory (releases, artifacts, journal).
    pub state_dir: PathBuf,
}

/// A finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The counters.
    pub recap: Recap,
}

/// What a journal says already happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayItem {
    /// A play began.
    Play(usize),
    /// A task began, and maybe finished with a status and (uncensored) result.
    Task {
        /// The task's path.
        path: String,
        /// Its end, when journaled.
        end: Option<(TaskStatus, Value)>,
    },
}

/// The replay of an interrupted journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// Items still to replay.
    pub items: VecDeque<ReplayItem>,
}

enum ReplayStep {
    /// The journal has this task's result.
    Done(TaskStatus, Value),
    /// The journal has this task's start but not its end: the agent died while it ran.
    Interrupted,
    /// The journal has nothing more: go live.
    Exhausted,
}

/// A failure travelling up to the nearest rescue.
#[derive(Debug, Clone)]
struct Failure {
    task: Value,
    result: Value,
    in_rescue: bool,
}

enum Flow {
    Continue,
    Failed(Failure),
}

/// Keywords a block passes down to the tasks inside it.
#[derive(Debug, Clone, Default)]
struct Inherited {
    when: Vec<Value>,
    ignore_errors: Option<Value>,
    no_log: Option<Value>,
    check_mode: Option<Value>,
}

/// Runs one playbook on this host.
pub struct Engine<'a> {
    playbook: &'a Playbook,
    templar: Arc<Templar>,
    opts: EngineOptions,
    extra: Arc<BTreeMap<String, MjValue>>,
    host_vars: Arc<RwLock<BTreeMap<String, MjValue>>>,
    /// Magic variables (`inventory_hostname`, `ansible_failed_task`, ...), shared by every
    /// scope built until one of them changes.
    magic: Arc<BTreeMap<String, MjValue>>,
    recap: Recap,
    sink: &'a mut dyn Sink,
    replay: Option<Replay>,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("playbook", &self.playbook.name)
            .field("recap", &self.recap)
            .finish_non_exhaustive()
    }
}

impl<'a> Engine<'a> {
    /// An engine for `playbook` with extra variables `extra`.
    pub fn new(
        playbook: &'a Playbook,
        templar: Arc<Templar>,
        opts: EngineOptions,
        extra: &Map<String, Value>,
        sink: &'a mut dyn Sink,
        replay: Option<Replay>,
    ) -> Self {
        let extra = extra
            .iter()
            .map(|(k, v)| (k.clone(), from_json(v)))
            .collect();
        let mut magic = BTreeMap::new();
        magic.insert(
            "inventory_hostname".to_string(),
            MjValue::from(opts.host.clone()),
        );
        magic.insert(
            "inventory_hostname_short".to_string(),
            MjValue::from(opts.host.split('.').next().unwrap_or_default().to_string()),
        );
        magic.insert("ansible_check_mode".to_string(), MjValue::from(opts.check));
        magic.insert("rampart_txid".to_string(), MjValue::from(opts.txid.clone()));
        if let Some(dir) = &opts.base_dir {
            magic.insert(
                "playbook_dir".to_string(),
                MjValue::from(dir.to_string_lossy().into_owned()),
            );
        }
        Engine {
            playbook,
            templar,
            opts,
            extra: Arc::new(extra),
            host_vars: Arc::new(RwLock::new(BTreeMap::new())),
            magic: Arc::new(magic),
            recap: Recap::default(),
            sink,
            replay,
        }
    }

    /// Runs every play; returns the outcome. A journal error stops the run where it is.
    pub fn run(mut self) -> Result<RunResult, JournalError> {
        let mut failure: Option<Failure> = None;
        for play in &self.playbook.plays {
            let play_scope = self.scope(std::slice::from_ref(&play.vars), None);
            let play_name = match self.templar.render_str(&play.name, &play_scope) {
                Ok(Value::String(s)) => s,
                _ => play.name.clone(),
            };
            Arc::make_mut(&mut self.magic)
                .insert("ansible_play_name".into(), MjValue::from(play_name.clone()));
            if !self.replay_play(play.index) {
                self.sink.record(Record::PlayStart {
                    index: play.index,
                    name: play_name,
                })?;
            }
            if play.gather_facts {
                self.gather_facts();
            }
            let layers = vec![play.vars.clone()];
            if let Flow::Failed(f) =
                self.run_list(&play.tasks, Section::Block, &layers, &Inherited::default())?
            {
                failure = Some(f);
                break;
            }
        }
        let outcome = match &failure {
            Some(f) => {
                self.recap.failed = 1;
                if f.in_rescue {
                    Outcome::RollbackFailed
                } else {
                    Outcome::Failed
                }
            }
            None if self.recap.rescued > 0 => Outcome::RolledBack,
            None if self.opts.check => Outcome::CheckOnly,
            None => Outcome::Succeeded,
        };
        Ok(RunResult {
            outcome,
            recap: self.recap,
        })
    }

    fn replay_play(&mut self, index: usize) -> bool {
        let Some(replay) = &mut self.replay else {
            return false;
        };
        if replay.items.front() == Some(&ReplayItem::Play(index)) {
            replay.items.pop_front();
            return true;
        }
        if replay.items.is_empty() {
            self.replay = None;
        }
        false
    }

    fn replay_task(&mut self, path: &str) -> Option<ReplayStep> {
        let replay = self.replay.as_mut()?;
        let step = match replay.items.front() {
            Some(ReplayItem::Task { path: p, end }) if p == path => {
                let step = match end {
                    Some((status, result)) => ReplayStep::Done(*status, result.clone()),
                    None => ReplayStep::Interrupted,
                };
                replay.items.pop_front();
                step
            }
            // Nothing more journaled, or the journal went elsewhere (it cannot for the same
            // playbook text): from here on the engine is live.
            _ => ReplayStep::Exhausted,
        };
        if !matches!(step, ReplayStep::Done(..)) {
            self.replay = None;
        }
        Some(step)
    }

    fn gather_facts(&mut self) {
        let mut facts = Map::new();
        facts.insert(
            "ansible_hostname".into(),
            json!(self.opts.host.split('.').next()),
        );
        facts.insert("ansible_nodename".into(), json!(self.opts.host));
        facts.insert(
            "ansible_processor_nproc".into(),
            json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
        );
        let Ok(mut vars) = self.host_vars.write() else {
            return;
        };
        for (k, v) in &facts {
            vars.insert(k.clone(), from_json(v));
        }
        vars.insert("ansible_facts".into(), from_json(&Value::Object(facts)));
    }

    fn scope(
        &self,
        layers: &[Arc<Map<String, Value>>],
        top: Option<BTreeMap<String, MjValue>>,
    ) -> MjValue {
        let mut out = Vec::with_capacity(layers.len() + 4);
        if let Some(top) = top {
            out.push(Layer::Fixed(Arc::new(top)));
        }
        out.push(Layer::Fixed(self.magic.clone()));
        out.push(Layer::Fixed(self.extra.clone()));
        out.push(Layer::Shared(self.host_vars.clone()));
        for l in layers.iter().rev() {
            out.push(Layer::Lazy(l.clone()));
        }
        Scope::value(self.templar.clone(), out)
    }

    fn run_list(
        &mut self,
        tasks: &[Task],
        section: Section,
        layers: &[Arc<Map<String, Value>>],
        inherited: &Inherited,
    ) -> Result<Flow, JournalError> {
        for task in tasks {
            if let Flow::Failed(f) = self.run_task(task, section, layers, inherited)? {
                return Ok(Flow::Failed(f));
            }
        }
        Ok(Flow::Continue)
    }

    fn run_task(
        &mut self,
        task: &Task,
        section: Section,
        layers: &[Arc<Map<String, Value>>],
        inherited: &Inherited,
    ) -> Result<Flow, JournalError> {
        let mut layers = layers.to_vec();
        if let Some(v) = &task.vars {
            layers.push(v.clone());
        }
        let mut inh = inherited.clone();
        inh.when.extend(task.when.iter().cloned());
        if task.ignore_errors.is_some() {
            inh.ignore_errors.clone_from(&task.ignore_errors);
        }
        if task.no_log.is_some() {
            inh.no_log.clone_from(&task.no_log);
        }
        if task.check_mode.is_some() {
            inh.check_mode.clone_from(&task.check_mode);
        }
        match &task.kind {
            TaskKind::Block(block) => {
                let mut flow = self.run_list(&block.block, Section::Block, &layers, &inh)?;
                if let Flow::Failed(f) = &flow
                    && !block.rescue.is_empty()
                {
                    self.recap.rescued += 1;
                    let mut failed_result = f.result.clone();
                    if let Value::Object(m) = &mut failed_result {
                        m.insert("failed".into(), json!(true));
                    }
                    Arc::make_mut(&mut self.magic)
                        .insert("ansible_failed_task".into(), from_json(&f.task));
                    Arc::make_mut(&mut self.magic)
                        .insert("ansible_failed_result".into(), from_json(&failed_result));
                    flow = self.run_list(&block.rescue, Section::Rescue, &layers, &inh)?;
                    if let Flow::Failed(f) = &mut flow {
                        f.in_rescue = true;
                    }
                }
                let always = self.run_list(&block.always, Section::Always, &layers, &inh)?;
                if let Flow::Failed(_) = always {
                    return Ok(always);
                }
                Ok(flow)
            }
            TaskKind::Action(action) => self.run_action(task, action, section, &layers, &inh),
        }
    }

    fn flag(&self, v: &Option<Value>, scope: &MjValue) -> bool {
        match v {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => self
                .templar
                .render_str(s, scope)
                .ok()
                .and_then(|v| modules::parse_bool(&v))
                .unwrap_or(false),
            Some(other) => modules::parse_bool(other).unwrap_or(false),
        }
    }

    fn task_name(&self, task: &Task, scope: &MjValue) -> String {
        match &task.name {
            Some(n) => self
                .templar
                .render_str(n, scope)
                .ok()
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .unwrap_or_else(|| n.clone()),
            None => task.action_name().to_string(),
        }
    }

    fn run_action(
        &mut self,
        task: &Task,
        action: &Action,
        section: Section,
        layers: &[Arc<Map<String, Value>>],
        inh: &Inherited,
    ) -> Result<Flow, JournalError> {
        let scope = self.scope(layers, None);
        let name = self.task_name(task, &scope);
        let ignore = self.flag(&inh.ignore_errors, &scope);
        let no_log = self.flag(&inh.no_log, &scope);

        let (status, result, duration_ms) = match self.replay_task(&task.path) {
            Some(ReplayStep::Done(status, result)) => {
                return Ok(self.settle(task, action, &name, status, result));
            }
            Some(ReplayStep::Interrupted) => (
                TaskStatus::Failed,
                interrupted("the agent stopped while this task was running"),
                0,
            ),
            Some(ReplayStep::Exhausted) if outermost_cleanup_section(&task.path).is_none() => {
                self.sink.record(Record::TaskStart {
                    path: task.path.clone(),
                    section,
                    name: name.clone(),
                    action: action.action.clone(),
                })?;
                let result = interrupted("the agent stopped before this task ran");
                (TaskStatus::Failed, result, 0)
            }
            Some(ReplayStep::Exhausted) | None => {
                self.sink.record(Record::TaskStart {
                    path: task.path.clone(),
                    section,
                    name: name.clone(),
                    action: action.action.clone(),
                })?;
                let t0 = Instant::now();
                let (status, result) = self.execute(task, action, layers, inh, &name, ignore)?;
                (status, result, t0.elapsed().as_millis() as u64)
            }
        };
        let (shown, private) = if no_log {
            let mut censored = Map::new();
            censored.insert("censored".into(), json!(NO_LOG_MSG));
            censored.insert(
                "changed".into(),
                result.get("changed").cloned().unwrap_or(json!(false)),
            );
            if status == TaskStatus::Failed || status == TaskStatus::Ignored {
                censored.insert("failed".into(), json!(true));
            }
            (Value::Object(censored), Some(result.clone()))
        } else {
            (result.clone(), None)
        };
        self.sink.record(Record::TaskEnd {
            path: task.path.clone(),
            section,
            name: name.clone(),
            action: action.action.clone(),
            status,
            result: shown,
            duration_ms,
            private_result: private,
        })?;
        Ok(self.settle(task, action, &name, status, result))
    }

    /// Applies a finished task: counters, `register`, facts; a failure starts travelling.
    fn settle(
        &mut self,
        task: &Task,
        action: &Action,
        name: &str,
        status: TaskStatus,
        result: Value,
    ) -> Flow {
        self.recap.count(status, &result);
        if let Ok(mut vars) = self.host_vars.write() {
            if status != TaskStatus::Failed
                && status != TaskStatus::Skipped
                && let Some(Value::Object(facts)) = result.get("ansible_facts")
            {
                for (k, v) in facts {
                    vars.insert(k.clone(), from_json(v));
                }
            }
            if let Some(reg) = &action.register {
                vars.insert(reg.clone(), from_json(&result));
            }
        }
        if status == TaskStatus::Failed {
            return Flow::Failed(Failure {
                task: failed_task_info(task, action, name),
                result,
                in_rescue: false,
            });
        }
        Flow::Continue
    }

    /// Runs the task for real: `when`, `loop`, check mode, `until`, `changed_when`, `failed_when`.
    fn execute(
        &mut self,
        task: &Task,
        action: &Action,
        layers: &[Arc<Map<String, Value>>],
        inh: &Inherited,
        name: &str,
        ignore: bool,
    ) -> Result<(TaskStatus, Value), JournalError> {
        let scope = self.scope(layers, None);
        let Some(items_spec) = &action.loop_items else {
            let result = match self.conditions_hold(&inh.when, &scope) {
                Err(r) => r,
                Ok(false) => skipped_result(&inh.when),
                Ok(true) => self.run_once(task, action, layers, inh, None, name)?,
            };
            return Ok((status_of(&result, ignore), Value::Object(result)));
        };
        let items = match self.templar.render_value(items_spec, &scope) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                let r = modules::failed(format!(
                    "Invalid data passed to 'loop', it requires a list, got this instead: {other}"
                ));
                return Ok((TaskStatus::Failed, Value::Object(r)));
            }
            Err(e) => {
                let r = modules::failed(format!("cannot template `loop`: {e}"));
                return Ok((TaskStatus::Failed, Value::Object(r)));
            }
        };
        let mut results = Vec::with_capacity(items.len());
        let (mut any_changed, mut any_failed, mut all_skipped) = (false, false, true);
        for (i, item) in items.iter().enumerate() {
            let mut top = BTreeMap::new();
            top.insert(action.loop_var.clone(), from_json(item));
            if let Some(iv) = &action.index_var {
                top.insert(iv.clone(), MjValue::from(i));
            }
            let item_scope = self.scope(layers, Some(top.clone()));
            let mut r = match self.conditions_hold(&inh.when, &item_scope) {
                Err(r) => r,
                Ok(false) => skipped_result(&inh.when),
                Ok(true) => self.run_once(task, action, layers, inh, Some(top), name)?,
            };
            let skipped = r.get("skipped").and_then(Value::as_bool) == Some(true);
            all_skipped &= skipped;
            any_changed |= r.get("changed").and_then(Value::as_bool) == Some(true);
            any_failed |= r.get("failed").and_then(Value::as_bool) == Some(true);
            r.insert(action.loop_var.clone(), item.clone());
            r.insert("ansible_loop_var".into(), json!(action.loop_var));
            results.push(Value::Object(r));
        }
        let mut agg = Map::new();
        agg.insert("changed".into(), json!(any_changed));
        agg.insert(
            "msg".into(),
            json!(if any_failed {
                "One or more items failed"
            } else if items.is_empty() {
                "No items in the list"
            } else if all_skipped {
                "All items skipped"
            } else {
                "All items completed"
            }),
        );
        agg.insert("results".into(), Value::Array(results));
        if any_failed {
            agg.insert("failed".into(), json!(true));
        } else if all_skipped {
            agg.insert("skipped".into(), json!(true));
        }
        Ok((status_of(&agg, ignore), Value::Object(agg)))
    }

    /// `Ok(bool)` when the conditions could be evaluated, `Err(result)` with a failed result when not.
    fn conditions_hold(
        &self,
        conds: &[Value],
        scope: &MjValue,
    ) -> Result<bool, Map<String, Value>> {
        if conds.is_empty() {
            return Ok(true);
        }
        self.templar.eval_conditions(conds, scope).map_err(|e| {
            modules::failed(format!(
                "The conditional check '{}' failed. The error was: {e}",
                conds
                    .iter()
                    .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))
        })
    }

    fn run_once(
        &mut self,
        task: &Task,
        action: &Action,
        layers: &[Arc<Map<String, Value>>],
        inh: &Inherited,
        top: Option<BTreeMap<String, MjValue>>,
        name: &str,
    ) -> Result<Map<String, Value>, JournalError> {
        let scope = self.scope(layers, top.clone());
        let check = match &inh.check_mode {
            Some(v) => self.flag(&Some(v.clone()), &scope),
            None => self.opts.check,
        };
        if check && action.module.check_mode == CheckMode::Skip {
            let mut r = modules::ok(false);
            r.insert("skipped".into(), json!(true));
            r.insert(
                "msg".into(),
                json!("Command would have run if not in check mode"),
            );
            return Ok(r);
        }
        let retries = match self.number(&action.retries, &scope, "retries") {
            Ok(n) => n.map_or(DEFAULT_RETRIES, |n| {
                n.clamp(0.0, f64::from(MAX_RETRIES)) as u32
            }),
            Err(r) => return Ok(r),
        };
        let delay = match self.number(&action.delay, &scope, "delay") {
            Ok(n) => n.unwrap_or(DEFAULT_DELAY_SECS).clamp(0.0, MAX_DELAY_SECS),
            Err(r) => return Ok(r),
        };
        let max_runs = if action.until.is_empty() {
            1
        } else {
            retries + 1
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let scope = self.scope(layers, top.clone());
            let mut result = match self.template_args(action, &scope) {
                Ok(args) => {
                    // Progress goes to the journal (and watchers) as it comes; the first
                    // journal error stops the transaction once the module returns.
                    let sink = std::cell::RefCell::new(&mut *self.sink);
                    let journal_error = std::cell::RefCell::new(None);
                    let progress = |data: Value| {
                        let recorded = sink.borrow_mut().record(Record::TaskProgress {
                            path: task.path.clone(),
                            name: name.to_string(),
                            data,
                        });
                        if let Err(e) = recorded {
                            journal_error.borrow_mut().get_or_insert(e);
                        }
                    };
                    let ctx = ModuleCtx {
                        check,
                        templar: &self.templar,
                        scope: &scope,
                        base_dir: self.opts.base_dir.clone(),
                        state_dir: &self.opts.state_dir,
                        txid: &self.opts.txid,
                        progress: Some(modules::Progress(&progress)),
                    };
                    let result = match modules::for_schema(action.module) {
                        Some(module) => (module.run)(&args, &ctx),
                        // Unreachable while every built-in schema has a run function (a unit
                        // test in `modules` holds them together); failing the task is safer.
                        None => modules::failed(format!(
                            "module `{}` has no implementation in this agent",
                            action.module.name
                        )),
                    };
                    if let Some(e) = journal_error.into_inner() {
                        return Err(e);
                    }
                    result
                }
                Err(msg) => modules::failed(msg),
            };
            // The task's own tests see the result under its `register` name.
            let mut with_result = top.clone().unwrap_or_default();
            if let Some(reg) = &action.register {
                with_result.insert(reg.clone(), from_json(&Value::Object(result.clone())));
            }
            let rscope = self.scope(layers, Some(with_result.clone()));
            if let Some(conds) = &action.changed_when {
                match self.templar.eval_conditions(conds, &rscope) {
                    Ok(c) => {
                        result.insert("changed".into(), json!(c));
                    }
                    Err(e) => {
                        result = modules::failed(format!(
                            "The conditional check 'changed_when' failed. The error was: {e}"
                        ));
                    }
                }
            }
            if let Some(conds) = &action.failed_when {
                match self.templar.eval_conditions(conds, &rscope) {
                    Ok(f) => {
                        result.insert("failed_when_result".into(), json!(f));
                        if f {
                            result.insert("failed".into(), json!(true));
                            result.entry("msg").or_insert(json!(""));
                        } else {
                            result.remove("failed");
                        }
                    }
                    Err(e) => {
                        result = modules::failed(format!(
                            "The conditional check 'failed_when' failed. The error was: {e}"
                        ));
                    }
                }
            }
            if action.until.is_empty() {
                return Ok(result);
            }
            if let Some(reg) = &action.register {
                with_result.insert(reg.clone(), from_json(&Value::Object(result.clone())));
            }
            let uscope = self.scope(layers, Some(with_result));
            let done = match self.templar.eval_conditions(&action.until, &uscope) {
                Ok(b) => b,
                Err(e) => {
                    let mut r = modules::failed(format!(
                        "The conditional check 'until' failed. The error was: {e}"
                    ));
                    r.insert("attempts".into(), json!(attempt));
                    return Ok(r);
                }
            };
            if done {
                result.insert("attempts".into(), json!(attempt));
                return Ok(result);
            }
            if attempt >= max_runs {
                // As Ansible 2.19 reports it: `attempts` is the retry count, one less than runs.
                result.insert("attempts".into(), json!(attempt.saturating_sub(1).max(1)));
                result.insert("failed".into(), json!(true));
                return Ok(result);
            }
            self.sink.record(Record::TaskRetry {
                path: task.path.clone(),
                name: name.to_string(),
                retries_left: max_runs - attempt,
                result: Value::Object(result.clone()),
            })?;
            std::thread::sleep(Duration::from_secs_f64(delay));
        }
    }

    fn number(
        &self,
        v: &Option<Value>,
        scope: &MjValue,
        what: &str,
    ) -> Result<Option<f64>, Map<String, Value>> {
        let Some(v) = v else { return Ok(None) };
        let rendered = match v {
            Value::String(s) => self
                .templar
                .render_str(s, scope)
                .map_err(|e| modules::failed(format!("cannot template `{what}`: {e}")))?,
            other => other.clone(),
        };
        match &rendered {
            Value::Number(n) => Ok(n.as_f64()),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| modules::failed(format!("`{what}` must be a number, got `{s}`"))),
            other => Err(modules::failed(format!(
                "`{what}` must be a number, got {other}"
            ))),
        }
    }

    fn template_args(
        &self,
        action: &Action,
        scope: &MjValue,
    ) -> Result<Map<String, Value>, String> {
        let mut out = Map::with_capacity(action.args.len());
        for (k, raw) in &action.args {
            let spec = action.module.arg(k);
            let rendered = if spec.is_some_and(|s| s.kind == ArgKind::Expr) {
                raw.clone()
            } else {
                self.templar
                    .render_value(raw, scope)
                    .map_err(|e| format!("cannot template argument `{k}`: {e}"))?
            };
            let value = match spec {
                Some(s) => modules::coerce(s, rendered)?,
                None => rendered,
            };
            out.insert(k.clone(), value);
        }
        Ok(out)
    }
}

fn status_of(result: &Map<String, Value>, ignore: bool) -> TaskStatus {
    let flag = |k: &str| result.get(k).and_then(Value::as_bool) == Some(true);
    if flag("failed") {
        if ignore {
            TaskStatus::Ignored
        } else {
            TaskStatus::Failed
        }
    } else if flag("skipped") {
        TaskStatus::Skipped
    } else if flag("changed") {
        TaskStatus::Changed
    } else {
        TaskStatus::Ok
    }
}

fn skipped_result(conds: &[Value]) -> Map<String, Value> {
    let mut r = modules::ok(false);
    r.insert("skipped".into(), json!(true));
    r.insert("skip_reason".into(), json!("Conditional result was False"));
    if let Some(last) = conds.last() {
        r.insert("false_condition".into(), last.clone());
    }
    r
}

fn interrupted(msg: &str) -> Value {
    json!({
        "changed": false,
        "failed": true,
        "interrupted": true,
        "msg": format!("{msg}; the transaction was recovered after a restart"),
    })
}

fn failed_task_info(task: &Task, action: &Action, name: &str) -> Value {
    json!({
        "name": name,
        "action": action.action,
        "_resolved_action": format!("ansible.builtin.{}", action.module.name),
        "args": action.args,
        "path": task.path,
        "when": task.when,
        "register": action.register,
        "ignore_errors": task.ignore_errors,
        "retries": action.retries,
        "delay": action.delay.clone().unwrap_or(json!(DEFAULT_DELAY_SECS)),
        "loop": action.loop_items,
        "vars": task.vars.as_deref().cloned().unwrap_or_default(),
    })
}
