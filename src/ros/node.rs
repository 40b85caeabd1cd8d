//! The monitor node: camera frames in, OOD verdicts out.
//!
//! Threads: r2r's executor spins in one blocking thread; a tokio task turns each camera
//! message into a slot holding only the newest frame (older ones are dropped and counted);
//! one inference thread takes frames from the slot, runs the core monitor and publishes.
//! A slow model therefore never queues stale frames, and a stalled camera shows up as
//! silence on `~/verdict` and a WARN on `/diagnostics`.

use super::messages::{frame_age, health_array, verdict_array, CameraMsg, Health, VerdictRecord};
use super::params::{self, NodeConfig};
use crate::backend::{BackendKind, BackendOptions};
use crate::monitor::{Counters, Detector, Fault, Monitor, MonitorConfig, MonitorState};
use anyhow::{anyhow, Context as _, Result};
use futures::StreamExt;
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::sensor_msgs::msg::{CompressedImage, Image};
use r2r::std_msgs::msg::{Bool, Float32};
use r2r::{ParameterValue, QosProfile};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const DEFAULT_NODE_NAME: &str = "vae_ood_monitor";

/// A frame waiting for inference.
struct Incoming {
    msg: CameraMsg,
    age: Option<Duration>,
    received: Instant,
}

/// State shared between the subscription task, the inference thread and the diagnostics task.
#[derive(Default)]
struct Shared {
    slot: Mutex<Option<Incoming>>,
    wake: Condvar,
    shutdown: AtomicBool,
    received: AtomicU64,
    dropped: AtomicU64,
    /// f64 bits of the live score threshold (changed with `ros2 param set`).
    score_threshold: AtomicU64,
    status: Mutex<Status>,
}

/// What the diagnostics task reports, updated by the inference thread.
struct Status {
    state: MonitorState,
    counters: Counters,
    /// Total per-frame latency (receive to publish) since the last diagnostics tick.
    latencies: Vec<Duration>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            state: MonitorState::Starting,
            counters: Counters::default(),
            latencies: vec![],
        }
    }
}

/// Entry point of the `vae_ood_monitor` executable.
pub fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--describe-parameters") {
        println!("{}", params::describe_json());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// Resolves a bundle path: absolute as given; relative against the installed package's share
/// directory (`<prefix>/lib/<pkg>/<exe>` -> `<prefix>/share/<pkg>`), then the working directory,
/// then the source tree this binary was built from.
fn resolve_bundle(p: &str) -> Result<PathBuf> {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        return Ok(path);
    }
    let mut candidates = vec![];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.parent())
        {
            candidates.push(
                prefix
                    .join("share")
                    .join(env!("CARGO_PKG_NAME"))
                    .join(&path),
            );
        }
    }
    candidates.push(path.clone());
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&path));
    candidates
        .iter()
        .find(|c| c.join(crate::bundle::MANIFEST_FILE).is_file())
        .cloned()
        .ok_or_else(|| anyhow!("detector bundle '{p}' not found; looked in {candidates:?}. Set the model_bundle parameter to a bundle directory"))
}

