//! Delivery figures of an environment over a window (`DeploymentStats`, `rampart history
//! --stats`), pure: deployment frequency, lead time, change failure rate, time to restore, and
//! the success criteria SC-001 (success rate >= 95 %) and SC-002 (p95 duration <= 10 min).
//!
//! Input: the facts of finished deployments and of incidents (times in seconds since the
//! epoch), and the window. What counts is written once, in [`compute`]; `controller.proto`'s
//! `DeploymentStatsResponse` documents the same rules for clients.

/// SC-001's target success rate.
pub const SUCCESS_TARGET: f64 = 0.95;
/// SC-002's target p95 duration, in seconds.
pub const DURATION_P95_TARGET: f64 = 600.0;

/// How a finished deployment ended, as the figures see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every host runs the new version.
    Succeeded,
    /// Rolled back, verified.
    RolledBack,
    /// A rollback failed.
    RollbackFailed,
    /// Failed without changing a host (or a rollback that did not reach its target).
    Failed,
    /// Ended without touching a host: aborted while queued, lock or approval timeout.
    NotStarted,
    /// Check mode only: not a change.
    CheckOnly,
}

/// One finished deployment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeploymentFact {
    /// A rollback a person asked for (`Rollback`), not a deploy.
    pub manual_rollback: bool,
    /// How it ended.
    pub ending: Ending,
    /// When the deployed commit was made, if known.
    pub commit_time: Option<f64>,
    /// When it took the environment lock, if it did.
    pub started: Option<f64>,
    /// When it finished.
    pub finished: f64,
}

/// One incident.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IncidentFact {
    /// When it was opened.
    pub opened: f64,
    /// When it was resolved, if it was.
    pub resolved: Option<f64>,
}

/// The figures; `None` where there is no data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Counted deployments (change outcomes).
    pub finished: u32,
    /// Of those, succeeded.
    pub succeeded: u32,
    /// Of those, rolled back.
    pub rolled_back: u32,
    /// Of those, rollback failed.
    pub rollback_failed: u32,
    /// Of those, failed.
    pub failed: u32,
    /// Ended without touching a host.
    pub not_started: u32,
    /// Rollbacks people asked for.
    pub manual_rollbacks: u32,
    /// Counted deployments per day of the window.
    pub deployments_per_day: f64,
    /// Succeeded deployments with a commit time.
    pub lead_time_samples: u32,
    /// Median lead time, seconds.
    pub lead_time_median: Option<f64>,
    /// p95 lead time, seconds.
    pub lead_time_p95: Option<f64>,
    /// (rolled back + rollback failed + failed) / finished.
    pub change_failure_rate: Option<f64>,
    /// Incidents opened in the window.
    pub incidents_opened: u32,
    /// Of those, resolved.
    pub incidents_resolved: u32,
    /// Median opened → resolved, seconds.
    pub time_to_restore_median: Option<f64>,
    /// SC-001: succeeded / finished.
    pub success_rate: Option<f64>,
    /// SC-001 met.
    pub success_rate_met: Option<bool>,
    /// SC-002: p95 of lock-to-end durations, seconds.
    pub duration_p95: Option<f64>,
    /// SC-002 met.
    pub duration_p95_met: Option<bool>,
}

/// The figures of the deployments that finished, and the incidents opened, in `[start, end]`
/// (seconds since the epoch); facts outside the window are ignored.
pub fn compute(
    deployments: &[DeploymentFact],
    incidents: &[IncidentFact],
    start: f64,
    end: f64,
) -> Stats {
    let mut s = Stats::default();
    let mut lead = Vec::new();
    let mut durations = Vec::new();
    let within = |t: f64| t >= start && t <= end;
    for d in deployments.iter().filter(|d| within(d.finished)) {
        if d.manual_rollback {
            s.manual_rollbacks += 1;
            continue;
        }
        match d.ending {
            Ending::Succeeded => s.succeeded += 1,
            Ending::RolledBack => s.rolled_back += 1,
            Ending::RollbackFailed => s.rollback_failed += 1,
            Ending::Failed => s.failed += 1,
            Ending::NotStarted => {
                s.not_started += 1;
                continue;
            }
            Ending::CheckOnly => continue,
        }
        s.finished += 1;
        if let Some(st) = d.started {
            durations.push((d.finished - st).max(0.0));
        }
        if d.ending == Ending::Succeeded
            && let Some(c) = d.commit_time
        {
            lead.push((d.finished - c).max(0.0));
        }
    }
    let days = ((end - start) / 86_400.0).max(1.0 / 24.0);
    s.deployments_per_day = f64::from(s.finished) / days;
    s.lead_time_samples = lead.len() as u32;
    s.lead_time_median = median(&mut lead);
    s.lead_time_p95 = percentile(&mut lead, 0.95);
    if s.finished > 0 {
        let n = f64::from(s.finished);
        s.change_failure_rate = Some(f64::from(s.rolled_back + s.rollback_failed + s.failed) / n);
        let rate = f64::from(s.succeeded) / n;
        s.success_rate = Some(rate);
        s.success_rate_met = Some(rate >= SUCCESS_TARGET);
    }
    s.duration_p95 = percentile(&mut durations, 0.95);
    s.duration_p95_met = s.duration_p95.map(|p| p <= DURATION_P95_TARGET);
    let mut restore = Vec::new();
    for i in incidents.iter().filter(|i| within(i.opened)) {
        s.incidents_opened += 1;
        if let Some(r) = i.resolved {
            s.incidents_resolved += 1;
            restore.push((r - i.opened).max(0.0));
        }
    }
    s.time_to_restore_median = median(&mut restore);
    s
}

