//! One stage's analysis window: the checks' repeated evaluations over a window that opens
//! after a wave, and the stage's verdict.
//!
//! Inputs: the window's lengths ([`WindowPolicy`]), each check's counters
//! ([`MeasurementLimits`]), then one evaluation of every check at a time ([`StageRun::record`],
//! with the time since the window opened). Output: [`StageState`] — still running, or done with
//! a [`StageVerdict`]. Pure: the caller owns the clock and the queries.
//!
//! The rules, in order, after each evaluation:
//! 1. a check whose counters say Failed (a confirmed Fail: strong, or two in a row; Argo's
//!    `failure_limit`) fails the stage at once: roll back, no waiting for the window's end;
//! 2. a check whose counters say Error (more consecutive Errors than its limit) ends the stage
//!    Error: the rollout pauses for a person, it never passes;
//! 3. a check whose counters say Inconclusive (more Inconclusive evaluations than its
//!    `inconclusive_limit`, when one is set) ends the stage Inconclusive;
//! 4. once the window is over, the stage passes when every check's **latest** counted
//!    evaluation is a Pass (or its counters completed Successful): an early evaluation over a
//!    few requests is Inconclusive by nature and must not count against a stage that then
//!    gathers enough data, and a late Inconclusive must not pass it;
//! 5. otherwise the window extends, one evaluation at a time, up to `max_window`; there the
//!    stage is Inconclusive (or Error, for a check that never gave a counted evaluation).
//!
//! A check's counters default to indefinite (`count: None`) with no inconclusive limit, so only
//! the window decides when the stage ends; a check given an explicit `count` completes on its
//! own, as in Argo Rollouts.

use std::time::Duration;

use serde::Serialize;

use crate::judge::{MAX_COUNT, MeasurementLimits, Measurements, Phase, Verdict};

/// The lengths of a stage's analysis window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowPolicy {
    /// How long the window lasts before the stage may pass.
    pub window: Duration,
    /// How far an Inconclusive window extends before the stage is Inconclusive (≥ `window`).
    pub max_window: Duration,
}

impl WindowPolicy {
    /// `Ok` when the lengths make sense, else a message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.window.is_zero() {
            return Err("the analysis window is 0: give a duration such as \"5m\"".into());
        }
        if self.max_window < self.window {
            return Err(format!(
                "max_window ({:?}) is shorter than the window ({:?}): set it at least as long",
                self.max_window, self.window
            ));
        }
        Ok(())
    }
}

/// The evaluations a stage may take: one per `interval` up to `max_window` (at least one).
pub fn looks(max_window: Duration, interval: Duration) -> u32 {
    if interval.is_zero() {
        return 1;
    }
    let n = max_window.as_secs_f64() / interval.as_secs_f64();
    (n.ceil() as u32).clamp(1, MAX_COUNT)
}

/// A check's α split over the stage's looks (Bonferroni over its repeated evaluations of
/// cumulative data): every evaluation is a chance to fail a good release, so without the split
/// a window of 14–20 looks failed up to 5 % of A/A windows at α = 0.025 (the `judge_sim`
/// bench). The looks are strongly correlated, so the split is conservative; what it costs in
/// power is in the bench's time-to-decision table.
pub fn alpha_per_look(alpha: f64, max_window: Duration, interval: Duration) -> f64 {
    alpha / f64::from(looks(max_window, interval))
}

/// The counters a check gets when its configuration sets none: indefinite, no inconclusive
/// limit, Argo's consecutive-error limit (4) and the consecutive-or-strong Fail rule.
pub fn window_limits() -> MeasurementLimits {
    MeasurementLimits {
        count: None,
        inconclusive_limit: MAX_COUNT,
        ..MeasurementLimits::default()
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum StageVerdict {
    /// Every check passed: the next stage may start.
    Pass,
    /// A check failed (named): roll the fleet back.
    Fail {
        /// The failing check.
        check: String,
    },
    /// Not enough evidence by `max_window` (or a check's inconclusive limit): pause for a
    /// person.
    Inconclusive {
        /// The first check that was not a pass.
        check: String,
    },
    /// A check could not be evaluated (its queries failed): pause for a person; never a pass.
    Error {
        /// The check in error.
        check: String,
    },
}

impl StageVerdict {
    /// `pass`, `fail`, `inconclusive` or `error`: the metrics' and events' label.
    pub fn name(&self) -> &'static str {
        match self {
            StageVerdict::Pass => "pass",
            StageVerdict::Fail { .. } => "fail",
            StageVerdict::Inconclusive { .. } => "inconclusive",
            StageVerdict::Error { .. } => "error",
        }
    }

    /// The check that decided, when one did.
    pub fn check(&self) -> Option<&str> {
        match self {
            StageVerdict::Pass => None,
            StageVerdict::Fail { check }
            | StageVerdict::Inconclusive { check }
            | StageVerdict::Error { check } => Some(check),
        }
    }
}

/// Where a stage is after an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StageState {
    /// Evaluate again after the interval.
    Running,
    /// Over.
    Done(StageVerdict),
}

