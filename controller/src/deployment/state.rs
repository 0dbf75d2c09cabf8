//! The states of a deployment and of its hosts as types, and the one transition function of
//! each machine.
//!
//! Inputs: the current state (read back from the stored record with [`Phase::from_record`] and
//! [`HostState::try_from`]) and what happened ([`PhaseEvent`], [`HostEvent`]). Outputs: the
//! next state, which the runner writes into the record as its protobuf projection
//! ([`Phase::state`], [`Phase::outcome`], `pb::HostState::from`), or an [`IllegalTransition`]
//! naming the state and the event. The machines are pure: no I/O, no clock.
//!
//! The legal transitions are exactly the ones the runner takes today, takeovers included (a
//! controller that resumes a deployment replays some events in the state it stored), so that a
//! refused transition means a bug, never an unusual but real flow.

use rampart_proto::v1 as pb;

/// How a finished deployment ended: `pb::DeploymentOutcome` without its "not set" value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every host runs the new version.
    Succeeded,
    /// The fleet rescue rolled every changed host back, each rollback verified.
    RolledBack,
    /// A rollback of the fleet rescue failed: critical.
    RollbackFailed,
    /// Failed without changing any host (a check-mode run found failures).
    Failed,
    /// Aborted before its first wave.
    Aborted,
    /// Check mode ran on every host without failures.
    CheckOnly,
    /// The environment lock was not acquired in time.
    LockTimeout,
    /// Not approved within the environment's approval timeout; nothing was touched.
    ApprovalTimedOut,
}

impl From<Outcome> for pb::DeploymentOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded => pb::DeploymentOutcome::Succeeded,
            Outcome::RolledBack => pb::DeploymentOutcome::RolledBack,
            Outcome::RollbackFailed => pb::DeploymentOutcome::RollbackFailed,
            Outcome::Failed => pb::DeploymentOutcome::Failed,
            Outcome::Aborted => pb::DeploymentOutcome::Aborted,
            Outcome::CheckOnly => pb::DeploymentOutcome::CheckOnly,
            Outcome::LockTimeout => pb::DeploymentOutcome::LockTimeout,
            Outcome::ApprovalTimedOut => pb::DeploymentOutcome::ApprovalTimedOut,
        }
    }
}

/// Where a deployment is: `pb::DeploymentState` with the outcome folded into `Finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting in the environment's queue for the lock; also while it plans with the lock held,
    /// until it awaits approval or starts its waves (the stored state says so today).
    Queued,
    /// Holds the lock and waits for `Approve`.
    AwaitingApproval,
    /// Running its waves.
    Running,
    /// The fleet rescue rolls back every host it changed.
    Rescuing,
    /// Over, with this outcome; accepts no event.
    Finished(Outcome),
}

/// What happens to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseEvent {
    /// The environment asks for `Approve` before the first wave, or a wave's canary analysis
    /// could not decide and the deployment pauses for a person.
    AwaitApproval,
    /// The waves start: approved, or no approval needed; again when a controller takes over a
    /// running deployment (its finished waves are skipped).
    StartWaves,
    /// The waves aborted, or ended with failed hosts: the fleet rescue starts.
    StartRescue,
    /// The deployment ends.
    Finish(Outcome),
}

/// A machine refused an event in a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// The deployment's machine refused.
    #[error("illegal deployment transition: state {from:?} does not take event {event:?}")]
    Phase {
        /// The state it was in.
        from: Phase,
        /// The refused event.
        event: PhaseEvent,
    },
    /// A host's machine refused.
    #[error("illegal host transition: state {from:?} does not take event {event:?}")]
    Host {
        /// The state it was in.
        from: HostState,
        /// The refused event.
        event: HostEvent,
    },
}

/// A stored record holds a state no machine knows (not set, or out of range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownState {
    /// The deployment's state (and outcome, when finished).
    #[error("the stored deployment state {state:?} (outcome {outcome:?}) is not a known phase")]
    Deployment {
        /// The stored state.
        state: pb::DeploymentState,
        /// The stored outcome.
        outcome: pb::DeploymentOutcome,
    },
    /// A host's state.
    #[error("the stored host state {0:?} is not a known host state")]
    Host(pb::HostState),
}

