//! A ROS 2 managed (lifecycle) node over r2r, which has none: the standard state machine of
//! `rcl_lifecycle` (the same states, transitions, ids and labels, checked against rclpy's in
//! test/test_lifecycle_live.py), its five services and `~/transition_event`.
//!
//! The state machine is plain data ([`GRAPH`]) so it is tested without ROS; [`Server`] puts
//! it on a node. What a transition *does* is the node's business: it takes the
//! `~/change_state` requests from [`Server::requests`], calls [`Server::begin`], does the work
//! and reports the outcome with [`Server::finish`].

use anyhow::Result;
use futures::{Stream, StreamExt};
use r2r::lifecycle_msgs::msg::{
    State as StateMsg, Transition as TransitionMsg, TransitionDescription, TransitionEvent,
};
use r2r::lifecycle_msgs::srv::{
    ChangeState, GetAvailableStates, GetAvailableTransitions, GetState,
};
use r2r::QosProfile;
use std::sync::{Arc, Mutex};

/// Primary and transition states, with `lifecycle_msgs/msg/State`'s ids and rcl's labels.
pub const STATES: &[(u8, &str)] = &[
    (0, "unknown"),
    (1, "unconfigured"),
    (2, "inactive"),
    (3, "active"),
    (4, "finalized"),
    (10, "configuring"),
    (11, "cleaningup"),
    (12, "shuttingdown"),
    (13, "activating"),
    (14, "deactivating"),
    (15, "errorprocessing"),
];

pub const UNCONFIGURED: u8 = 1;
pub const INACTIVE: u8 = 2;
pub const ACTIVE: u8 = 3;
pub const FINALIZED: u8 = 4;
const ERROR_PROCESSING: u8 = 15;

/// rcl_lifecycle's default transition graph: (transition id, label, start state, goal state).
/// Ids below 10 are requested; the others end a transition state with the callback's result.
pub const GRAPH: &[(u8, &str, u8, u8)] = &[
    (1, "configure", 1, 10),
    (10, "transition_success", 10, 2),
    (11, "transition_failure", 10, 1),
    (12, "transition_error", 10, 15),
    (2, "cleanup", 2, 11),
    (20, "transition_success", 11, 1),
    (21, "transition_failure", 11, 2),
    (22, "transition_error", 11, 15),
    (3, "activate", 2, 13),
    (30, "transition_success", 13, 3),
    (31, "transition_failure", 13, 2),
    (32, "transition_error", 13, 15),
    (4, "deactivate", 3, 14),
    (40, "transition_success", 14, 2),
    (41, "transition_failure", 14, 3),
    (42, "transition_error", 14, 15),
    (5, "shutdown", 1, 12),
    (6, "shutdown", 2, 12),
    (7, "shutdown", 3, 12),
    (50, "transition_success", 12, 4),
    (51, "transition_failure", 12, 4),
    (52, "transition_error", 12, 15),
    (60, "transition_success", 15, 1),
    (61, "transition_failure", 15, 4),
    (62, "transition_error", 15, 4),
];

/// What the node is asked to do, whichever shutdown transition asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Configure,
    Cleanup,
    Activate,
    Deactivate,
    Shutdown,
}

/// How a transition's work ended (rcl's SUCCESS, FAILURE, ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the goal state.
    Success,
    /// Refused (nothing changed): back to the start state.
    Failure,
    /// Went wrong midway: error processing, which cannot recover it and ends finalized.
    Error,
}

fn label(state: u8) -> &'static str {
    STATES
        .iter()
        .find(|(id, _)| *id == state)
        .map_or("unknown", |(_, l)| l)
}

pub fn state_msg(id: u8) -> StateMsg {
    StateMsg {
        id,
        label: label(id).into(),
    }
}

fn description(&(id, label, start, goal): &(u8, &str, u8, u8)) -> TransitionDescription {
    TransitionDescription {
        transition: TransitionMsg {
            id,
            label: label.into(),
        },
        start_state: state_msg(start),
        goal_state: state_msg(goal),
    }
}

/// A requested transition from `state`, by label when one is given (as rclpy and rclcpp do),
/// else by id; `None` when it is not available from `state`.
pub fn lookup(state: u8, id: u8, label: &str) -> Option<&'static (u8, &'static str, u8, u8)> {
    GRAPH.iter().find(|t| {
        t.2 == state
            && t.0 < 10
            && if label.is_empty() {
                t.0 == id
            } else {
                t.1 == label
            }
    })
}