#[derive(Debug, Clone)]
struct CheckRun {
    name: String,
    measurements: Measurements,
    last: Option<Verdict>,
}

/// The evaluations of one stage's checks ([`StageRun::record`]).
#[derive(Debug, Clone)]
pub struct StageRun {
    policy: WindowPolicy,
    checks: Vec<CheckRun>,
    done: Option<StageVerdict>,
}

impl StageRun {
    /// A stage with `checks` (name and counters, in evaluation order). Errors name the check
    /// whose counters are invalid, or the window's bad length; a stage needs one check.
    pub fn new(
        policy: WindowPolicy,
        checks: Vec<(String, MeasurementLimits)>,
    ) -> Result<StageRun, String> {
        policy.validate()?;
        if checks.is_empty() {
            return Err("an analysis needs at least one check".into());
        }
        let checks = checks
            .into_iter()
            .map(|(name, limits)| {
                Measurements::new(limits)
                    .map(|measurements| CheckRun {
                        name: name.clone(),
                        measurements,
                        last: None,
                    })
                    .map_err(|e| format!("check {name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StageRun {
            policy,
            checks,
            done: None,
        })
    }

    /// The checks' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.checks.iter().map(|c| c.name.as_str())
    }

    /// The stage's verdict, once it has one.
    pub fn verdict(&self) -> Option<&StageVerdict> {
        self.done.as_ref()
    }

    /// Records one evaluation: `verdicts[i]` is check `i`'s verdict and whether it is strong
    /// ([`crate::judge::Decision::strong`]); `elapsed` is the time since the window opened.
    /// A missing entry (a shorter slice) counts as an Error of that check. Once done, further
    /// evaluations change nothing.
    pub fn record(&mut self, elapsed: Duration, verdicts: &[(Verdict, bool)]) -> StageState {
        if let Some(v) = &self.done {
            return StageState::Done(v.clone());
        }
        for (i, c) in self.checks.iter_mut().enumerate() {
            let (v, strong) = verdicts.get(i).copied().unwrap_or((Verdict::Error, false));
            let before = c.measurements.phase();
            c.measurements.record_verdict(v, strong);
            if !before.is_done() && v != Verdict::Error {
                c.last = Some(v);
            }
        }
        let first = |p: Phase| {
            self.checks
                .iter()
                .find(|c| c.measurements.phase() == p)
                .map(|c| c.name.clone())
        };
        let verdict = if let Some(check) = first(Phase::Failed) {
            Some(StageVerdict::Fail { check })
        } else if let Some(check) = first(Phase::Error) {
            Some(StageVerdict::Error { check })
        } else if let Some(check) = first(Phase::Inconclusive) {
            Some(StageVerdict::Inconclusive { check })
        } else if elapsed >= self.policy.window {
            let not_passing = self.checks.iter().find(|c| {
                c.measurements.phase() != Phase::Successful && c.last != Some(Verdict::Pass)
            });
            match not_passing {
                None => Some(StageVerdict::Pass),
                Some(_) if elapsed < self.policy.max_window => None,
                Some(c) if c.last.is_none() => Some(StageVerdict::Error {
                    check: c.name.clone(),
                }),
                Some(c) => Some(StageVerdict::Inconclusive {
                    check: c.name.clone(),
                }),
            }
        } else {
            None
        };
        match verdict {
            Some(v) => {
                self.done = Some(v.clone());
                StageState::Done(v)
            }
            None => StageState::Running,
        }
    }

    /// Ends the stage now with a fast-path failure of `check` (a canary host's error rate far
    /// past the guardrail, its target down): the stage fails whatever the window says.
    pub fn fail_now(&mut self, check: &str) -> StageVerdict {
        let v = self.done.clone().unwrap_or(StageVerdict::Fail {
            check: check.to_string(),
        });
        self.done = Some(v.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: (Verdict, bool) = (Verdict::Pass, false);
    const F: (Verdict, bool) = (Verdict::Fail, false);
    const FS: (Verdict, bool) = (Verdict::Fail, true);
    const I: (Verdict, bool) = (Verdict::Inconclusive, false);
    const E: (Verdict, bool) = (Verdict::Error, false);

    fn run(names: &[&str]) -> StageRun {
        StageRun::new(
            WindowPolicy {
                window: Duration::from_secs(60),
                max_window: Duration::from_secs(120),
            },
            names
                .iter()
                .map(|n| (n.to_string(), window_limits()))
                .collect(),
        )
        .unwrap()
    }

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn early_inconclusive_then_pass_at_the_window_end() {
        let mut r = run(&["error_rate", "latency_p95"]);
        assert_eq!(r.record(at(10), &[I, I]), StageState::Running);
        assert_eq!(r.record(at(30), &[P, I]), StageState::Running);
        // Passing before the window is over is not enough.
        assert_eq!(r.record(at(50), &[P, P]), StageState::Running);
        assert_eq!(
            r.record(at(60), &[P, P]),
            StageState::Done(StageVerdict::Pass)
        );
        // Done stays done.
        assert_eq!(
            r.record(at(70), &[FS, FS]),
            StageState::Done(StageVerdict::Pass)
        );
    }

    #[test]
    fn a_confirmed_fail_ends_the_stage_at_once() {
        let mut r = run(&["error_rate", "latency_p95"]);
        assert_eq!(r.record(at(10), &[P, F]), StageState::Running);
        let fail = StageVerdict::Fail {
            check: "latency_p95".into(),
        };
        assert_eq!(r.record(at(20), &[P, F]), StageState::Done(fail.clone()));
        assert_eq!(r.verdict(), Some(&fail));
        // A strong fail needs no second look.
        let mut r = run(&["error_rate"]);
        assert_eq!(
            r.record(at(5), &[FS]),
            StageState::Done(StageVerdict::Fail {
                check: "error_rate".into()
            })
        );
    }

    #[test]
    fn an_unconfirmed_fail_at_the_end_extends_then_is_inconclusive() {
        let mut r = run(&["latency_p95"]);
        assert_eq!(r.record(at(60), &[F]), StageState::Running);
        // A pass after an unconfirmed fail, once the window is over, passes.
        assert_eq!(r.record(at(90), &[P]), StageState::Done(StageVerdict::Pass));
        let mut r = run(&["latency_p95"]);
        assert_eq!(r.record(at(60), &[F]), StageState::Running);
        assert_eq!(r.record(at(90), &[I]), StageState::Running);
        assert_eq!(
            r.record(at(120), &[I]),
            StageState::Done(StageVerdict::Inconclusive {
                check: "latency_p95".into()
            })
        );
    }

    #[test]
    fn errors_pause_and_never_pass() {
        let mut r = run(&["error_rate"]);
        for s in [10, 20, 30, 40] {
            assert_eq!(r.record(at(s), &[E]), StageState::Running);
        }
        assert_eq!(
            r.record(at(50), &[E]),
            StageState::Done(StageVerdict::Error {
                check: "error_rate".into()
            })
        );
        // Errors in between do not reset the latest counted verdict, and a window ending on
        // errors after passes still passes only with a latest Pass.
        let mut r = run(&["a", "b"]);
        r.record(at(10), &[P, P]);
        assert_eq!(
            r.record(at(60), &[P, E]),
            StageState::Done(StageVerdict::Pass)
        );
        // A check that never gave a counted evaluation by max_window is Error.
        let mut r = run(&["a", "b"]);
        r.record(at(60), &[P, E]);
        r.record(at(70), &[P, I]);
        let mut r2 = run(&["a", "b"]);
        r2.record(at(60), &[P, E]);
        assert_eq!(
            r2.record(at(120), &[P, E]),
            StageState::Done(StageVerdict::Error { check: "b".into() })
        );
        assert_eq!(
            r.record(at(120), &[P, I]),
            StageState::Done(StageVerdict::Inconclusive { check: "b".into() })
        );
    }

    #[test]
    fn explicit_limits_as_argo() {
        let limits = MeasurementLimits {
            count: Some(2),
            inconclusive_limit: 0,
            ..MeasurementLimits::default()
        };
        let policy = WindowPolicy {
            window: at(60),
            max_window: at(60),
        };
        let mut r = StageRun::new(policy, vec![("x".into(), limits.clone())]).unwrap();
        assert_eq!(
            r.record(at(5), &[I]),
            StageState::Done(StageVerdict::Inconclusive { check: "x".into() })
        );
        // Completed Successful by its count: passes at the window's end even if later looks
        // are ignored.
        let mut r = StageRun::new(policy, vec![("x".into(), limits)]).unwrap();
        r.record(at(5), &[P]);
        r.record(at(10), &[P]);
        assert_eq!(r.record(at(60), &[I]), StageState::Done(StageVerdict::Pass));
    }

    #[test]
    fn alpha_is_split_over_the_looks() {
        assert_eq!(looks(at(42), at(3)), 14);
        assert_eq!(looks(at(43), at(3)), 15);
        assert_eq!(looks(at(1), at(3)), 1);
        assert_eq!(looks(at(5), Duration::ZERO), 1);
        assert!((alpha_per_look(0.025, at(600), at(30)) - 0.00125).abs() < 1e-15);
    }

    #[test]
    fn bad_configuration_is_refused() {
        let policy = WindowPolicy {
            window: at(60),
            max_window: at(30),
        };
        assert!(StageRun::new(policy, vec![("x".into(), window_limits())]).is_err());
        let ok = WindowPolicy {
            window: at(60),
            max_window: at(60),
        };
        assert!(StageRun::new(ok, vec![]).is_err());
        let bad = MeasurementLimits {
            count: Some(0),
            ..MeasurementLimits::default()
        };
        let e = StageRun::new(ok, vec![("x".into(), bad)]).unwrap_err();
        assert!(e.contains("check x"), "{e}");
        let mut r = StageRun::new(ok, vec![("x".into(), window_limits())]).unwrap();
        assert_eq!(
            r.fail_now("fast_path"),
            StageVerdict::Fail {
                check: "fast_path".into()
            }
        );
        assert_eq!(
            r.record(at(60), &[P]).clone(),
            StageState::Done(r.fail_now("z"))
        );
    }
}
