//! The inference thread: takes the newest frame of each camera from its slot, runs the core
//! monitors (the frames of cameras that share a detector together) and publishes every
//! output. Runs on its own OS thread so a slow model never blocks the
//! executor; faults for a silent camera (`input_timeout`) and operator resets happen here too,
//! so every change of the monitor's state goes through one place.
//!
//! `~/ood` is only ever published while holding the status lock, with the state already
//! updated, so the heartbeat (node.rs) can never republish an older verdict over a newer one.

use crate::messages::{time_to_nanos, verdict_array, CameraMsg, VerdictRecord};
use crate::params::Batching;
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::std_msgs::msg::{Bool, Float32, Header};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vae_ood_core::frame::FrameData;
use vae_ood_core::monitor::{
    BatchItem, Counters, Fault, FrameAge, FrameVerdict, Monitor, MonitorState,
};

/// A frame waiting for inference.
pub struct Incoming {
    pub msg: CameraMsg,
    pub age: Option<FrameAge>,
    pub received: Instant,
}

/// The answer to an operator reset: the new state, or `None` when there is nothing to reset.
pub type ResetReply = Option<MonitorState>;

/// One camera's frame counts, shared by its subscription task and the diagnostics.
#[derive(Default)]
pub struct CameraCounts {
    pub received: AtomicU64,
    /// Frames replaced in the slot by a newer one before the worker took them.
    pub dropped: AtomicU64,
    /// Frames taken from DDS but lost because r2r's subscription queue was full (counted by
    /// our r2r fork, vendor/r2r), so they never reached [`Shared::offer`].
    pub lost_in_queue: Arc<AtomicU64>,
}

/// State shared by the subscription tasks, the inference thread, the services and the timers.
pub struct Shared {
    /// The newest waiting frame of each camera.
    pub slots: Mutex<Vec<Option<Incoming>>>,
    /// Operator resets waiting for the inference thread.
    pub resets: Mutex<Vec<oneshot::Sender<ResetReply>>>,
    pub wake: Condvar,
    /// The node is exiting: the worker and every loop stop.
    pub shutdown: AtomicBool,
    /// The worker stops and hands its pipelines back (a lifecycle cleanup); the node goes on.
    pub stop_worker: AtomicBool,
    /// Set by a lifecycle transition: the worker restarts every monitor (STARTING).
    restart: AtomicBool,
    /// Scoring frames (a lifecycle node's `active` state; always once started when unmanaged).
    /// While false, frames are not taken and every `ood` is true.
    active: AtomicBool,
    /// Per camera, in the order of [`crate::params::NodeConfig::cameras`].
    pub counts: Vec<CameraCounts>,
    /// Per camera: whether it gates the node's verdict (not advisory).
    gating: Vec<bool>,
    /// f64 bits of live thresholds (changed with `ros2 param set`).
    pub score_threshold: AtomicU64,
    pub cusum_threshold: AtomicU64,
    pub status: Mutex<Status>,
}

/// The verdict outputs that live as long as the node: `~/ood`, and each camera's `~/<camera>/ood`
/// with several cameras.
#[derive(Clone)]
pub struct Publishers {
    pub ood: r2r::Publisher<Bool>,
    pub cameras: Vec<Option<r2r::Publisher<Bool>>>,
}

impl Publishers {
    /// `true` on the node's and every camera's verdict (not trusted). Each detector's own
    /// `ood` is the worker's: it publishes `true` on them when it restarts or stops.
    fn all_ood(&self) {
        let _ = self.ood.publish(&Bool { data: true });
        for p in self.cameras.iter().flatten() {
            let _ = p.publish(&Bool { data: true });
        }
    }
}