impl Phase {
    /// The phase a stored record is in.
    pub fn from_record(d: &pb::Deployment) -> Result<Phase, UnknownState> {
        use pb::DeploymentOutcome as DO;
        use pb::DeploymentState as DS;
        let unknown = || UnknownState::Deployment {
            state: d.state(),
            outcome: d.outcome(),
        };
        Ok(match d.state() {
            DS::Queued => Phase::Queued,
            DS::AwaitingApproval => Phase::AwaitingApproval,
            DS::Running => Phase::Running,
            DS::Rescuing => Phase::Rescuing,
            DS::Finished => Phase::Finished(match d.outcome() {
                DO::Succeeded => Outcome::Succeeded,
                DO::RolledBack => Outcome::RolledBack,
                DO::RollbackFailed => Outcome::RollbackFailed,
                DO::Failed => Outcome::Failed,
                DO::Aborted => Outcome::Aborted,
                DO::CheckOnly => Outcome::CheckOnly,
                DO::LockTimeout => Outcome::LockTimeout,
                DO::ApprovalTimedOut => Outcome::ApprovalTimedOut,
                DO::Unspecified => return Err(unknown()),
            }),
            DS::Unspecified => return Err(unknown()),
        })
    }

    /// The record's `state`.
    pub fn state(self) -> pb::DeploymentState {
        match self {
            Phase::Queued => pb::DeploymentState::Queued,
            Phase::AwaitingApproval => pb::DeploymentState::AwaitingApproval,
            Phase::Running => pb::DeploymentState::Running,
            Phase::Rescuing => pb::DeploymentState::Rescuing,
            Phase::Finished(_) => pb::DeploymentState::Finished,
        }
    }

    /// The record's `outcome`, once there is one.
    pub fn outcome(self) -> Option<pb::DeploymentOutcome> {
        match self {
            Phase::Finished(o) => Some(o.into()),
            _ => None,
        }
    }

    /// The deployment's machine: the phase after `event`, or why not.
    pub fn next(self, event: PhaseEvent) -> Result<Phase, IllegalTransition> {
        use Outcome as O;
        use Phase as P;
        use PhaseEvent as E;
        match (self, event) {
            (P::Queued, E::AwaitApproval) => Ok(P::AwaitingApproval),
            // Taken over while running under an environment that now requires approval, and
            // never approved: the runner asks for approval whenever nobody gave one yet.
            (P::Running, E::AwaitApproval) => Ok(P::AwaitingApproval),
            (P::Queued | P::AwaitingApproval | P::Running, E::StartWaves) => Ok(P::Running),
            (P::Running, E::StartRescue) => Ok(P::Rescuing),
            // Paused after a wave (its canary analysis could not decide) and aborted, or not
            // approved in time: the hosts already upgraded are rolled back.
            (P::AwaitingApproval, E::StartRescue) => Ok(P::Rescuing),
            (P::Queued, E::Finish(o @ (O::Aborted | O::LockTimeout))) => Ok(P::Finished(o)),
            // Aborted before approval, or not approved in time.
            (P::AwaitingApproval, E::Finish(o @ (O::Aborted | O::ApprovalTimedOut))) => {
                Ok(P::Finished(o))
            }
            // Failed: a check-mode run found failures.
            (P::Running, E::Finish(o @ (O::Succeeded | O::CheckOnly | O::Failed))) => {
                Ok(P::Finished(o))
            }
            // A controller that takes over a running deployment of an environment that requires
            // approval, whose abort was recorded before the takeover, sees the abort in the
            // approval step and ends it so, without a fleet rescue. Legal because the runner
            // does it today; it is a defect of the runner, not of this machine.
            (P::Running, E::Finish(O::Aborted)) => Ok(P::Finished(O::Aborted)),
            (P::Rescuing, E::Finish(o @ (O::RolledBack | O::RollbackFailed))) => Ok(P::Finished(o)),
            // A rollback (kind) whose fleet rescue put every host back where it was: it did not
            // reach its target, so it failed.
            (P::Rescuing, E::Finish(O::Failed)) => Ok(P::Finished(O::Failed)),
            (from, event) => Err(IllegalTransition::Phase { from, event }),
        }
    }
}

/// Where a host is in a deployment: `pb::HostState` without its "not set" value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostState {
    /// Not started yet.
    Pending,
    /// Its transaction (deploy, or fleet-rescue rollback) runs.
    Running,
    /// Its deploy transaction succeeded.
    Succeeded,
    /// Its deploy transaction failed and nothing restored it yet.
    Failed,
    /// Its agent could not be reached, or missed its deadline or heartbeat.
    Unreachable,
    /// Back on the version it ran before, verified (its own rescue or the fleet rescue).
    RolledBack,
    /// Its rollback failed: critical.
    RollbackFailed,
}