fn sort(v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    sort(v);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The nearest-rank percentile `q` (0 < q <= 1): the ceil(q n)-th smallest; `None` for no values.
pub fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    sort(v);
    let rank = (q * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: f64 = 86_400.0;

    fn dep(ending: Ending, started: f64, finished: f64, commit: Option<f64>) -> DeploymentFact {
        DeploymentFact {
            manual_rollback: false,
            ending,
            commit_time: commit,
            started: Some(started),
            finished,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_and_medians_average_the_middle() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.95), Some(19.0));
        assert_eq!(percentile(&mut [5.0], 0.95), Some(5.0));
        assert_eq!(percentile(&mut [], 0.95), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn figures_over_a_window() {
        let start = 0.0;
        let end = 10.0 * DAY;
        let mut d = Vec::new();
        // 18 succeeded, 60 s each, committed an hour before they went live.
        for i in 0..18 {
            let f = DAY + f64::from(i) * 1000.0;
            d.push(dep(Ending::Succeeded, f - 60.0, f, Some(f - 3600.0)));
        }
        // One rolled back after 900 s, one rollback failed after 1200 s.
        d.push(dep(
            Ending::RolledBack,
            2.0 * DAY,
            2.0 * DAY + 900.0,
            Some(DAY),
        ));
        d.push(dep(
            Ending::RollbackFailed,
            3.0 * DAY,
            3.0 * DAY + 1200.0,
            None,
        ));
        // Not counted as changes: aborted, check mode, a manual rollback; outside the window.
        d.push(DeploymentFact {
            started: None,
            ..dep(Ending::NotStarted, 0.0, 4.0 * DAY, None)
        });
        d.push(dep(Ending::CheckOnly, 4.0 * DAY, 4.0 * DAY + 5.0, None));
        d.push(DeploymentFact {
            manual_rollback: true,
            ..dep(Ending::Succeeded, 5.0 * DAY, 5.0 * DAY + 30.0, None)
        });
        d.push(dep(Ending::Failed, -DAY, -DAY + 10.0, None));
        let incidents = [
            IncidentFact {
                opened: 2.0 * DAY,
                resolved: Some(2.0 * DAY + 1800.0),
            },
            IncidentFact {
                opened: 3.0 * DAY,
                resolved: Some(3.0 * DAY + 7200.0),
            },
            IncidentFact {
                opened: 6.0 * DAY,
                resolved: None,
            },
            IncidentFact {
                opened: -5.0,
                resolved: Some(10.0),
            },
        ];
        let s = compute(&d, &incidents, start, end);
        assert_eq!(
            (
                s.finished,
                s.succeeded,
                s.rolled_back,
                s.rollback_failed,
                s.failed
            ),
            (20, 18, 1, 1, 0)
        );
        assert_eq!((s.not_started, s.manual_rollbacks), (1, 1));
        assert!((s.deployments_per_day - 2.0).abs() < 1e-12);
        assert_eq!(s.lead_time_samples, 18);
        assert_eq!(s.lead_time_median, Some(3600.0));
        assert_eq!(s.lead_time_p95, Some(3600.0));
        assert_eq!(s.change_failure_rate, Some(0.1));
        assert_eq!(s.success_rate, Some(0.9));
        assert_eq!(s.success_rate_met, Some(false));
        // 20 durations: 18 × 60, 900, 1200; the 19th smallest is 900.
        assert_eq!(s.duration_p95, Some(900.0));
        assert_eq!(s.duration_p95_met, Some(false));
        assert_eq!((s.incidents_opened, s.incidents_resolved), (3, 2));
        assert_eq!(s.time_to_restore_median, Some(4500.0));
    }

    #[test]
    fn a_healthy_window_meets_both_criteria() {
        let d: Vec<DeploymentFact> = (0..40)
            .map(|i| {
                let f = 100.0 + f64::from(i);
                dep(
                    if i == 0 {
                        Ending::RolledBack
                    } else {
                        Ending::Succeeded
                    },
                    f - 300.0,
                    f,
                    None,
                )
            })
            .collect();
        let s = compute(&d, &[], 0.0, DAY);
        assert_eq!(s.success_rate, Some(39.0 / 40.0));
        assert_eq!(s.success_rate_met, Some(true));
        assert_eq!(s.duration_p95, Some(300.0));
        assert_eq!(s.duration_p95_met, Some(true));
        assert_eq!((s.lead_time_samples, s.lead_time_median), (0, None));
        assert_eq!(s.time_to_restore_median, None);
    }

    #[test]
    fn no_deployment_means_no_figures() {
        let s = compute(&[], &[], 0.0, 30.0 * DAY);
        assert_eq!(s.finished, 0);
        assert_eq!(s.deployments_per_day, 0.0);
        assert_eq!(
            (s.success_rate, s.success_rate_met, s.change_failure_rate),
            (None, None, None)
        );
        assert_eq!((s.duration_p95, s.duration_p95_met), (None, None));
    }
}