impl Shared {
    /// `gating`: per camera, whether it gates the node's verdict.
    pub fn new(gating: Vec<bool>, score_threshold: f64, cusum_threshold: Option<f64>) -> Self {
        let n = gating.len();
        Self {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            resets: Mutex::new(vec![]),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            stop_worker: AtomicBool::new(false),
            restart: AtomicBool::new(false),
            active: AtomicBool::new(false),
            counts: (0..n).map(|_| CameraCounts::default()).collect(),
            gating,
            score_threshold: AtomicU64::new(score_threshold.to_bits()),
            cusum_threshold: AtomicU64::new(cusum_threshold.unwrap_or(0.0).to_bits()),
            status: Mutex::new(Status {
                state: MonitorState::Starting,
                cameras: vec![CameraStatus::default(); n],
                busy_since: None,
                closed: false,
            }),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts or stops scoring. Either way the worker restarts its monitors (evidence from
    /// before a pause never decides after it) and its silent-camera timers, which run only
    /// while active. Stopping publishes `true` on every verdict output at once.
    pub fn set_active(&self, active: bool, pubs: &Publishers) {
        let s = self.status.lock().expect("status lock");
        self.active.store(active, Ordering::Relaxed);
        {
            let mut slots = self.slots.lock().expect("slot lock");
            // A waiting frame was counted as received: it is dropped, and counted so.
            for (c, s) in slots.iter_mut().enumerate() {
                if s.take().is_some() {
                    self.counts[c].dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.restart.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
        if !active && !s.closed {
            pubs.all_ood();
        }
    }

    /// Stops the worker (it returns its pipelines) without stopping the node.
    pub fn request_worker_stop(&self) {
        let _slots = self.slots.lock().expect("slot lock");
        self.stop_worker.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// After a worker has stopped: no detectors, STARTING, ready for the next worker.
    pub fn clear(&self) {
        let mut s = self.status.lock().expect("status lock");
        s.state = MonitorState::Starting;
        for c in &mut s.cameras {
            *c = CameraStatus::default();
        }
        s.busy_since = None;
        let mut slots = self.slots.lock().expect("slot lock");
        slots.iter_mut().for_each(|s| *s = None);
        self.stop_worker.store(false, Ordering::Relaxed);
        self.restart.store(false, Ordering::Relaxed);
    }

    /// Puts a camera's frame in its slot; a frame still waiting there is dropped and counted.
    pub fn offer(&self, camera: usize, frame: Incoming) {
        let counts = &self.counts[camera];
        counts.received.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots.lock().expect("slot lock");
        if slots[camera].replace(frame).is_some() {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // Notify while holding the lock: the worker cannot miss it between check and wait.
        self.wake.notify_one();
    }

    pub fn request_reset(&self) -> oneshot::Receiver<ResetReply> {
        let (tx, rx) = oneshot::channel();
        let _slots = self.slots.lock().expect("slot lock");
        self.resets.lock().expect("reset lock").push(tx);
        self.wake.notify_one();
        rx
    }

    /// Stops the worker and the heartbeat, then publishes the final `true` everywhere.
    pub fn stop(&self, pubs: &Publishers) {
        {
            let _slots = self.slots.lock().expect("slot lock");
            self.shutdown.store(true, Ordering::Relaxed);
            self.wake.notify_all();
        }
        let mut s = self.status.lock().expect("status lock");
        s.closed = true;
        pubs.all_ood();
    }

    /// Records every camera's state and publishes the verdicts under the status lock.
    /// `latencies`: (camera, receive to publish) of the frames just processed.
    fn publish_state(
        &self,
        pubs: &Publishers,
        cameras: &[CameraPipelines],
        latencies: &[(usize, Duration)],
    ) {
        let mut s = self.status.lock().expect("status lock");
        let active = self.verdicts_trusted();
        for (c, cam) in cameras.iter().enumerate() {
            let st = &mut s.cameras[c];
            st.state = combined(&cam.pipelines);
            // Every pipeline of a camera sees every frame: the first one's counts are its.
            st.counters = cam.pipelines[0].monitor.counters().clone();
            st.detectors = cam
                .pipelines
                .iter()
                .map(|p| DetectorStatus {
                    name: p.name.clone(),
                    model_id: p.model_id.clone(),
                    state: p.monitor.state(),
                    counters: p.monitor.counters().clone(),
                })
                .collect();
        }
        for &(c, l) in latencies {
            s.cameras[c].latencies.push(l);
        }
        s.state = self.node_state(&s.cameras);
        if !s.closed {
            publish_verdicts(pubs, &s, active);
            // Each detector's own `ood` (several detectors on a camera).
            for p in cameras.iter().flat_map(|c| &c.pipelines) {
                if let Some(ood) = &p.pubs.ood {
                    let _ = ood.publish(&Bool {
                        data: p.monitor.state().is_ood() || !active,
                    });
                }
            }
        }
    }

    /// The node's verdict: the gating cameras' states combined.
    fn node_state(&self, cameras: &[CameraStatus]) -> MonitorState {
        MonitorState::combine(
            cameras
                .iter()
                .zip(&self.gating)
                .filter(|(_, g)| **g)
                .map(|(c, _)| c.state),
        )
    }

    /// The heartbeat: republishes the current verdicts unless the node is closing or the
    /// worker has been busy with one event for longer than `max_busy` (hung pipeline: silence).
    pub fn heartbeat(&self, pubs: &Publishers, max_busy: Duration) {
        let s = self.status.lock().expect("status lock");
        if s.closed || s.stalled(max_busy).is_some() {
            return;
        }
        publish_verdicts(pubs, &s, self.verdicts_trusted());
    }

    /// How long the worker has been on one event, if that is longer than `max_busy` (hung).
    pub fn stalled(&self, max_busy: Duration) -> Option<Duration> {
        self.status.lock().expect("status lock").stalled(max_busy)
    }

    /// Whether the current verdicts may be published as they are: only while active, and
    /// not while a restart is pending (a verdict decided before a quick deactivate and
    /// activate is not trusted either).
    fn verdicts_trusted(&self) -> bool {
        self.is_active() && !self.restart.load(Ordering::Relaxed)
    }

    fn mark_idle(&self) {
        self.status.lock().expect("status lock").busy_since = None;
    }

    fn mark_busy(&self) {
        self.status.lock().expect("status lock").busy_since = Some(Instant::now());
    }
}

/// `~/ood` and each camera's `ood` from the recorded states; all `true` while inactive.
fn publish_verdicts(pubs: &Publishers, s: &Status, active: bool) {
    let _ = pubs.ood.publish(&Bool {
        data: s.state.is_ood() || !active,
    });
    for (p, c) in pubs.cameras.iter().zip(&s.cameras) {
        if let Some(p) = p {
            let _ = p.publish(&Bool {
                data: c.state.is_ood() || !active,
            });
        }
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
    /// The node's verdict: every gating camera's combined ([`MonitorState::combine`]).
    pub state: MonitorState,
    pub cameras: Vec<CameraStatus>,
    /// Set while the worker processes an event.
    pub busy_since: Option<Instant>,
    /// Set on shutdown: nothing but the final `true` may be published after it.
    pub closed: bool,
}

/// One camera's verdict, counts and recent latencies.
#[derive(Debug, Clone)]
pub struct CameraStatus {
    /// Every detector's on this camera combined.
    pub state: MonitorState,
    pub counters: Counters,
    pub detectors: Vec<DetectorStatus>,
    /// Per-frame latency (receive to publish) since the last diagnostics tick.
    pub latencies: Vec<Duration>,
}

impl Default for CameraStatus {
    fn default() -> Self {
        Self {
            state: MonitorState::Starting,
            counters: Counters::default(),
            detectors: vec![],
            latencies: vec![],
        }
    }
}

/// One camera's detectors and its combined `verdict` record (with several detectors; with one,
/// the detector's record is the camera's).
pub struct CameraPipelines {
    pub pipelines: Vec<Pipeline>,
    pub verdict: Option<r2r::Publisher<DiagnosticArray>>,
    /// Its detectors' model ids, comma-separated.
    pub model_id: String,
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
    /// Where the encoder runs (`backend`, `device`), on every verdict.
    pub backend: &'static str,
    pub device: String,
    pub input_timeout: Option<Duration>,
    pub clock: Arc<Mutex<r2r::Clock>>,
    /// Camera names (empty for the single unnamed camera), for logs.
    pub cameras: Vec<String>,
    pub batching: Batching,
}

enum Event {
    /// The newest frame of each camera that has one waiting.
    Frames(Vec<(usize, Incoming)>),
    Reset(Vec<oneshot::Sender<ResetReply>>),
    Timeout,
    Restart,
    Shutdown,
}

/// Waits for the next event; `deadline` is when the first camera counts as silent.
fn next_event(shared: &Shared, deadline: Option<Instant>) -> Event {
    let mut slots = shared.slots.lock().expect("slot lock");
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
        let frames: Vec<(usize, Incoming)> = slots
            .iter_mut()
            .enumerate()
            .filter_map(|(c, s)| s.take().map(|f| (c, f)))
            .collect();
        if !frames.is_empty() {
            return Event::Frames(frames);
        }
        slots = match deadline {
            None => shared.wake.wait(slots).expect("slot lock"),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Event::Timeout;
                }
                shared
                    .wake
                    .wait_timeout(slots, d - now)
                    .expect("slot lock")
                    .0
            }
        };
    }
}

/// One camera's verdicts for one event.
struct CameraVerdicts {
    camera: usize,
    verdicts: Vec<FrameVerdict>,
    header: Header,
    received: Option<Instant>,
}

/// Runs until the node shuts down or the worker is asked to stop; returns the pipelines so
/// that their publishers can be destroyed (a lifecycle cleanup).
pub fn run(
    mut cameras: Vec<CameraPipelines>,
    shared: &Shared,
    ctx: &LoopCtx,
    pubs: &Publishers,
) -> Vec<CameraPipelines> {
    let n = cameras.len();
    let mut seq = vec![0u64; n];
    // Fault logs are rate-limited per camera: one camera's faults never hide another's.
    let mut last_log: Vec<Option<Instant>> = vec![None; n];
    let mut suppressed = vec![0u64; n];
    // Run-time threshold changes apply to a single detector on a single camera only
    // (the parameter validator refuses them otherwise: each bundle's scale is its own).
    let single = n == 1 && cameras[0].pipelines.len() == 1;
    // A camera counts as silent `input_timeout` after its last frame arrived (or after its last
    // timeout fault, which then repeats at that period).
    let mut last_input = vec![Instant::now(); n];
    loop {
        let deadline = ctx
            .input_timeout
            .filter(|_| shared.is_active())
            .and_then(|t| last_input.iter().min().map(|&l| l + t));
        // Busy until the worker waits again: publishing and logging are watched too.
        shared.mark_idle();
        let event = next_event(shared, deadline);
        shared.mark_busy();
        let mut results: Vec<CameraVerdicts> = match event {
            Event::Shutdown => {
                // Each detector's latched `ood` must not stay false after the worker is gone.
                for p in cameras.iter().flat_map(|c| &c.pipelines) {
                    if let Some(ood) = &p.pubs.ood {
                        let _ = ood.publish(&Bool { data: true });
                    }
                }
                return cameras;
            }
            Event::Restart => {
                for p in cameras.iter_mut().flat_map(|c| &mut c.pipelines) {
                    if let Err(e) = p.monitor.restart() {
                        // Cannot happen for a bundle that loaded; if it did, fail safe.
                        r2r::log_error!(&ctx.logger, "restarting detector {}: {e}", p.model_id);
                        p.monitor
                            .reject(Fault::Inference(format!("restart failed: {e}")));
                    }
                }
                // No input while paused: the silent-camera timers start again on activation.
                last_input.iter_mut().for_each(|l| *l = Instant::now());
                shared.publish_state(pubs, &cameras, &[]);
                continue;
            }
            Event::Reset(waiters) => {
                // A request whose caller has given up (told "nothing was reset" after
                // RESET_TIMEOUT) must not reset later, unannounced.
                let waiters: Vec<_> = waiters.into_iter().filter(|w| !w.is_closed()).collect();
                if waiters.is_empty() {
                    r2r::log_warn!(
                        &ctx.logger,
                        "reset requested, but the caller had given up waiting: nothing reset"
                    );
                    continue;
                }
                let calibrated = cameras
                    .iter()
                    .flat_map(|c| &c.pipelines)
                    .any(|p| p.monitor.is_calibrated());
                for p in cameras.iter_mut().flat_map(|c| &mut c.pipelines) {
                    if p.monitor.is_calibrated() {
                        p.monitor.reset();
                    }
                }
                shared.publish_state(pubs, &cameras, &[]);
                let state = shared.status.lock().expect("status lock").state;
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
                for w in waiters {
                    let _ = w.send(reply);
                }
                continue;
            }
            // Handled below, with the silent cameras of every event.
            Event::Timeout => vec![],
            Event::Frames(frames) => {
                if single {
                    let m = &mut cameras[0].pipelines[0].monitor;
                    m.set_score_threshold(f64::from_bits(
                        shared.score_threshold.load(Ordering::Relaxed),
                    ));
                    let cusum = f64::from_bits(shared.cusum_threshold.load(Ordering::Relaxed));
                    if cusum > 0.0 {
                        m.set_cusum_threshold(cusum);
                    }
                }
                for (c, f) in &frames {
                    last_input[*c] = f.received;
                    seq[*c] += 1;
                }
                let verdicts = score_frames(&mut cameras, &frames, ctx.batching);
                frames
                    .iter()
                    .zip(verdicts)
                    .map(|((c, f), verdicts)| CameraVerdicts {
                        camera: *c,
                        verdicts,
                        header: f.msg.header().clone(),
                        received: Some(f.received),
                    })
                    .collect()
            }
        };

        // A camera is silent `input_timeout` after its last frame, also while the others keep
        // the worker busy (a frames event can then come before the timeout).
        if let Some(t) = ctx.input_timeout.filter(|_| shared.is_active()) {
            let now = Instant::now();
            for (c, cam) in cameras.iter_mut().enumerate() {
                if last_input[c] + t <= now {
                    last_input[c] = now;
                    results.push(CameraVerdicts {
                        camera: c,
                        verdicts: cam
                            .pipelines
                            .iter_mut()
                            .map(|p| p.monitor.reject(Fault::InputTimeout(t)))
                            .collect(),
                        header: now_header(&ctx.clock),
                        received: None,
                    });
                }
            }
        }
        let t_pub = Instant::now();
        for r in &results {
            for (p, v) in cameras[r.camera].pipelines.iter().zip(&r.verdicts) {
                publish_values(&p.pubs, v);
            }
        }
        let latencies: Vec<(usize, Duration)> = results
            .iter()
            .filter_map(|r| r.received.map(|t| (r.camera, t.elapsed())))
            .collect();
        shared.publish_state(pubs, &cameras, &latencies);
        for r in &results {
            let cam = &cameras[r.camera];
            publish_records(cam, r, ctx, shared, seq[r.camera], t_pub);
            // Warm-up is not a fault: it is not logged.
            let fault = r.verdicts.iter().zip(&cam.pipelines).find_map(|(v, p)| {
                v.fault
                    .as_ref()
                    .filter(|f| !matches!(f, Fault::WarmingUp { .. }))
                    .map(|f| (f, p))
            });
            if let Some((fault, p)) = fault {
                // Rate-limited: a broken camera must not flood the log.
                let c = r.camera;
                if last_log[c].is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    let extra = match suppressed[c] {
                        0 => String::new(),
                        k => format!(" ({k} similar messages suppressed)"),
                    };
                    let mut who = vec![];
                    if !ctx.cameras[r.camera].is_empty() {
                        who.push(format!("camera {}", ctx.cameras[r.camera]));
                    }
                    if !p.name.is_empty() {
                        who.push(format!("detector {}", p.name));
                    }
                    let who = match who.is_empty() {
                        true => String::new(),
                        false => format!(" ({})", who.join(", ")),
                    };
                    r2r::log_warn!(
                        &ctx.logger,
                        "frame {}: {fault}{who}; verdict OOD{extra}",
                        seq[r.camera]
                    );
                    last_log[c] = Some(Instant::now());
                    suppressed[c] = 0;
                } else {
                    suppressed[c] += 1;
                }
            }
        }
    }
}

/// Scores the frames (one per camera) through every detector of their cameras: the monitors
/// that share a detector together ([`Monitor::process_together`], batched where that pays).
/// Returns each frame's verdicts, one per detector of its camera.
fn score_frames(
    cameras: &mut [CameraPipelines],
    frames: &[(usize, Incoming)],
    batching: Batching,
) -> Vec<Vec<FrameVerdict>> {
    let data: Vec<FrameData<'_>> = frames.iter().map(|(_, f)| f.msg.frame()).collect();
    let mut out: Vec<Vec<Option<FrameVerdict>>> = frames
        .iter()
        .map(|(c, _)| (0..cameras[*c].pipelines.len()).map(|_| None).collect())
        .collect();
    // (frame, detector index, monitor) for every detector of every camera with a frame.
    let mut items: Vec<(usize, usize, &mut Monitor)> = vec![];
    for (c, cam) in cameras.iter_mut().enumerate() {
        if let Some(fi) = frames.iter().position(|(fc, _)| *fc == c) {
            for (pi, p) in cam.pipelines.iter_mut().enumerate() {
                items.push((fi, pi, &mut p.monitor));
            }
        }
    }
    let detector = |m: &Monitor| Arc::as_ptr(m.shared_detector()) as *const () as usize;
    items.sort_by_key(|(_, _, m)| detector(m));
    for group in items.chunk_by_mut(|a, b| detector(a.2) == detector(b.2)) {
        let verdicts = {
            let mut batch: Vec<BatchItem<'_, '_>> = group
                .iter_mut()
                .map(|(fi, _, m)| {
                    let f = &frames[*fi].1;
                    let stamp = time_to_nanos(&f.msg.header().stamp);
                    BatchItem {
                        monitor: m,
                        frame: &data[*fi],
                        age: f.age,
                        stamp_ns: (stamp > 0).then_some(stamp),
                    }
                })
                .collect();
            match batching {
                Batching::Auto => Monitor::process_together(&mut batch),
                Batching::Always => Monitor::process_batched(&mut batch),
                Batching::Never => Monitor::process_one_by_one(&mut batch),
            }
        };
        for ((fi, pi, _), v) in group.iter().zip(verdicts) {
            out[*fi][*pi] = Some(v);
        }
    }
    out.into_iter()
        .map(|v| {
            v.into_iter()
                .map(|x| x.expect("every detector scored its camera's frame"))
                .collect()
        })
        .collect()
}

/// Each detector's `verdict` record of one camera's event, and the camera's combined one with
/// several detectors.
fn publish_records(
    cam: &CameraPipelines,
    r: &CameraVerdicts,
    ctx: &LoopCtx,
    shared: &Shared,
    seq: u64,
    t_pub: Instant,
) {
    let base = VerdictRecord {
        header: r.header.clone(),
        node_name: &ctx.node_name,
        model_id: &cam.model_id,
        backend: ctx.backend,
        device: &ctx.device,
        verdict: &r.verdicts[0],
        seq,
        publish: t_pub.elapsed(),
        total: r.received.map_or(Duration::ZERO, |t| t.elapsed()),
        dropped: shared.counts[r.camera].dropped.load(Ordering::Relaxed),
        score_threshold: cam.pipelines[0].monitor.config().score_threshold,
        cusum_threshold: None,
        detectors: vec![],
    };
    for (p, v) in cam.pipelines.iter().zip(&r.verdicts) {
        let rec = VerdictRecord {
            header: r.header.clone(),
            model_id: &p.model_id,
            verdict: v,
            cusum_threshold: p.monitor.pipeline().map(|c| c.cusum_threshold),
            detectors: vec![],
            ..base
        };
        let _ = p.pubs.verdict.publish(&verdict_array(&rec));
    }
    if let Some(top) = &cam.verdict {
        // The camera's verdict: the combined state, the first fault, and each detector's.
        let node = FrameVerdict::unscored(
            MonitorState::combine(r.verdicts.iter().map(|v| v.state)),
            r.verdicts.iter().find_map(|v| v.fault.clone()),
            r.verdicts[0].timing,
        );
        let rec = VerdictRecord {
            verdict: &node,
            detectors: cam
                .pipelines
                .iter()
                .zip(&r.verdicts)
                .map(|(p, v)| (p.name.clone(), v.state))
                .collect(),
            ..base
        };
        let _ = top.publish(&verdict_array(&rec));
    }
}

/// The node's verdict from its detectors' states.
fn combined(pipelines: &[Pipeline]) -> MonitorState {
    MonitorState::combine(pipelines.iter().map(|p| p.monitor.state()))
}

/// Score, p-value, log M and CUSUM (the verdicts go through `publish_state`).
fn publish_values(pubs: &PipelinePublishers, v: &FrameVerdict) {
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
