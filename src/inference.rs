//! The inference thread: takes the newest frame from the slot, runs the core monitor and
//! publishes every output. Runs on its own OS thread so a slow model never blocks the
//! executor; faults for a silent camera (`input_timeout`) and operator resets happen here too,
//! so every change of the monitor's state goes through one place.
//!
//! `~/ood` is only ever published while holding the status lock, with the state already
//! updated, so the heartbeat (node.rs) can never republish an older verdict over a newer one.

use crate::messages::{time_to_nanos, verdict_array, CameraMsg, VerdictRecord};
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::std_msgs::msg::{Bool, Float32, Header};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vae_ood_core::monitor::{Counters, Fault, FrameAge, FrameVerdict, Monitor, MonitorState};

/// A frame waiting for inference.
pub struct Incoming {
    pub msg: CameraMsg,
    pub age: Option<FrameAge>,
    pub received: Instant,
}

/// The answer to an operator reset: the new state, or `None` when there is nothing to reset.
pub type ResetReply = Option<MonitorState>;

/// State shared by the subscription task, the inference thread, the services and the timers.
pub struct Shared {
    pub slot: Mutex<Option<Incoming>>,
    /// Operator resets waiting for the inference thread.
    pub resets: Mutex<Vec<oneshot::Sender<ResetReply>>>,
    pub wake: Condvar,
    /// The node is exiting: the worker and every loop stop.
    pub shutdown: AtomicBool,
    /// The worker stops and hands its pipelines back (a lifecycle cleanup); the node goes on.
    pub stop_worker: AtomicBool,
    /// Set by a lifecycle deactivation: the worker restarts every monitor (STARTING).
    restart: AtomicBool,
    /// Scoring frames (a lifecycle node's `active` state; always once started when unmanaged).
    /// While false, frames are not taken and `~/ood` is true.
    active: AtomicBool,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    /// Frames taken from DDS but lost because r2r's subscription queue was full (counted by
    /// our r2r fork, vendor/r2r), so they never reached [`Shared::offer`].
    pub lost_in_queue: Arc<AtomicU64>,
    /// f64 bits of live thresholds (changed with `ros2 param set`).
    pub score_threshold: AtomicU64,
    pub cusum_threshold: AtomicU64,
    pub status: Mutex<Status>,
}