/// What happens to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostEvent {
    /// Its deploy transaction started on the agent, or is re-attached after a takeover.
    Started,
    /// Its deploy job ended in this state.
    Ended(HostState),
    /// Its fleet-rescue rollback started on the agent, or is re-attached after a takeover.
    RescueStarted,
    /// Its fleet-rescue job ended in this state.
    RescueEnded(HostState),
    /// The fleet rescue found no version it ran before: nothing to roll back to.
    NothingToRollBackTo,
}

impl HostState {
    /// A host's machine: the state after `event`, or why not.
    pub fn next(self, event: HostEvent) -> Result<HostState, IllegalTransition> {
        use HostEvent as E;
        use HostState as S;
        match (self, event) {
            (S::Pending | S::Running, E::Started) => Ok(S::Running),
            // The job ended before it reached the agent's transaction: nothing changed.
            (S::Pending, E::Ended(s @ (S::Failed | S::Unreachable))) => Ok(s),
            (
                S::Running,
                E::Ended(
                    s @ (S::Succeeded
                    | S::Failed
                    | S::Unreachable
                    | S::RolledBack
                    | S::RollbackFailed),
                ),
            ) => Ok(s),
            // The fleet rescue rolls back every host this deployment changed, except one its
            // own rescue restored; a running one is a rescue re-attached after a takeover.
            (
                S::Succeeded | S::Failed | S::RollbackFailed | S::Unreachable | S::Running,
                E::RescueStarted,
            ) => Ok(S::Running),
            // Restored by the rescue's rollback, or (unreachable) by its own journal once back,
            // or (rollback failed) found back on its captured versions by the re-check of a
            // retried rescue, after its previous attempt ended verified.
            (S::Running | S::Unreachable | S::RollbackFailed, E::RescueEnded(S::RolledBack)) => {
                Ok(S::RolledBack)
            }
            // A rescue job can fail before its transaction starts (agent unreachable).
            (
                S::Succeeded | S::Failed | S::RollbackFailed | S::Unreachable | S::Running,
                E::RescueEnded(S::RollbackFailed),
            ) => Ok(S::RollbackFailed),
            // Not from unreachable: such a host is awaited instead, its journal may restore it.
            (S::Succeeded | S::Failed | S::RollbackFailed | S::Running, E::NothingToRollBackTo) => {
                Ok(S::RollbackFailed)
            }
            (from, event) => Err(IllegalTransition::Host { from, event }),
        }
    }
}

impl TryFrom<pb::HostState> for HostState {
    type Error = UnknownState;

    fn try_from(s: pb::HostState) -> Result<Self, UnknownState> {
        Ok(match s {
            pb::HostState::Pending => HostState::Pending,
            pb::HostState::Running => HostState::Running,
            pb::HostState::Succeeded => HostState::Succeeded,
            pb::HostState::Failed => HostState::Failed,
            pb::HostState::Unreachable => HostState::Unreachable,
            pb::HostState::RolledBack => HostState::RolledBack,
            pb::HostState::RollbackFailed => HostState::RollbackFailed,
            pb::HostState::Unspecified => return Err(UnknownState::Host(s)),
        })
    }
}