async fn run() -> Result<()> {
    let ctx = r2r::Context::create().context("initialising ROS 2 (rcl_init)")?;
    let mut node = r2r::Node::create(ctx, DEFAULT_NODE_NAME, "").context("creating the node")?;
    let node_name = node.fully_qualified_name()?;
    let logger = node.logger().to_string();

    params::declare(&mut node).map_err(|e| anyhow!(e))?;
    let (param_handler, mut param_events) = node.make_parameter_handler()?;
    let cfg: NodeConfig = params::read(&node).map_err(|e| anyhow!(e))?;

    // Publishers exist before the model loads, so consumers see OOD (STARTING) from the start.
    // ~/ood is reliable + transient-local: a gate that starts later still gets the last verdict.
    let ood_qos = QosProfile::default()
        .keep_last(1)
        .reliable()
        .transient_local();
    let pub_ood = node.create_publisher::<Bool>("~/ood", ood_qos)?;
    let pub_score = node.create_publisher::<Float32>("~/score", QosProfile::default())?;
    let pub_verdict =
        node.create_publisher::<DiagnosticArray>("~/verdict", QosProfile::default().keep_last(50))?;
    let pub_diag =
        node.create_publisher::<DiagnosticArray>("/diagnostics", QosProfile::default())?;
    pub_ood.publish(&Bool { data: true })?;

    let bundle_dir = resolve_bundle(&cfg.model_bundle)?;
    let kind: BackendKind = cfg.backend.parse().map_err(|e: String| anyhow!(e))?;
    let detector = Detector::load(
        &bundle_dir,
        BackendOptions {
            kind,
            threads: cfg.threads,
        },
    )
    .with_context(|| format!("loading detector bundle {}", bundle_dir.display()))?;
    let model_id = detector.model_id().to_string();
    let trained = detector.bundle.manifest.provenance.trained;
    let backend = detector.backend();
    r2r::log_info!(
        &logger,
        "loaded detector {} from {} on {} ({} thread(s)), score_threshold {}",
        model_id,
        bundle_dir.display(),
        backend,
        cfg.threads,
        cfg.score_threshold
    );
    if !trained {
        r2r::log_warn!(
            &logger,
            "detector {model_id} is an UNTRAINED placeholder: its verdicts are not meaningful"
        );
    }

    let shared = Arc::new(Shared::default());
    shared
        .score_threshold
        .store(cfg.score_threshold.to_bits(), Ordering::Relaxed);
    let monitor = Monitor::new(
        detector,
        MonitorConfig {
            score_threshold: cfg.score_threshold,
            max_frame_age: cfg.max_frame_age,
        },
    );

    // Camera subscription: relative, image_transport-style names, remappable.
    let mut qos = if cfg.reliable_images {
        QosProfile::default().reliable()
    } else {
        QosProfile::sensor_data()
    };
    qos = qos.keep_last(cfg.image_qos_depth);
    let topic = if cfg.compressed {
        "image/compressed"
    } else {
        "image"
    };
    let clock = node.get_ros_clock();
    let frames: std::pin::Pin<Box<dyn futures::Stream<Item = CameraMsg> + Send>> = if cfg.compressed
    {
        Box::pin(
            node.subscribe::<CompressedImage>(topic, qos)?
                .map(CameraMsg::Compressed),
        )
    } else {
        Box::pin(node.subscribe::<Image>(topic, qos)?.map(CameraMsg::Raw))
    };
    let resolved_topic = topic.to_string();

    // Inference thread.
    let worker = {
        let shared = shared.clone();
        let logger = logger.clone();
        let node_name = node_name.clone();
        let model_id = model_id.clone();
        let pubs = (pub_ood.clone(), pub_score.clone(), pub_verdict.clone());
        let ctx = LoopCtx {
            logger,
            node_name,
            model_id,
            input_timeout: cfg.input_timeout,
            clock: node.get_ros_clock(),
        };
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || inference_loop(monitor, &shared, &ctx, pubs))?
    };

    // Subscription task: newest frame wins.
    tokio::spawn({
        let shared = shared.clone();
        let mut frames = frames;
        async move {
            while let Some(msg) = frames.next().await {
                let received = Instant::now();
                let now = clock.lock().ok().and_then(|mut c| c.get_now().ok());
                let age = now.and_then(|now| frame_age(&msg.header().stamp, now));
                shared.received.fetch_add(1, Ordering::Relaxed);
                let mut slot = shared.slot.lock().expect("slot lock");
                if slot.replace(Incoming { msg, age, received }).is_some() {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                drop(slot);
                shared.wake.notify_one();
            }
        }
    });

    // Parameter services, and live updates of the threshold.
    tokio::spawn(param_handler);
    tokio::spawn({
        let shared = shared.clone();
        let logger = logger.clone();
        async move {
            while let Some((name, value)) = param_events.next().await {
                match (name.as_str(), value) {
                    ("score_threshold", ParameterValue::Double(t)) if t.is_finite() => {
                        shared.score_threshold.store(t.to_bits(), Ordering::Relaxed);
                        r2r::log_info!(&logger, "score_threshold set to {t}");
                    }
                    (name, v) => r2r::log_warn!(&logger, "parameter '{name}' set to {v:?}: only score_threshold changes at run time; restart the node to apply others"),
                }
            }
        }
    });

    // Diagnostics.
    tokio::spawn({
        let shared = shared.clone();
        let (node_name, model_id) = (node_name.clone(), model_id.clone());
        let topic = resolved_topic.clone();
        let clock = node.get_ros_clock();
        let period = cfg.diagnostics_period;
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut last_received, mut last_faults, mut last_dropped) = (0u64, 0u64, 0u64);
            loop {
                tick.tick().await;
                let (state, counters, mut lat) = {
                    let mut s = shared.status.lock().expect("status lock");
                    (
                        s.state,
                        s.counters.clone(),
                        std::mem::take(&mut s.latencies),
                    )
                };
                lat.sort();
                let dropped = shared.dropped.load(Ordering::Relaxed);
                let received = shared.received.load(Ordering::Relaxed);
                let health = Health {
                    node_name: &node_name,
                    model_id: &model_id,
                    backend,
                    trained,
                    state,
                    counters: &counters,
                    received,
                    dropped,
                    period,
                    recent_frames: received - last_received,
                    recent_dropped: dropped - last_dropped,
                    recent_faults: counters.total_faults() - last_faults,
                    latency_p50: lat.get(lat.len() / 2).copied(),
                    latency_max: lat.last().copied(),
                    topic: &topic,
                };
                let stamp = clock
                    .lock()
                    .ok()
                    .and_then(|mut c| c.get_now().ok())
                    .map(|d| r2r::Clock::to_builtin_time(&d))
                    .unwrap_or_default();
                let _ = pub_diag.publish(&health_array(&health, stamp));
                (last_received, last_faults, last_dropped) =
                    (received, counters.total_faults(), dropped);
            }
        }
    });

    // r2r's executor.
    let spinner = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            while !shared.shutdown.load(Ordering::Relaxed) {
                node.spin_once(Duration::from_millis(20));
            }
        })
    };

    wait_for_shutdown().await;
    r2r::log_info!(
        &logger,
        "shutting down: publishing OOD (monitor not running)"
    );
    let _ = pub_ood.publish(&Bool { data: true });
    shared.shutdown.store(true, Ordering::Relaxed);
    shared.wake.notify_all();
    // Give DDS a moment to deliver the final verdict before the participant goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = worker.join();
    let _ = spinner.await;
    Ok(())
}