impl Shared {
    pub fn new(score_threshold: f64, cusum_threshold: Option<f64>) -> Self {
        Self {
            slot: Mutex::new(None),
            resets: Mutex::new(vec![]),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            stop_worker: AtomicBool::new(false),
            restart: AtomicBool::new(false),
            active: AtomicBool::new(false),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost_in_queue: Arc::new(AtomicU64::new(0)),
            score_threshold: AtomicU64::new(score_threshold.to_bits()),
            cusum_threshold: AtomicU64::new(cusum_threshold.unwrap_or(0.0).to_bits()),
            status: Mutex::new(Status {
                state: MonitorState::Starting,
                counters: Counters::default(),
                detectors: vec![],
                latencies: vec![],
                busy_since: None,
                closed: false,
            }),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts or stops scoring. Either way the worker restarts its monitors (evidence from
    /// before a pause never decides after it) and its silent-camera timer, which runs only
    /// while active. Stopping publishes `~/ood = true` at once.
    pub fn set_active(&self, active: bool, ood: &r2r::Publisher<Bool>) {
        let s = self.status.lock().expect("status lock");
        self.active.store(active, Ordering::Relaxed);
        {
            let mut slot = self.slot.lock().expect("slot lock");
            slot.take();
            self.restart.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
        if !active && !s.closed {
            let _ = ood.publish(&Bool { data: true });
        }
    }

    /// Stops the worker (it returns its pipelines) without stopping the node.
    pub fn request_worker_stop(&self) {
        let _slot = self.slot.lock().expect("slot lock");
        self.stop_worker.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// After a worker has stopped: no detectors, STARTING, ready for the next worker.
    pub fn clear(&self) {
        let mut s = self.status.lock().expect("status lock");
        s.state = MonitorState::Starting;
        s.detectors.clear();
        s.busy_since = None;
        self.slot.lock().expect("slot lock").take();
        self.stop_worker.store(false, Ordering::Relaxed);
        self.restart.store(false, Ordering::Relaxed);
    }

    /// Puts a frame in the slot; a frame still waiting there is dropped and counted.
    pub fn offer(&self, frame: Incoming) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.slot.lock().expect("slot lock");
        if slot.replace(frame).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // Notify while holding the lock: the worker cannot miss it between check and wait.
        self.wake.notify_one();
    }

    pub fn request_reset(&self) -> oneshot::Receiver<ResetReply> {
        let (tx, rx) = oneshot::channel();
        let _slot = self.slot.lock().expect("slot lock");
        self.resets.lock().expect("reset lock").push(tx);
        self.wake.notify_one();
        rx
    }

    /// Stops the worker and the heartbeat, then publishes the final `~/ood = true`.
    pub fn stop(&self, ood: &r2r::Publisher<Bool>) {
        {
            let _slot = self.slot.lock().expect("slot lock");
            self.shutdown.store(true, Ordering::Relaxed);
            self.wake.notify_all();
        }
        let mut s = self.status.lock().expect("status lock");
        s.closed = true;
        let _ = ood.publish(&Bool { data: true });
    }

    /// Records the new state and publishes `~/ood` under the status lock.
    fn publish_state(
        &self,
        ood: &r2r::Publisher<Bool>,
        state: MonitorState,
        pipelines: &[Pipeline],
        latency: Option<Duration>,
    ) {
        let mut s = self.status.lock().expect("status lock");
        s.state = state;
        // Every pipeline sees every frame: the first one's counts are the node's.
        s.counters = pipelines[0].monitor.counters().clone();
        s.detectors = pipelines
            .iter()
            .map(|p| DetectorStatus {
                name: p.name.clone(),
                model_id: p.model_id.clone(),
                state: p.monitor.state(),
                counters: p.monitor.counters().clone(),
            })
            .collect();
        s.busy_since = None;
        if let Some(l) = latency {
            s.latencies.push(l);
        }
        if !s.closed {
            let _ = ood.publish(&Bool {
                data: state.is_ood() || !self.is_active(),
            });
        }
    }

    /// The heartbeat: republishes the current verdict unless the node is closing or the worker
    /// has been busy with one event for longer than `max_busy` (hung pipeline: silence).
    pub fn heartbeat(&self, ood: &r2r::Publisher<Bool>, max_busy: Duration) {
        let s = self.status.lock().expect("status lock");
        if s.closed || s.stalled(max_busy).is_some() {
            return;
        }
        let _ = ood.publish(&Bool {
            data: s.state.is_ood() || !self.is_active(),
        });
    }

    /// How long the worker has been on one event, if that is longer than `max_busy` (hung).
    pub fn stalled(&self, max_busy: Duration) -> Option<Duration> {
        self.status.lock().expect("status lock").stalled(max_busy)
    }

    fn mark_busy(&self) {
        self.status.lock().expect("status lock").busy_since = Some(Instant::now());
    }
}

impl Status {
    /// How long the worker has been on one event, if that is longer than `max_busy` (hung):
    /// what silences the heartbeat and turns /diagnostics to ERROR.
    fn stalled(&self, max_busy: Duration) -> Option<Duration> {
        self.busy_since
            .map(|t| t.elapsed())
            .filter(|&busy| busy > max_busy)
    }
}

/// One detector's state and counts, for `/diagnostics` with several detectors.
#[derive(Debug, Clone)]
pub struct DetectorStatus {
    pub name: String,
    pub model_id: String,
    pub state: MonitorState,
    pub counters: Counters,
}

/// What the diagnostics and heartbeat tasks read, updated by the inference thread.
pub struct Status {
    /// The node's verdict: every detector's combined ([`MonitorState::combine`]).
    pub state: MonitorState,
    pub counters: Counters,
    pub detectors: Vec<DetectorStatus>,
    /// Per-frame latency (receive to publish) since the last diagnostics tick.
    pub latencies: Vec<Duration>,
    /// Set while the worker processes an event.
    pub busy_since: Option<Instant>,
    /// Set on shutdown: nothing but the final `true` may be published after it.
    pub closed: bool,
}

/// The node's own outputs: the combined verdict, and with several detectors the combined
/// `~/verdict` record (with one, the detector's record is `~/verdict`).
pub struct Publishers {
    pub ood: r2r::Publisher<Bool>,
    pub verdict: Option<r2r::Publisher<DiagnosticArray>>,
}

/// One detector's outputs: at the node's top level for a single detector, under
/// `~/<name>/` with several (then with its own `ood` too).
pub struct PipelinePublishers {
    pub ood: Option<r2r::Publisher<Bool>>,
    pub score: r2r::Publisher<Float32>,
    pub p_value: r2r::Publisher<Float32>,
    pub martingale: r2r::Publisher<Float32>,
    pub cusum: r2r::Publisher<Float32>,
    pub verdict: r2r::Publisher<DiagnosticArray>,
}

/// One detector on the camera: its monitor (pipeline and state) and outputs.
pub struct Pipeline {
    /// Empty for a single detector; else its outputs' namespace (`~/<name>/`).
    pub name: String,
    pub model_id: String,
    pub monitor: Monitor,
    pub pubs: PipelinePublishers,
}

pub struct LoopCtx {
    pub logger: String,
    pub node_name: String,
    /// Every detector's model id (comma-separated with several).
    pub model_id: String,
    /// Where the encoder runs (`backend`, `device`), on every verdict.
    pub backend: &'static str,
    pub device: String,
    pub input_timeout: Option<Duration>,
    pub clock: Arc<Mutex<r2r::Clock>>,
}

enum Event {
    Frame(Incoming),
    Reset(Vec<oneshot::Sender<ResetReply>>),
    Timeout,
    Restart,
    Shutdown,
}

/// Waits for the next event; `deadline` is when the camera counts as silent.
fn next_event(shared: &Shared, deadline: Option<Instant>) -> Event {
    let mut slot = shared.slot.lock().expect("slot lock");
    loop {
        if shared.shutdown.load(Ordering::Relaxed) || shared.stop_worker.load(Ordering::Relaxed) {
            return Event::Shutdown;
        }
        if shared.restart.swap(false, Ordering::Relaxed) {
            return Event::Restart;
        }
        let resets = std::mem::take(&mut *shared.resets.lock().expect("reset lock"));
        if !resets.is_empty() {
            return Event::Reset(resets);
        }
        if let Some(f) = slot.take() {
            return Event::Frame(f);
        }
        slot = match deadline {
            None => shared.wake.wait(slot).expect("slot lock"),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Event::Timeout;
                }
                shared
                    .wake
                    .wait_timeout(slot, d - now)
                    .expect("slot lock")
                    .0
            }
        };
    }
}

/// Runs until the node shuts down or the worker is asked to stop; returns the pipelines so
/// that their publishers can be destroyed (a lifecycle cleanup).
pub fn run(
    mut pipelines: Vec<Pipeline>,
    shared: &Shared,
    ctx: &LoopCtx,
    pubs: &Publishers,
) -> Vec<Pipeline> {
    let mut seq = 0u64;
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    // Run-time threshold changes apply to a single detector only (params.rs refuses them
    // with several: each bundle's scale is its own).
    let single = pipelines.len() == 1;
    // The camera counts as silent `input_timeout` after the last frame arrived (or after the
    // last timeout fault, which then repeats at that period).
    let mut last_input = Instant::now();
    loop {
        let deadline = ctx
            .input_timeout
            .filter(|_| shared.is_active())
            .map(|t| last_input + t);
        let event = next_event(shared, deadline);
        shared.mark_busy();
        let (verdicts, header, received): (Vec<FrameVerdict>, Header, _) = match event {
            Event::Shutdown => return pipelines,
            Event::Restart => {
                for p in &mut pipelines {
                    if let Err(e) = p.monitor.restart() {
                        // Cannot happen for a bundle that loaded; the monitor stays as it was.
                        r2r::log_error!(&ctx.logger, "restarting detector {}: {e}", p.model_id);
                    }
                }
                // No input while paused: the silent-camera timer starts again on activation.
                last_input = Instant::now();
                shared.publish_state(&pubs.ood, combined(&pipelines), &pipelines, None);
                continue;
            }
            Event::Reset(waiters) => {
                let calibrated = pipelines.iter().any(|p| p.monitor.is_calibrated());
                for p in pipelines.iter_mut().filter(|p| p.monitor.is_calibrated()) {
                    p.monitor.reset();
                }
                let state = combined(&pipelines);
                let reply = calibrated.then_some(state);
                match reply {
                    Some(s) => r2r::log_info!(
                        &ctx.logger,
                        "reset by request: CUSUM zeroed, state {}",
                        s.as_str()
                    ),
                    None => r2r::log_warn!(
                        &ctx.logger,
                        "reset requested, but the bundle is uncalibrated: nothing to reset"
                    ),
                }
                shared.publish_state(&pubs.ood, state, &pipelines, None);
                for w in waiters {
                    let _ = w.send(reply);
                }
                continue;
            }
            Event::Timeout => {
                last_input = Instant::now();
                let t = ctx.input_timeout.expect("timeouts only with input_timeout");
                let v = pipelines
                    .iter_mut()
                    .map(|p| p.monitor.reject(Fault::InputTimeout(t)))
                    .collect();
                (v, now_header(&ctx.clock), None)
            }
            Event::Frame(f) => {
                last_input = f.received;
                seq += 1;
                if single {
                    let m = &mut pipelines[0].monitor;
                    m.set_score_threshold(f64::from_bits(
                        shared.score_threshold.load(Ordering::Relaxed),
                    ));
                    let cusum = f64::from_bits(shared.cusum_threshold.load(Ordering::Relaxed));
                    if cusum > 0.0 {
                        m.set_cusum_threshold(cusum);
                    }
                }
                let frame = f.msg.frame();
                let stamp = time_to_nanos(&f.msg.header().stamp);
                let stamp = (stamp > 0).then_some(stamp);
                let v = pipelines
                    .iter_mut()
                    .map(|p| p.monitor.process_at(&frame, f.age, stamp))
                    .collect();
                (v, f.msg.header().clone(), Some(f.received))
            }
        };

        let t_pub = Instant::now();
        for (p, v) in pipelines.iter().zip(&verdicts) {
            publish_values(&p.pubs, v);
        }
        let state = MonitorState::combine(verdicts.iter().map(|v| v.state));
        shared.publish_state(&pubs.ood, state, &pipelines, received.map(|r| r.elapsed()));
        let base = VerdictRecord {
            header: header.clone(),
            node_name: &ctx.node_name,
            model_id: &ctx.model_id,
            backend: ctx.backend,
            device: &ctx.device,
            verdict: &verdicts[0],
            seq,
            publish: t_pub.elapsed(),
            total: received.map_or(Duration::ZERO, |r| r.elapsed()),
            dropped: shared.dropped.load(Ordering::Relaxed),
            score_threshold: f64::from_bits(shared.score_threshold.load(Ordering::Relaxed)),
            cusum_threshold: None,
            detectors: vec![],
        };
        for (p, v) in pipelines.iter().zip(&verdicts) {
            let r = VerdictRecord {
                header: header.clone(),
                model_id: &p.model_id,
                verdict: v,
                cusum_threshold: p.monitor.pipeline().map(|c| c.cusum_threshold),
                detectors: vec![],
                ..base
            };
            let _ = p.pubs.verdict.publish(&verdict_array(&r));
        }
        if let Some(top) = &pubs.verdict {
            // The node's verdict: the combined state, the first fault, and each detector's.
            let node = FrameVerdict {
                state,
                score: None,
                fault: verdicts.iter().find_map(|v| v.fault.clone()),
                timing: verdicts[0].timing,
                step: None,
            };
            let r = VerdictRecord {
                verdict: &node,
                detectors: pipelines
                    .iter()
                    .zip(&verdicts)
                    .map(|(p, v)| (p.name.clone(), v.state))
                    .collect(),
                ..base
            };
            let _ = top.publish(&verdict_array(&r));
        }

        // Warm-up is not a fault: it is not logged.
        let fault = verdicts.iter().zip(&pipelines).find_map(|(v, p)| {
            v.fault
                .as_ref()
                .filter(|f| !matches!(f, Fault::WarmingUp { .. }))
                .map(|f| (f, p))
        });
        if let Some((fault, p)) = fault {
            // Rate-limited: a broken camera must not flood the log.
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                let extra = if suppressed > 0 {
                    format!(" ({suppressed} similar messages suppressed)")
                } else {
                    String::new()
                };
                let who = if p.name.is_empty() {
                    String::new()
                } else {
                    format!(" (detector {})", p.name)
                };
                r2r::log_warn!(&ctx.logger, "frame {seq}: {fault}{who}; verdict OOD{extra}");
                last_log = Some(Instant::now());
                suppressed = 0;
            } else {
                suppressed += 1;
            }
        }
    }
}

/// The node's verdict from its detectors' states.
fn combined(pipelines: &[Pipeline]) -> MonitorState {
    MonitorState::combine(pipelines.iter().map(|p| p.monitor.state()))
}

/// Score, p-value, log M and CUSUM (the verdict itself goes through `publish_state`).
fn publish_values(pubs: &PipelinePublishers, v: &FrameVerdict) {
    if let Some(ood) = &pubs.ood {
        let _ = ood.publish(&Bool { data: v.is_ood() });
    }
    if let Some(score) = v.score {
        let _ = pubs.score.publish(&Float32 { data: score as f32 });
    }
    if let Some(st) = &v.step {
        let _ = pubs.p_value.publish(&Float32 {
            data: st.p_value as f32,
        });
        let _ = pubs.martingale.publish(&Float32 {
            data: st.log_martingale as f32,
        });
        let _ = pubs.cusum.publish(&Float32 {
            data: st.cusum as f32,
        });
    }
}

fn now_header(clock: &Mutex<r2r::Clock>) -> Header {
    Header {
        stamp: crate::messages::now_stamp(clock),
        frame_id: String::new(),
    }
}
