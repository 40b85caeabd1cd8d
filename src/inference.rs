//! The inference thread: takes the newest frame from the slot, runs the core monitor and
//! publishes every output. Runs on its own OS thread so a slow model never blocks the
//! executor; faults for a silent camera (`input_timeout`) and operator resets happen here too,
//! so every change of the monitor's state goes through one place.
//!
//! `~/ood` is only ever published while holding the status lock, with the state already
//! updated, so the heartbeat (node.rs) can never republish an older verdict over a newer one.

use crate::messages::{verdict_array, CameraMsg, VerdictRecord};
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
    pub shutdown: AtomicBool,
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
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost_in_queue: Arc::new(AtomicU64::new(0)),
            score_threshold: AtomicU64::new(score_threshold.to_bits()),
            cusum_threshold: AtomicU64::new(cusum_threshold.unwrap_or(0.0).to_bits()),
            status: Mutex::new(Status {
                state: MonitorState::Starting,
                counters: Counters::default(),
                latencies: vec![],
                busy_since: None,
                closed: false,
            }),
        }
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
        monitor: &Monitor,
        latency: Option<Duration>,
    ) {
        let mut s = self.status.lock().expect("status lock");
        s.state = state;
        s.counters = monitor.counters().clone();
        s.busy_since = None;
        if let Some(l) = latency {
            s.latencies.push(l);
        }
        if !s.closed {
            let _ = ood.publish(&Bool {
                data: state.is_ood(),
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
            data: s.state.is_ood(),
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

/// What the diagnostics and heartbeat tasks read, updated by the inference thread.
pub struct Status {
    pub state: MonitorState,
    pub counters: Counters,
    /// Per-frame latency (receive to publish) since the last diagnostics tick.
    pub latencies: Vec<Duration>,
    /// Set while the worker processes an event.
    pub busy_since: Option<Instant>,
    /// Set on shutdown: nothing but the final `true` may be published after it.
    pub closed: bool,
}

pub struct Publishers {
    pub ood: r2r::Publisher<Bool>,
    pub score: r2r::Publisher<Float32>,
    pub p_value: r2r::Publisher<Float32>,
    pub martingale: r2r::Publisher<Float32>,
    pub cusum: r2r::Publisher<Float32>,
    pub verdict: r2r::Publisher<DiagnosticArray>,
}

pub struct LoopCtx {
    pub logger: String,
    pub node_name: String,
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
    Shutdown,
}

/// Waits for the next event; `deadline` is when the camera counts as silent.
fn next_event(shared: &Shared, deadline: Option<Instant>) -> Event {
    let mut slot = shared.slot.lock().expect("slot lock");
    loop {
        if shared.shutdown.load(Ordering::Relaxed) {
            return Event::Shutdown;
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

pub fn run(mut monitor: Monitor, shared: &Shared, ctx: &LoopCtx, pubs: &Publishers) {
    let mut seq = 0u64;
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    // The camera counts as silent `input_timeout` after the last frame arrived (or after the
    // last timeout fault, which then repeats at that period).
    let mut last_input = Instant::now();
    loop {
        let deadline = ctx.input_timeout.map(|t| last_input + t);
        let event = next_event(shared, deadline);
        shared.mark_busy();
        let (verdict, header, received) = match event {
            Event::Shutdown => return,
            Event::Reset(waiters) => {
                let reply = monitor.is_calibrated().then(|| monitor.reset());
                let state = monitor.state();
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
                shared.publish_state(&pubs.ood, state, &monitor, None);
                for w in waiters {
                    let _ = w.send(reply);
                }
                continue;
            }
            Event::Timeout => {
                last_input = Instant::now();
                let t = ctx.input_timeout.expect("timeouts only with input_timeout");
                (
                    monitor.reject(Fault::InputTimeout(t)),
                    now_header(&ctx.clock),
                    None,
                )
            }
            Event::Frame(f) => {
                last_input = f.received;
                seq += 1;
                monitor.set_score_threshold(f64::from_bits(
                    shared.score_threshold.load(Ordering::Relaxed),
                ));
                let cusum = f64::from_bits(shared.cusum_threshold.load(Ordering::Relaxed));
                if cusum > 0.0 {
                    monitor.set_cusum_threshold(cusum);
                }
                let v = monitor.process(&f.msg.frame(), f.age);
                (v, f.msg.header().clone(), Some(f.received))
            }
        };

        let t_pub = Instant::now();
        publish_values(pubs, &verdict);
        shared.publish_state(
            &pubs.ood,
            verdict.state,
            &monitor,
            received.map(|r| r.elapsed()),
        );
        let record = VerdictRecord {
            header,
            node_name: &ctx.node_name,
            model_id: &ctx.model_id,
            backend: ctx.backend,
            device: &ctx.device,
            verdict: &verdict,
            seq,
            publish: t_pub.elapsed(),
            total: received.map_or(Duration::ZERO, |r| r.elapsed()),
            dropped: shared.dropped.load(Ordering::Relaxed),
            score_threshold: f64::from_bits(shared.score_threshold.load(Ordering::Relaxed)),
            cusum_threshold: monitor.pipeline().map(|p| p.cusum_threshold),
        };
        let _ = pubs.verdict.publish(&verdict_array(&record));

        if let Some(fault) = &verdict.fault {
            // Rate-limited: a broken camera must not flood the log.
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                let extra = if suppressed > 0 {
                    format!(" ({suppressed} similar messages suppressed)")
                } else {
                    String::new()
                };
                r2r::log_warn!(&ctx.logger, "frame {seq}: {fault}; verdict OOD{extra}");
                last_log = Some(Instant::now());
                suppressed = 0;
            } else {
                suppressed += 1;
            }
        }
    }
}

/// Score, p-value, log M and CUSUM (the verdict itself goes through `publish_state`).
fn publish_values(pubs: &Publishers, v: &FrameVerdict) {
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
