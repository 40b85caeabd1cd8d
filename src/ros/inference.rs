//! The inference thread: takes the newest frame from the slot, runs the core monitor and
//! publishes every output. Runs on its own OS thread so a slow model never blocks the
//! executor; faults for a silent camera (`input_timeout`) and operator resets happen here too,
//! so every change of the monitor's state goes through one place.

use super::messages::{verdict_array, CameraMsg, VerdictRecord};
use crate::monitor::{Counters, Fault, FrameVerdict, Monitor, MonitorState};
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::std_msgs::msg::{Bool, Float32, Header};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A frame waiting for inference.
pub struct Incoming {
    pub msg: CameraMsg,
    pub age: Option<Duration>,
    pub received: Instant,
}

/// State shared by the subscription task, the inference thread, the services and the timers.
pub struct Shared {
    pub slot: Mutex<Option<Incoming>>,
    /// Operator resets waiting for the inference thread; each gets the resulting state.
    pub resets: Mutex<Vec<oneshot::Sender<MonitorState>>>,
    pub wake: Condvar,
    pub shutdown: AtomicBool,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
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
            score_threshold: AtomicU64::new(score_threshold.to_bits()),
            cusum_threshold: AtomicU64::new(cusum_threshold.unwrap_or(0.0).to_bits()),
            status: Mutex::new(Status {
                state: MonitorState::Starting,
                counters: Counters::default(),
                latencies: vec![],
                alive: Instant::now(),
            }),
        }
    }

    /// Puts a frame in the slot; a frame still waiting there is dropped and counted.
    pub fn offer(&self, frame: Incoming) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self
            .slot
            .lock()
            .expect("slot lock")
            .replace(frame)
            .is_some()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    pub fn request_reset(&self) -> oneshot::Receiver<MonitorState> {
        let (tx, rx) = oneshot::channel();
        self.resets.lock().expect("reset lock").push(tx);
        self.wake.notify_one();
        rx
    }

    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }
}

/// What the diagnostics and heartbeat tasks read, updated by the inference thread.
pub struct Status {
    pub state: MonitorState,
    pub counters: Counters,
    /// Per-frame latency (receive to publish) since the last diagnostics tick.
    pub latencies: Vec<Duration>,
    /// When the inference thread last finished an event: the heartbeat stops if it hangs.
    pub alive: Instant,
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
    pub input_timeout: Option<Duration>,
    pub clock: Arc<Mutex<r2r::Clock>>,
}

enum Event {
    Frame(Incoming),
    Reset(Vec<oneshot::Sender<MonitorState>>),
    Timeout(Duration),
    Shutdown,
}

fn next_event(shared: &Shared, timeout: Option<Duration>) -> Event {
    let deadline = timeout.map(|t| (t, Instant::now() + t));
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
            Some((t, d)) => {
                let now = Instant::now();
                if now >= d {
                    return Event::Timeout(t);
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
    loop {
        let (verdict, header, received) = match next_event(shared, ctx.input_timeout) {
            Event::Shutdown => return,
            Event::Reset(waiters) => {
                let state = monitor.reset();
                r2r::log_info!(
                    &ctx.logger,
                    "reset by request: CUSUM zeroed, state {}",
                    state.as_str()
                );
                let _ = pubs.ood.publish(&Bool {
                    data: state.is_ood(),
                });
                update_status(shared, &monitor, state, None);
                for w in waiters {
                    let _ = w.send(state);
                }
                continue;
            }
            Event::Timeout(t) => (
                monitor.reject(Fault::InputTimeout(t)),
                now_header(&ctx.clock),
                None,
            ),
            Event::Frame(f) => {
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
        publish_outputs(pubs, &verdict);
        let record = VerdictRecord {
            header,
            node_name: &ctx.node_name,
            model_id: &ctx.model_id,
            verdict: &verdict,
            seq,
            publish: t_pub.elapsed(),
            total: received.map_or(Duration::ZERO, |r| r.elapsed()),
            dropped: shared.dropped.load(Ordering::Relaxed),
        };
        let _ = pubs.verdict.publish(&verdict_array(&record));
        update_status(
            shared,
            &monitor,
            verdict.state,
            received.map(|r| r.elapsed()),
        );

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

fn publish_outputs(pubs: &Publishers, v: &FrameVerdict) {
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
    let _ = pubs.ood.publish(&Bool { data: v.is_ood() });
}

fn update_status(
    shared: &Shared,
    monitor: &Monitor,
    state: MonitorState,
    latency: Option<Duration>,
) {
    let mut s = shared.status.lock().expect("status lock");
    s.state = state;
    s.counters = monitor.counters().clone();
    s.alive = Instant::now();
    if let Some(l) = latency {
        s.latencies.push(l);
    }
}

fn now_header(clock: &Mutex<r2r::Clock>) -> Header {
    Header {
        stamp: super::messages::now_stamp(clock),
        frame_id: String::new(),
    }
}