/// The transition that ends `intermediate` with `outcome`.
pub fn ending(intermediate: u8, outcome: Outcome) -> &'static (u8, &'static str, u8, u8) {
    let label = match outcome {
        Outcome::Success => "transition_success",
        Outcome::Failure => "transition_failure",
        Outcome::Error => "transition_error",
    };
    GRAPH
        .iter()
        .find(|t| t.2 == intermediate && t.1 == label)
        .expect("every transition state ends in each outcome")
}

fn action(transition: u8) -> Action {
    match transition {
        1 => Action::Configure,
        2 => Action::Cleanup,
        3 => Action::Activate,
        4 => Action::Deactivate,
        _ => Action::Shutdown,
    }
}

/// A transition under way: what to do, and the state it started in.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub action: Action,
    intermediate: u8,
}

/// The lifecycle services and `~/transition_event` on a node.
pub struct Server {
    state: Arc<Mutex<u8>>,
    events: r2r::Publisher<TransitionEvent>,
    clock: Arc<Mutex<r2r::Clock>>,
}

/// A `~/change_state` request waiting for its answer.
pub type Request = r2r::ServiceRequest<ChangeState::Service>;

impl Server {
    /// Creates the services (answered by tasks spawned here, except `~/change_state`, whose
    /// requests come back as the stream) in state `unconfigured`.
    pub fn new(node: &mut r2r::Node) -> Result<(Self, impl Stream<Item = Request> + Unpin + Send)> {
        let state = Arc::new(Mutex::new(UNCONFIGURED));
        let qos = QosProfile::services_default;
        let changes = node.create_service::<ChangeState::Service>("~/change_state", qos())?;
        let mut get_state = node.create_service::<GetState::Service>("~/get_state", qos())?;
        let mut states =
            node.create_service::<GetAvailableStates::Service>("~/get_available_states", qos())?;
        let mut available = node.create_service::<GetAvailableTransitions::Service>(
            "~/get_available_transitions",
            qos(),
        )?;
        let mut graph = node
            .create_service::<GetAvailableTransitions::Service>("~/get_transition_graph", qos())?;
        let events = node.create_publisher::<TransitionEvent>(
            "~/transition_event",
            QosProfile::default().keep_last(10).reliable(),
        )?;
        tokio::spawn({
            let state = state.clone();
            async move {
                while let Some(req) = get_state.next().await {
                    let current_state = state_msg(*state.lock().expect("lifecycle state"));
                    let _ = req.respond(GetState::Response { current_state });
                }
            }
        });
        tokio::spawn(async move {
            while let Some(req) = states.next().await {
                let available_states = STATES.iter().map(|(id, _)| state_msg(*id)).collect();
                let _ = req.respond(GetAvailableStates::Response { available_states });
            }
        });
        tokio::spawn({
            let state = state.clone();
            async move {
                while let Some(req) = available.next().await {
                    let s = *state.lock().expect("lifecycle state");
                    // Only requestable transitions from a primary state, as rcl does.
                    let available_transitions = GRAPH
                        .iter()
                        .filter(|t| t.2 == s && t.0 < 10)
                        .map(description)
                        .collect();
                    let _ = req.respond(GetAvailableTransitions::Response {
                        available_transitions,
                    });
                }
            }
        });
        tokio::spawn(async move {
            while let Some(req) = graph.next().await {
                let available_transitions = GRAPH.iter().map(description).collect();
                let _ = req.respond(GetAvailableTransitions::Response {
                    available_transitions,
                });
            }
        });
        let clock = node.get_ros_clock();
        Ok((
            Self {
                state,
                events,
                clock,
            },
            changes,
        ))
    }

    /// The current state, for whoever reports it (`/diagnostics`).
    pub fn state_handle(&self) -> Arc<Mutex<u8>> {
        self.state.clone()
    }

    pub fn state(&self) -> u8 {
        *self.state.lock().expect("lifecycle state")
    }