impl From<HostState> for pb::HostState {
    fn from(s: HostState) -> Self {
        match s {
            HostState::Pending => pb::HostState::Pending,
            HostState::Running => pb::HostState::Running,
            HostState::Succeeded => pb::HostState::Succeeded,
            HostState::Failed => pb::HostState::Failed,
            HostState::Unreachable => pb::HostState::Unreachable,
            HostState::RolledBack => pb::HostState::RolledBack,
            HostState::RollbackFailed => pb::HostState::RollbackFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostEvent as HE;
    use HostState as S;
    use Outcome as O;
    use Phase as P;
    use PhaseEvent as E;

    const OUTCOMES: [Outcome; 8] = [
        O::Succeeded,
        O::RolledBack,
        O::RollbackFailed,
        O::Failed,
        O::Aborted,
        O::CheckOnly,
        O::LockTimeout,
        O::ApprovalTimedOut,
    ];

    const HOST_STATES: [HostState; 7] = [
        S::Pending,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::Unreachable,
        S::RolledBack,
        S::RollbackFailed,
    ];

    fn phases() -> Vec<Phase> {
        let mut v = vec![P::Queued, P::AwaitingApproval, P::Running, P::Rescuing];
        v.extend(OUTCOMES.map(P::Finished));
        v
    }

    fn phase_events() -> Vec<PhaseEvent> {
        let mut v = vec![E::AwaitApproval, E::StartWaves, E::StartRescue];
        v.extend(OUTCOMES.map(E::Finish));
        v
    }

    fn host_events() -> Vec<HostEvent> {
        let mut v = vec![HE::Started, HE::RescueStarted, HE::NothingToRollBackTo];
        v.extend(HOST_STATES.map(HE::Ended));
        v.extend(HOST_STATES.map(HE::RescueEnded));
        v
    }

    /// Every legal deployment transition: (from, event, to).
    fn legal_phase() -> Vec<(Phase, PhaseEvent, Phase)> {
        let mut v = vec![
            (P::Queued, E::AwaitApproval, P::AwaitingApproval),
            (P::Running, E::AwaitApproval, P::AwaitingApproval),
            (P::Queued, E::StartWaves, P::Running),
            (P::AwaitingApproval, E::StartWaves, P::Running),
            (P::Running, E::StartWaves, P::Running),
            (P::Running, E::StartRescue, P::Rescuing),
            (P::AwaitingApproval, E::StartRescue, P::Rescuing),
        ];
        let finishes = [
            (P::Queued, O::Aborted),
            (P::Queued, O::LockTimeout),
            (P::AwaitingApproval, O::Aborted),
            (P::AwaitingApproval, O::ApprovalTimedOut),
            (P::Running, O::Succeeded),
            (P::Running, O::CheckOnly),
            (P::Running, O::Failed),
            (P::Running, O::Aborted),
            (P::Rescuing, O::RolledBack),
            (P::Rescuing, O::RollbackFailed),
            (P::Rescuing, O::Failed),
        ];
        v.extend(
            finishes
                .into_iter()
                .map(|(from, o)| (from, E::Finish(o), P::Finished(o))),
        );
        v
    }

    /// Every legal host transition: (from, event, to).
    fn legal_host() -> Vec<(HostState, HostEvent, HostState)> {
        let mut v = vec![
            (S::Pending, HE::Started, S::Running),
            (S::Running, HE::Started, S::Running),
            (S::Pending, HE::Ended(S::Failed), S::Failed),
            (S::Pending, HE::Ended(S::Unreachable), S::Unreachable),
            (S::Running, HE::RescueEnded(S::RolledBack), S::RolledBack),
            (
                S::Unreachable,
                HE::RescueEnded(S::RolledBack),
                S::RolledBack,
            ),
            (
                S::RollbackFailed,
                HE::RescueEnded(S::RolledBack),
                S::RolledBack,
            ),
        ];
        for end in [
            S::Succeeded,
            S::Failed,
            S::Unreachable,
            S::RolledBack,
            S::RollbackFailed,
        ] {
            v.push((S::Running, HE::Ended(end), end));
        }
        for from in [
            S::Succeeded,
            S::Failed,
            S::RollbackFailed,
            S::Unreachable,
            S::Running,
        ] {
            v.push((from, HE::RescueStarted, S::Running));
            v.push((from, HE::RescueEnded(S::RollbackFailed), S::RollbackFailed));
            if from != S::Unreachable {
                v.push((from, HE::NothingToRollBackTo, S::RollbackFailed));
            }
        }
        v
    }

    #[test]
    fn every_legal_phase_transition() {
        for (from, ev, to) in legal_phase() {
            assert_eq!(from.next(ev), Ok(to), "{from:?} + {ev:?}");
        }
    }

    #[test]
    fn every_legal_host_transition() {
        for (from, ev, to) in legal_host() {
            assert_eq!(from.next(ev), Ok(to), "{from:?} + {ev:?}");
        }
    }

    #[test]
    fn the_phase_machine_refuses_everything_else() {
        let legal = legal_phase();
        for from in phases() {
            for event in phase_events() {
                if legal.iter().any(|(f, e, _)| *f == from && *e == event) {
                    continue;
                }
                assert_eq!(
                    from.next(event),
                    Err(IllegalTransition::Phase { from, event }),
                    "{from:?} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn the_host_machine_refuses_everything_else() {
        let legal = legal_host();
        for from in HOST_STATES {
            for event in host_events() {
                if legal.iter().any(|(f, e, _)| *f == from && *e == event) {
                    continue;
                }
                assert_eq!(
                    from.next(event),
                    Err(IllegalTransition::Host { from, event }),
                    "{from:?} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn representative_illegal_transitions() {
        let refused = [
            (P::Finished(O::Succeeded), E::StartWaves),
            (P::Finished(O::RolledBack), E::StartRescue),
            (P::Finished(O::Aborted), E::Finish(O::Aborted)),
            (P::Queued, E::StartRescue),
            (P::AwaitingApproval, E::AwaitApproval),
            (P::Queued, E::Finish(O::Succeeded)),
            (P::Running, E::Finish(O::RolledBack)),
            (P::Running, E::Finish(O::LockTimeout)),
            // Only a deployment that awaits approval can time out waiting for it.
            (P::Queued, E::Finish(O::ApprovalTimedOut)),
            (P::Running, E::Finish(O::ApprovalTimedOut)),
            (P::Rescuing, E::StartWaves),
            (P::Rescuing, E::Finish(O::Succeeded)),
            (P::Rescuing, E::Finish(O::Aborted)),
        ];
        for (from, ev) in refused {
            assert!(from.next(ev).is_err(), "{from:?} + {ev:?}");
        }
        let refused = [
            (S::Succeeded, HE::Started),
            (S::Failed, HE::Started),
            (S::RolledBack, HE::Started),
            (S::RolledBack, HE::RescueStarted),
            (S::Pending, HE::RescueStarted),
            (S::Pending, HE::Ended(S::Succeeded)),
            (S::Running, HE::Ended(S::Pending)),
            (S::Running, HE::Ended(S::Running)),
            (S::Running, HE::RescueEnded(S::Succeeded)),
            (S::Succeeded, HE::RescueEnded(S::RolledBack)),
            // Only a rescue job restores a host: a failed deploy is not "rolled back" by a
            // re-check, and a failed rollback is not restored by a deploy job.
            (S::Failed, HE::RescueEnded(S::RolledBack)),
            (S::RollbackFailed, HE::Ended(S::RolledBack)),
            (S::Succeeded, HE::Ended(S::Failed)),
            (S::Unreachable, HE::NothingToRollBackTo),
        ];
        for (from, ev) in refused {
            assert!(from.next(ev).is_err(), "{from:?} + {ev:?}");
        }
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for o in OUTCOMES {
            for ev in phase_events() {
                assert!(P::Finished(o).next(ev).is_err(), "{o:?} + {ev:?}");
            }
        }
        // Rolled back is the host's terminal state: its own rescue or the fleet rescue restored
        // it. Its other end states still take the fleet rescue's events, never a deploy one.
        for ev in host_events() {
            assert!(S::RolledBack.next(ev).is_err(), "{ev:?}");
        }
        for s in [S::Succeeded, S::Failed, S::Unreachable, S::RollbackFailed] {
            assert!(s.next(HE::Started).is_err(), "{s:?}");
            for end in HOST_STATES {
                assert!(s.next(HE::Ended(end)).is_err(), "{s:?} + {end:?}");
            }
        }
    }

    #[test]
    fn the_error_names_state_and_event() {
        let e = P::Finished(O::Succeeded).next(E::StartWaves).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal deployment transition: state Finished(Succeeded) does not take event StartWaves"
        );
        let e = S::Succeeded.next(HE::Started).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal host transition: state Succeeded does not take event Started"
        );
    }

    #[test]
    fn projections_round_trip() {
        for p in phases() {
            let d = pb::Deployment {
                state: p.state() as i32,
                outcome: p.outcome().unwrap_or_default() as i32,
                ..Default::default()
            };
            assert_eq!(Phase::from_record(&d), Ok(p));
        }
        for s in HOST_STATES {
            assert_eq!(HostState::try_from(pb::HostState::from(s)), Ok(s));
        }
        assert!(Phase::from_record(&pb::Deployment::default()).is_err());
        let finished_without_outcome = pb::Deployment {
            state: pb::DeploymentState::Finished as i32,
            ..Default::default()
        };
        assert!(Phase::from_record(&finished_without_outcome).is_err());
        assert!(HostState::try_from(pb::HostState::Unspecified).is_err());
    }
}
