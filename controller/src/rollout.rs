//! Rollout arithmetic: how a fleet is cut into waves (`serial`, from
//! [`rampart_playbook::serial`]) and when a wave's failures stop the deployment
//! (`max_fail_percentage`), with Ansible's observed rules
//! (`docs/notes/ansible-semantics.md`).
//!
//! Pure functions, no I/O: the controller's rollout (the controller work) asks them what to do.
//! - `serial` is a number, a percentage (`"25%"`, of all hosts, rounded down, at least 1) or a
//!   list of those; the list's last element repeats for the hosts left. No `serial`: one wave.
//! - With `max_fail_percentage`, a wave whose failed share (unreachable hosts count as failed)
//!   is strictly greater aborts; without it, a wave in which every host failed aborts.

pub use rampart_playbook::serial::{Serial, parse_serial, waves};

/// What a finished wave means for the deployment.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go on with the next wave.
    Continue,
    /// Stop: no further wave starts; the fleet rescue rolls back what changed.
    Abort(String),
}

/// The verdict on a wave of `size` hosts of which `failed` failed and `unreachable` could not
/// be reached (they count as failed).
pub fn wave_verdict(
    size: usize,
    failed: usize,
    unreachable: usize,
    max_fail_percentage: Option<f64>,
) -> Verdict {
    let bad = failed + unreachable;
    if size == 0 || bad == 0 {
        return Verdict::Continue;
    }
    let share = bad as f64 * 100.0 / size as f64;
    match max_fail_percentage {
        Some(max) if share > max => Verdict::Abort(format!(
            "{bad} of {size} hosts failed or unreachable ({share:.1}%), over max_fail_percentage {max}%"
        )),
        Some(_) => Verdict::Continue,
        None if bad >= size => Verdict::Abort(format!(
            "every host of the wave ({size}) failed or was unreachable"
        )),
        None => Verdict::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_thresholds_are_strictly_greater() {
        // 1 of 4 with max_fail_percentage 25 continues; 2 of 5 with 30 aborts.
        assert_eq!(wave_verdict(4, 1, 0, Some(25.0)), Verdict::Continue);
        assert!(matches!(
            wave_verdict(5, 2, 0, Some(30.0)),
            Verdict::Abort(_)
        ));
        assert_eq!(wave_verdict(5, 1, 0, Some(30.0)), Verdict::Continue);
        // Unreachable hosts count toward the threshold.
        assert!(matches!(
            wave_verdict(5, 1, 1, Some(30.0)),
            Verdict::Abort(_)
        ));
        // Without a threshold only a wholly failed wave aborts.
        assert_eq!(wave_verdict(3, 2, 0, None), Verdict::Continue);
        assert!(matches!(wave_verdict(3, 2, 1, None), Verdict::Abort(_)));
        assert_eq!(wave_verdict(3, 0, 0, None), Verdict::Continue);
    }
}