    /// Starts the requested transition, if it is available: enters its transition state and
    /// publishes the event. `None` (answer `success: false`) when it is not.
    pub fn begin(&self, requested: &TransitionMsg) -> Option<Step> {
        let mut state = self.state.lock().expect("lifecycle state");
        let t = lookup(*state, requested.id, &requested.label)?;
        self.publish(t);
        *state = t.3;
        Some(Step {
            action: action(t.0),
            intermediate: t.3,
        })
    }

    /// Ends a transition with the outcome of its work; returns the new primary state. An error
    /// (the work failed midway: the node's state is unknown) goes through error processing,
    /// which cannot recover it here: it ends finalized, fail-safe, for an operator to restart.
    pub fn finish(&self, step: Step, outcome: Outcome) -> u8 {
        let mut state = self.state.lock().expect("lifecycle state");
        let t = ending(step.intermediate, outcome);
        self.publish(t);
        *state = t.3;
        if t.3 == ERROR_PROCESSING {
            let t = ending(ERROR_PROCESSING, Outcome::Failure);
            self.publish(t);
            *state = t.3;
        }
        *state
    }

    /// Waits for the next request of an available transition and starts it; a request that
    /// is not available from the current state is refused (answered `success: false`) here.
    /// `None` when the service's stream ends.
    pub async fn next(
        &self,
        changes: &mut (impl Stream<Item = Request> + Unpin),
        logger: &str,
    ) -> Option<(Request, Step)> {
        loop {
            let req = changes.next().await?;
            match self.begin(&req.message.transition) {
                Some(step) => return Some((req, step)),
                None => {
                    r2r::log_warn!(
                        logger,
                        "lifecycle: transition '{}' (id {}) is not available in state {}; refused",
                        req.message.transition.label,
                        req.message.transition.id,
                        label(self.state())
                    );
                    let _ = req.respond(ChangeState::Response { success: false });
                }
            }
        }
    }

    /// Ends a transition with the result of its work (an error carries the outcome it means),
    /// logs it and answers the request.
    pub fn complete(
        &self,
        req: Request,
        step: Step,
        result: Result<(), (Outcome, anyhow::Error)>,
        logger: &str,
    ) {
        let outcome = match &result {
            Ok(()) => Outcome::Success,
            Err((o, e)) => {
                r2r::log_error!(logger, "lifecycle {:?}: {e:#}", step.action);
                *o
            }
        };
        let state = self.finish(step, outcome);
        r2r::log_info!(
            logger,
            "lifecycle {:?}: {outcome:?}, now {}",
            step.action,
            label(state)
        );
        let _ = req.respond(ChangeState::Response {
            success: outcome == Outcome::Success,
        });
    }

    fn publish(&self, t: &(u8, &str, u8, u8)) {
        let d = description(t);
        let timestamp = crate::messages::time_to_nanos(&crate::messages::now_stamp(&self.clock));
        let _ = self.events.publish(&TransitionEvent {
            timestamp: timestamp.max(0) as u64,
            transition: d.transition,
            start_state: d.start_state,
            goal_state: d.goal_state,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_state_ends_in_each_outcome_and_goes_to_a_known_state() {
        for (id, _) in STATES.iter().filter(|(id, _)| *id >= 10) {
            for o in [Outcome::Success, Outcome::Failure, Outcome::Error] {
                let t = ending(*id, o);
                assert!(STATES.iter().any(|(s, _)| *s == t.3));
            }
        }
    }

    #[test]
    fn requests_by_label_or_id_from_the_right_state_only() {
        assert_eq!(lookup(UNCONFIGURED, 1, "").unwrap().3, 10);
        assert_eq!(lookup(UNCONFIGURED, 0, "configure").unwrap().0, 1);
        assert!(
            lookup(UNCONFIGURED, 3, "").is_none(),
            "activate before configure"
        );
        assert!(lookup(INACTIVE, 0, "deactivate").is_none());
        // One label, three ids: the state decides which shutdown it is.
        assert_eq!(lookup(ACTIVE, 0, "shutdown").unwrap().0, 7);
        assert_eq!(lookup(INACTIVE, 0, "shutdown").unwrap().0, 6);
        assert!(lookup(FINALIZED, 0, "configure").is_none());
        // Result transitions cannot be requested.
        assert!(lookup(10, 10, "").is_none());
        assert!(lookup(10, 0, "transition_success").is_none());
    }
}