async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

type Pubs = (
    r2r::Publisher<Bool>,
    r2r::Publisher<Float32>,
    r2r::Publisher<DiagnosticArray>,
);

/// What the inference thread needs besides the monitor and publishers.
struct LoopCtx {
    logger: String,
    node_name: String,
    model_id: String,
    input_timeout: Option<Duration>,
    clock: Arc<Mutex<r2r::Clock>>,
}

/// Waits for the next frame: `None` on shutdown, `Some(None)` when `timeout` passes first.
fn next_frame(shared: &Shared, timeout: Option<Duration>) -> Option<Option<Incoming>> {
    let mut slot = shared.slot.lock().expect("slot lock");
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if shared.shutdown.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(f) = slot.take() {
            return Some(Some(f));
        }
        match deadline {
            None => slot = shared.wake.wait(slot).expect("slot lock"),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Some(None);
                }
                slot = shared
                    .wake
                    .wait_timeout(slot, d - now)
                    .expect("slot lock")
                    .0;
            }
        }
    }
}

fn inference_loop(
    mut monitor: Monitor,
    shared: &Shared,
    ctx: &LoopCtx,
    (pub_ood, pub_score, pub_verdict): Pubs,
) {
    let LoopCtx {
        logger,
        node_name,
        model_id,
        input_timeout,
        clock,
    } = ctx;
    let mut seq = 0u64;
    let mut last_fault_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let Some(next) = next_frame(shared, *input_timeout) else {
            return;
        };
        let Some(incoming) = next else {
            // Camera silent: fault (OOD) and say so on every output, once per input_timeout.
            let timeout = input_timeout.expect("only with a timeout");
            let verdict = monitor.reject(Fault::InputTimeout(timeout));
            let _ = pub_ood.publish(&Bool { data: true });
            let stamp = clock
                .lock()
                .ok()
                .and_then(|mut c| c.get_now().ok())
                .map(|d| r2r::Clock::to_builtin_time(&d))
                .unwrap_or_default();
            let header = r2r::std_msgs::msg::Header {
                stamp,
                frame_id: String::new(),
            };
            let record = VerdictRecord {
                header,
                node_name,
                model_id,
                verdict: &verdict,
                seq,
                publish: Duration::ZERO,
                total: Duration::ZERO,
                dropped: shared.dropped.load(Ordering::Relaxed),
            };
            let _ = pub_verdict.publish(&verdict_array(&record));
            {
                let mut s = shared.status.lock().expect("status lock");
                s.state = verdict.state;
                s.counters = monitor.counters().clone();
            }
            if last_fault_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                r2r::log_warn!(
                    logger,
                    "no frame for {timeout:?}: verdict OOD until frames return"
                );
                last_fault_log = Some(Instant::now());
            }
            continue;
        };
        seq += 1;
        monitor.set_score_threshold(f64::from_bits(
            shared.score_threshold.load(Ordering::Relaxed),
        ));
        let verdict = monitor.process(&incoming.msg.frame(), incoming.age);

        let t_pub = Instant::now();
        if let Some(score) = verdict.score {
            let _ = pub_score.publish(&Float32 { data: score as f32 });
        }
        let _ = pub_ood.publish(&Bool {
            data: verdict.is_ood(),
        });
        let publish = t_pub.elapsed();
        let record = VerdictRecord {
            header: incoming.msg.header().clone(),
            node_name,
            model_id,
            verdict: &verdict,
            seq,
            publish,
            total: incoming.received.elapsed(),
            dropped: shared.dropped.load(Ordering::Relaxed),
        };
        let _ = pub_verdict.publish(&verdict_array(&record));
        {
            let mut s = shared.status.lock().expect("status lock");
            s.state = verdict.state;
            s.counters = monitor.counters().clone();
            s.latencies.push(incoming.received.elapsed());
        }

        if let Some(fault) = &verdict.fault {
            // Rate-limited: a broken camera must not flood the log.
            if last_fault_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                let extra = if suppressed > 0 {
                    format!(" ({suppressed} similar messages suppressed)")
                } else {
                    String::new()
                };
                r2r::log_warn!(logger, "frame {seq} faulted, verdict OOD: {fault}{extra}");
                last_fault_log = Some(Instant::now());
                suppressed = 0;
            } else {
                suppressed += 1;
            }
        }
    }
}
