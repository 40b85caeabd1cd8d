//! The monitor node: camera frames in, OOD verdicts out.
//!
//! Threads: r2r's executor spins in one blocking thread; a tokio task turns each camera
//! message into a slot holding only the newest frame (older ones are dropped and counted);
//! one inference thread ([`crate::inference`]) takes frames from the slot, runs the core
//! monitor and publishes. A slow model therefore never queues stale frames; a silent camera
//! faults after `input_timeout`; a hung pipeline stops the `~/ood` heartbeat.

use crate::inference::{
    self, CameraPipelines, CameraStatus, Incoming, LoopCtx, Pipeline, PipelinePublishers,
    Publishers, Shared,
};
use crate::lifecycle;
use crate::messages::{frame_age, health_array, now_stamp, CameraMsg, Health};
use crate::params::{self, NodeConfig};
use anyhow::{anyhow, Context as _, Result};
use futures::StreamExt;
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::sensor_msgs::msg::{CompressedImage, Image};
use r2r::std_msgs::msg::{Bool, Float32, Header};
use r2r::std_srvs::srv::Trigger;
use r2r::{ParameterValue, QosProfile};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vae_ood_core::detector::Detector;
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::monitor::{Monitor, MonitorConfig, SharedDetector};

pub const DEFAULT_NODE_NAME: &str = "vae_ood_monitor";

/// Replaces the loaded detector before the node uses it. Only for tests that need a detector
/// misbehaving on purpose (examples/hung_monitor.rs); the shipped executable passes none.
pub type DetectorHook = Box<dyn FnOnce(Box<dyn Detector>) -> Box<dyn Detector>>;

/// Entry point of the `vae_ood_monitor` executable.
pub fn main() -> Result<()> {
    main_with(None)
}

/// The node with an optional [`DetectorHook`].
pub fn main_with(hook: Option<DetectorHook>) -> Result<()> {
    if std::env::args().any(|a| a == "--describe-parameters") {
        println!("{}", params::describe_json(params::PARAMS));
        return Ok(());
    }
    if std::env::args().any(|a| a == "--describe-camera-parameters") {
        println!("{}", params::describe_json(params::CAMERA_PARAMS));
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(hook))
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
    candidates.iter().find(|c| c.join(vae_ood_core::bundle::MANIFEST_FILE).is_file()).cloned().ok_or_else(|| {
        anyhow!("detector bundle '{p}' not found; looked in {candidates:?}. Set the model_bundle (or model_bundles) parameter to a bundle directory")
    })
}

/// Each bundle's output namespace: its directory's name as a ROS name (letters, digits and
/// underscores; `models/flow` is `flow`). Two bundles with one name are refused.
fn detector_names(bundles: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = vec![];
    for b in bundles {
        let base = std::path::Path::new(b.trim_end_matches('/'))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut name: String = base
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            name.insert(0, 'd');
        }
        if names.contains(&name) {
            return Err(anyhow!(
                "model_bundles: two bundles are both named '{name}' (their directories' names give their output namespaces ~/{name}/); rename one directory"
            ));
        }
        names.push(name);
    }
    Ok(names)
}

fn float_pub(node: &mut r2r::Node, topic: &str) -> Result<r2r::Publisher<Float32>> {
    Ok(node.create_publisher::<Float32>(topic, QosProfile::default())?)
}

/// What the configured detectors are, for `/diagnostics`, the parameters and the log.
#[derive(Debug, Clone)]
struct Loaded {
    /// Per camera: its detectors' model ids, comma-separated.
    model_ids: Vec<String>,
    backend: &'static str,
    device: String,
    trained: bool,
    /// The CUSUM threshold tuned into the (single) bundle, if it is calibrated.
    bundle_cusum: Option<f64>,
    /// More than one detector, or more than one camera: thresholds cannot change at run time.
    several: bool,
}

/// A configured node's inference thread and camera subscriptions.
struct Session {
    worker: std::thread::JoinHandle<Vec<CameraPipelines>>,
    frames: Vec<tokio::task::JoinHandle<()>>,
}

/// What lives as long as the node: its configuration, the verdict outputs and the state every
/// task shares.
struct Ctx {
    node: Arc<Mutex<r2r::Node>>,
    cfg: NodeConfig,
    logger: String,
    node_name: String,
    /// `~/ood`, and `~/<camera>/ood` per camera with several.
    pubs: Publishers,
    shared: Arc<Shared>,
    /// `None` until configured (and again after a lifecycle cleanup).
    loaded: Arc<Mutex<Option<Loaded>>>,
}

/// The QoS of every `~/verdict`: a consumer may lag a few frames without losing one.
fn verdict_qos() -> QosProfile {
    QosProfile::default().keep_last(50)
}

/// `~/ood`: reliable + transient-local, so a gate that starts later still gets the last verdict.
fn ood_qos() -> QosProfile {
    QosProfile::default()
        .keep_last(1)
        .reliable()
        .transient_local()
}

/// A loaded monitor on one camera, before its publishers exist.
struct Loading {
    name: String,
    model_id: String,
    monitor: Monitor,
}

impl Ctx {
    fn node(&self) -> std::sync::MutexGuard<'_, r2r::Node> {
        self.node.lock().expect("node lock")
    }

    /// Loads and checks every bundle (the lifecycle's configure), then subscribes to the
    /// cameras and starts the inference thread; frames are scored once the node is active.
    /// Cameras listing the same bundle share one loaded detector.
    fn configure(&self, hook: Option<DetectorHook>) -> Result<Session> {
        let cfg = &self.cfg;
        let logger = &self.logger;
        let mut hook = hook;
        let mut loaded = Loaded {
            model_ids: vec![],
            backend: "",
            device: String::new(),
            trained: true,
            bundle_cusum: None,
            several: cfg.cameras.len() > 1,
        };
        // One detector per bundle directory, shared by the cameras that list it.
        let mut detectors: Vec<(PathBuf, SharedDetector)> = vec![];
        let mut per_camera: Vec<Vec<Loading>> = vec![];
        for cam in &cfg.cameras {
            let names = detector_names(&cam.model_bundles)?;
            let several = names.len() > 1;
            loaded.several |= several;
            let monitor_cfg = MonitorConfig {
                score_threshold: cam.score_threshold,
                max_frame_age: cam.max_frame_age,
                recovery: cfg.recovery,
                cusum_threshold: cfg.cusum_threshold,
                threshold_scale: cfg.threshold_scale,
                max_repeated_frames: cfg.max_repeated_frames,
                min_rate: cfg.min_rate,
                branch_rule: cfg.branch_rule,
                relative_branch: cfg.relative_branch,
                direction_branch: cfg.direction_branch,
                change_branch: cfg.change_branch,
                startup_phase: cfg.startup_phase,
                cusum_ceiling: cfg.cusum_ceiling,
            };
            let mut monitors = vec![];
            for (bundle, name) in cam.model_bundles.iter().zip(&names) {
                let bundle_dir = resolve_bundle(bundle)?;
                // This bundle's share of the budget (threshold_scales), else threshold_scale.
                let monitor_cfg = MonitorConfig {
                    threshold_scale: cfg.threshold_scale_of(bundle),
                    ..monitor_cfg
                };
                let known = detectors.iter().find(|(d, _)| *d == bundle_dir);
                let monitor = match known {
                    Some((_, shared)) => Monitor::on_shared(shared.clone(), monitor_cfg),
                    None => {
                        // Loading takes seconds: keep this runtime's other tasks going.
                        let detector = tokio::task::block_in_place(|| {
                            vae_ood_core::detector::load(
                                &bundle_dir,
                                BackendOptions {
                                    kind: cfg.backend,
                                    threads: cfg.threads,
                                },
                            )
                        })
                        .with_context(|| {
                            format!("loading detector bundle {}", bundle_dir.display())
                        })?;
                        // The test hook replaces the first detector only.
                        let detector = match hook.take() {
                            Some(h) => h(detector),
                            None => detector,
                        };
                        let m = Monitor::new(detector, monitor_cfg);
                        if let Ok(m) = &m {
                            detectors.push((bundle_dir.clone(), m.shared_detector().clone()));
                        }
                        m
                    }
                }
                .map_err(|e| anyhow!("bundle {}: calibration: {e}", bundle_dir.display()))?;
                let (model_id, kind, is_trained, calibrated_for, startup_section, backend, device) = {
                    let d = monitor.detector();
                    let b = d.bundle();
                    let c = b.manifest.calibration.as_ref();
                    (
                        d.model_id().to_string(),
                        b.manifest.detector.kind(),
                        b.manifest.provenance.trained,
                        c.and_then(|c| c.camera.clone()),
                        // The bundle's own section: its promise is judged whether or not
                        // the phase runs here.
                        c.and_then(|c| c.startup),
                        d.backend(),
                        d.device(),
                    )
                };
                loaded.trained &= is_trained;
                (loaded.backend, loaded.device) = (backend, device);
                let relative = match monitor.relative_split() {
                    Some((t, scale)) => format!(
                        "; drive-relative branch: threshold {t}, pooled threshold x{scale} after the start-up hold"
                    ),
                    None => String::new(),
                };
                let direction = match monitor.direction_threshold() {
                    Some(t) => format!("; direction branch: threshold {t}"),
                    None => String::new(),
                };
                let change = match monitor.change_threshold() {
                    Some(t) => {
                        format!(
                            "; change branch: threshold {t}, the same from a stream's first frame"
                        )
                    }
                    None => String::new(),
                };
                let startup = match (monitor.startup(), monitor.describe_cruise()) {
                    (Some(s), Some(cruise)) => format!(
                        "; start-up phase: {} frames, then {cruise} (S falls with it)",
                        s.frames
                    ),
                    _ => String::new(),
                };
                let decision = match monitor.pipeline() {
                    Some(p) => format!(
                        "calibrated: window {}, decay {}, cusum_threshold {}, recovery {:?}{relative}{direction}{startup}{change}",
                        p.window, p.decay, p.cusum_threshold, cfg.recovery
                    ),
                    None => format!(
                        "uncalibrated bundle: per-frame score_threshold {}",
                        cam.score_threshold
                    ),
                };
                let on = match cam.name.is_empty() {
                    true => String::new(),
                    false => format!(" for camera {}", cam.name),
                };
                let outputs = match (cfg.several_cameras(), several) {
                    (false, false) => String::new(),
                    (false, true) => format!("; outputs under ~/{name}/"),
                    (true, false) => format!("; outputs under ~/{}/", cam.name),
                    (true, true) => format!("; outputs under ~/{}/{name}/", cam.name),
                };
                r2r::log_info!(
                    logger,
                    "loaded detector {model_id} ({kind}){on} from {} on {}, device {} ({} thread(s)); {decision}{outputs}",
                    bundle_dir.display(),
                    loaded.backend,
                    loaded.device,
                    cfg.threads
                );
                // A named camera is its own name; the single camera is the `camera` parameter.
                let camera = match cam.name.is_empty() {
                    true => cfg.camera.as_deref(),
                    false => Some(cam.name.as_str()),
                };
                if let Some(w) = camera_mismatch(calibrated_for.as_deref(), camera) {
                    r2r::log_warn!(logger, "detector {model_id}: {w}");
                }
                if let Some(w) = startup_section.and_then(|s| s.broken_promise()) {
                    r2r::log_warn!(logger, "detector {model_id}: {w}");
                }
                if !is_trained {
                    r2r::log_warn!(
                        logger,
                        "detector {model_id} is an UNTRAINED placeholder: its verdicts are not meaningful"
                    );
                }
                monitors.push(Loading {
                    name: name.clone(),
                    model_id,
                    monitor,
                });
            }
            let calibrated: Vec<&Loading> = monitors
                .iter()
                .filter(|m| m.monitor.pipeline().is_some())
                .collect();
            let calibrated_names: Vec<&str> = calibrated.iter().map(|m| m.name.as_str()).collect();
            // 1 when every calibrated detector on this camera runs at its own threshold.
            let largest_scale = calibrated
                .iter()
                .map(|m| m.monitor.config().threshold_scale)
                .fold(1.0, f64::max);
            if let Some(w) = joint_scale_warning(&calibrated_names, largest_scale) {
                let on = match cam.name.is_empty() {
                    true => String::new(),
                    false => format!("camera {}: ", cam.name),
                };
                r2r::log_warn!(logger, "{on}{w}");
            }
            per_camera.push(monitors);
        }
        // One detector on one camera: its bundle's own threshold, which run-time changes revert to.
        if let [cam] = per_camera.as_slice() {
            if let [only] = cam.as_slice() {
                loaded.bundle_cusum = only.monitor.pipeline().map(|p| p.cusum_threshold);
            }
        }

        let mut node = self.node();
        let mut cameras = vec![];
        let clock = node.get_ros_clock();
        let mut frames = vec![];
        // Publishers, then subscriptions; on an error, what was made is removed again, so that
        // a failed configure leaves nothing behind for the next one to duplicate.
        let made = (|| -> Result<()> {
            for (cam, monitors) in cfg.cameras.iter().zip(per_camera) {
                let several = monitors.len() > 1;
                let cam_prefix = match cam.name.is_empty() {
                    true => "~/".to_string(),
                    false => format!("~/{}/", cam.name),
                };
                let mut pipelines = vec![];
                for Loading {
                    name,
                    model_id,
                    monitor,
                } in monitors
                {
                    let prefix = match several {
                        true => format!("{cam_prefix}{name}/"),
                        false => cam_prefix.clone(),
                    };
                    let topic = |t: &str| format!("{prefix}{t}");
                    let pubs = PipelinePublishers {
                        ood: if several {
                            Some(node.create_publisher::<Bool>(&topic("ood"), ood_qos())?)
                        } else {
                            None
                        },
                        score: float_pub(&mut node, &topic("score"))?,
                        p_value: float_pub(&mut node, &topic("p_value"))?,
                        martingale: float_pub(&mut node, &topic("martingale"))?,
                        cusum: float_pub(&mut node, &topic("cusum"))?,
                        verdict: node.create_publisher::<DiagnosticArray>(
                            &topic("verdict"),
                            verdict_qos(),
                        )?,
                    };
                    pipelines.push(Pipeline {
                        name: if several { name } else { String::new() },
                        model_id,
                        monitor,
                        pubs,
                    });
                }
                let verdict = match several {
                    true => Some(node.create_publisher::<DiagnosticArray>(
                        &format!("{cam_prefix}verdict"),
                        verdict_qos(),
                    )?),
                    false => None,
                };
                let model_id = pipelines
                    .iter()
                    .map(|p| p.model_id.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                loaded.model_ids.push(model_id.clone());
                cameras.push(CameraPipelines {
                    pipelines,
                    verdict,
                    model_id,
                });
            }
            // Camera subscriptions: relative, image_transport-style names, remappable.
            let qos = if cfg.reliable_images {
                QosProfile::default().reliable()
            } else {
                QosProfile::sensor_data()
            }
            .keep_last(cfg.image_qos_depth);
            for (c, cam) in cfg.cameras.iter().enumerate() {
                let lost = self.shared.counts[c].lost_in_queue.clone();
                let stream: std::pin::Pin<Box<dyn futures::Stream<Item = CameraMsg> + Send>> =
                    if cam.compressed {
                        Box::pin(
                            node.subscribe_counting_drops::<CompressedImage>(
                                &cam.topic,
                                qos.clone(),
                                lost,
                            )?
                            .map(CameraMsg::Compressed),
                        )
                    } else {
                        Box::pin(
                            node.subscribe_counting_drops::<Image>(&cam.topic, qos.clone(), lost)?
                                .map(CameraMsg::Raw),
                        )
                    };
                // Newest frame wins; nothing is taken while inactive.
                frames.push(tokio::spawn({
                    let (shared, clock) = (self.shared.clone(), clock.clone());
                    let mut stream = stream;
                    async move {
                        while let Some(msg) = stream.next().await {
                            if !shared.is_active() {
                                continue;
                            }
                            let received = Instant::now();
                            let now = clock.lock().ok().and_then(|mut c| c.get_now().ok());
                            let age = now.and_then(|now| frame_age(&msg.header().stamp, now));
                            shared.offer(c, Incoming { msg, age, received });
                        }
                    }
                }));
            }
            Ok(())
        })();
        if let Err(e) = made {
            frames
                .iter()
                .for_each(|f: &tokio::task::JoinHandle<()>| f.abort());
            destroy_outputs(&mut node, cameras);
            return Err(e);
        }
        drop(node);

        // Inference thread.
        let worker = {
            let shared = self.shared.clone();
            let ctx = LoopCtx {
                logger: logger.clone(),
                node_name: self.node_name.clone(),
                backend: loaded.backend,
                device: loaded.device.clone(),
                input_timeout: cfg.input_timeout,
                clock,
                cameras: cfg.cameras.iter().map(|c| c.name.clone()).collect(),
                batching: cfg.batching,
            };
            let pubs = self.pubs.clone();
            // The pipelines wait in a slot the thread empties, so that a failed spawn
            // (resource exhaustion) hands them back to be removed from the node.
            let slot = Arc::new(Mutex::new(Some(cameras)));
            let spawned = std::thread::Builder::new().name("inference".into()).spawn({
                let slot = slot.clone();
                move || {
                    let cameras = slot.lock().expect("pipeline slot").take();
                    inference::run(
                        cameras.expect("pipelines handed over once"),
                        &shared,
                        &ctx,
                        &pubs,
                    )
                }
            });
            match spawned {
                Ok(worker) => worker,
                Err(e) => {
                    frames.iter().for_each(|f| f.abort());
                    if let Some(cameras) = slot.lock().expect("pipeline slot").take() {
                        destroy_outputs(&mut self.node(), cameras);
                    }
                    return Err(anyhow!("could not start the inference thread: {e}"));
                }
            }
        };
        // `ros2 param get cusum_threshold` shows the threshold in force, not the 0 that asks
        // for the bundle's; set only once configuring has succeeded, so a failed configure
        // leaves the parameter as it was. A threshold set at run time (kept across a cleanup,
        // as every parameter is) stays.
        let set_at_run_time = self.shared.cusum_threshold.load(Ordering::Relaxed) != 0;
        if let (Some(own), None, false) =
            (loaded.bundle_cusum, cfg.cusum_threshold, set_at_run_time)
        {
            if let Some(p) = self
                .node()
                .params
                .lock()
                .expect("parameter lock")
                .get_mut("cusum_threshold")
            {
                p.value = ParameterValue::Double(own);
            }
        }
        *self.loaded.lock().expect("loaded lock") = Some(loaded);
        Ok(Session { worker, frames })
    }

    /// Stops the inference thread, unsubscribes and removes the detectors' publishers (the
    /// lifecycle's cleanup and shutdown). Fails when the inference thread is hung.
    async fn clean_up(&self, session: Session) -> Result<()> {
        self.shared.set_active(false, &self.pubs);
        self.shared.request_worker_stop();
        // r2r destroys a subscription whose stream is gone when its next message arrives.
        session.frames.iter().for_each(|f| f.abort());
        if !join_within(&session.worker, JOIN_TIMEOUT).await {
            return Err(anyhow!(
                "the inference thread did not stop within {:.1} s (hung); its detectors stay loaded",
                JOIN_TIMEOUT.as_secs_f64()
            ));
        }
        let cameras = session
            .worker
            .join()
            .map_err(|_| anyhow!("the inference thread panicked"))?;
        destroy_outputs(&mut self.node(), cameras);
        self.shared.clear();
        *self.loaded.lock().expect("loaded lock") = None;
        Ok(())
    }
}

/// Removes the detectors' publishers from the node.
fn destroy_outputs(node: &mut r2r::Node, cameras: Vec<CameraPipelines>) {
    for cam in cameras {
        for p in cam.pipelines {
            let pubs = p.pubs;
            if let Some(o) = pubs.ood {
                node.destroy_publisher(o);
            }
            node.destroy_publisher(pubs.score);
            node.destroy_publisher(pubs.p_value);
            node.destroy_publisher(pubs.martingale);
            node.destroy_publisher(pubs.cusum);
            node.destroy_publisher(pubs.verdict);
        }
        if let Some(v) = cam.verdict {
            node.destroy_publisher(v);
        }
    }
}

/// The warning for a bundle calibrated on another camera's drives than the node's `camera`.
fn camera_mismatch(calibrated_for: Option<&str>, camera: Option<&str>) -> Option<String> {
    match (calibrated_for, camera) {
        (Some(b), Some(c)) if b != c => Some(format!(
            "calibrated on camera '{b}' but this node watches camera '{c}': the threshold's false-alarm guarantee is about the view of '{b}'; recalibrate on drives of '{c}' (vae-ood calibrate --camera {c})"
        )),
        _ => None,
    }
}

/// The warning for several calibrated detectors on one camera at their own thresholds: each
/// promises its drive-level false-alarm rate alone, and they alarm on different drives, so the
/// combined verdict's promise is up to the sum until `threshold_scale` is their joint scale (or
/// `threshold_scales` a split of it). `largest_scale` is the largest scale among them.
fn joint_scale_warning(calibrated: &[&str], largest_scale: f64) -> Option<String> {
    (calibrated.len() > 1 && largest_scale == 1.0).then(|| format!(
        "{} calibrated detectors ({}) run at their own thresholds (threshold_scale 1): each keeps its false-alarm promise alone, so the combined verdict's is up to {} times one threshold's; compute their joint scale with `vae-ood joint-threshold --bundle <each bundle> --tune-id <clear drives>` and set threshold_scale, or threshold_scales for the split it prints (SAFETY.md)",
        calibrated.len(),
        calibrated.join(", "),
        calibrated.len()
    ))
}

/// Waits up to `limit` for a thread to finish.
async fn join_within<T>(t: &std::thread::JoinHandle<T>, limit: Duration) -> bool {
    let t0 = Instant::now();
    while !t.is_finished() && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.is_finished()
}

async fn run(hook: Option<DetectorHook>) -> Result<()> {
    let ctx = r2r::Context::create().context("initialising ROS 2 (rcl_init)")?;
    let mut node = r2r::Node::create(ctx, DEFAULT_NODE_NAME, "").context("creating the node")?;
    let node_name = node.fully_qualified_name()?;
    let logger = node.logger().to_string();

    params::declare(&mut node, params::PARAMS).map_err(|e| anyhow!(e))?;
    let (param_handler, param_events) = node.make_parameter_handler()?;
    let cfg: NodeConfig = params::read(&node).map_err(|e| anyhow!(e))?;
    // `<camera>.<name>` of a listed camera and a per-camera parameter; any other is a typo.
    let camera_param = |p: &str| {
        cfg.cameras.iter().any(|c| {
            !c.name.is_empty()
                && p.strip_prefix(&format!("{}.", c.name))
                    .is_some_and(|rest| params::CAMERA_PARAMS.iter().any(|d| d.name == rest))
        })
    };
    for unknown in params::unknown(&node, params::PARAMS)
        .into_iter()
        .filter(|p| !camera_param(p))
    {
        r2r::log_warn!(
            &logger,
            "parameter '{unknown}' is not a parameter of this node (typo?); ignored"
        );
    }

    // Publishers exist before the models load, so consumers see OOD (STARTING) from the start.
    let ood = node.create_publisher::<Bool>("~/ood", ood_qos())?;
    let pub_diag =
        node.create_publisher::<DiagnosticArray>("/diagnostics", QosProfile::default())?;
    ood.publish(&Bool { data: true })?;
    // With several cameras each has its own verdict, `~/<camera>/ood`, as long as the node.
    let cameras = cfg
        .cameras
        .iter()
        .filter(|c| !c.name.is_empty())
        .map(|c| {
            let p = node.create_publisher::<Bool>(&format!("~/{}/ood", c.name), ood_qos())?;
            p.publish(&Bool { data: true })?;
            Ok(Some(p))
        })
        .collect::<Result<Vec<_>>>()?;
    let pubs = Publishers {
        ood,
        cameras: match cameras.is_empty() {
            true => vec![None],
            false => cameras,
        },
    };
    params::declare_cameras(&mut node, &cfg);
    let resets =
        node.create_service::<Trigger::Service>("~/reset", QosProfile::services_default())?;
    let lifecycle = if cfg.managed {
        Some(lifecycle::Server::new(&mut node)?)
    } else {
        None
    };
    let ctx = Ctx {
        shared: Arc::new(Shared::new(
            cfg.cameras.iter().map(|c| !c.advisory).collect(),
            // What a single camera decides with: its own override, if it has one.
            cfg.cameras
                .first()
                .map_or(cfg.score_threshold, |c| c.score_threshold),
            cfg.cusum_threshold,
        )),
        node: Arc::new(Mutex::new(node)),
        cfg,
        logger,
        node_name,
        pubs,
        loaded: Arc::new(Mutex::new(None)),
    };
    // A set that cannot take effect is refused with the reason. The parameter services answer
    // only once this is in place (the handler is spawned below).
    ctx.node().set_parameter_validator(Box::new({
        let loaded = ctx.loaded.clone();
        move |name, _| {
            let l = loaded.lock().expect("loaded lock");
            match (name, l.as_ref()) {
                ("cusum_threshold", None) => Err("cusum_threshold cannot change before the node is configured (whether it applies depends on the bundle's calibration)".into()),
                ("score_threshold", None) => Err("score_threshold cannot change at run time before the node is configured (whether it applies depends on its detectors and cameras); set it in the params file".into()),
                ("cusum_threshold", Some(l)) if l.several => Err("cusum_threshold cannot change with several detectors or cameras: each decides with its own bundle's threshold (recalibrate a bundle to change it)".into()),
                ("score_threshold", Some(l)) if l.several => Err("score_threshold cannot change at run time with several detectors or cameras (each camera may override it: <camera>.score_threshold)".into()),
                ("cusum_threshold", Some(l)) if l.bundle_cusum.is_none() => Err("cusum_threshold cannot change: the bundle is not calibrated, so it decides per frame with score_threshold".into()),
                _ => Ok(()),
            }
        }
    }));
    tokio::spawn(param_handler);
    spawn_parameter_updates(&ctx, param_events);
    spawn_resets(&ctx, resets);
    spawn_heartbeat(&ctx);
    spawn_diagnostics(
        &ctx,
        pub_diag,
        lifecycle.as_ref().map(|(s, _)| s.state_handle()),
    );

    // r2r's executor: it holds the node only while spinning once, so transitions can add and
    // remove publishers and subscriptions in between.
    let spinner = {
        let (node, shared) = (ctx.node.clone(), ctx.shared.clone());
        tokio::task::spawn_blocking(move || {
            while !shared.shutdown.load(Ordering::Relaxed) {
                node.lock()
                    .expect("node lock")
                    .spin_once(Duration::from_millis(20));
                // Let a transition take the lock between two spins.
                std::thread::yield_now();
            }
        })
    };

    let session = match lifecycle {
        None => {
            let session = match ctx.configure(hook) {
                Ok(s) => s,
                Err(e) => {
                    // Stop the executor too, or the runtime would wait for it forever.
                    ctx.shared.stop(&ctx.pubs);
                    return Err(e);
                }
            };
            ctx.shared.set_active(true, &ctx.pubs);
            wait_for_shutdown().await;
            Some(session)
        }
        Some((server, changes)) => managed(&ctx, &server, changes, hook).await,
    };

    r2r::log_info!(
        &ctx.logger,
        "shutting down: publishing OOD (monitor not running)"
    );
    ctx.shared.stop(&ctx.pubs);
    // A hung inference thread cannot be joined: wait for it a bounded time, then leave without
    // it (the process exits; the final verdict is published either way).
    let joined = match &session {
        Some(s) => join_within(&s.worker, JOIN_TIMEOUT).await,
        None => true,
    };
    ctx.shared.stop(&ctx.pubs);
    // Give DDS a moment to deliver the final verdict before the participant goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !joined {
        r2r::log_error!(
            &ctx.logger,
            "the inference thread did not stop within {:.1} s (hung); exiting without it",
            JOIN_TIMEOUT.as_secs_f64()
        );
        std::process::exit(1);
    }
    if let Some(s) = session {
        let _ = s.worker.join();
    }
    let _ = spinner.await;
    Ok(())
}

/// A managed node: transitions as a lifecycle manager asks, until SIGINT/SIGTERM. Returns the
/// session still running then, if any. Finalized (after `shutdown`) stays up, not monitoring,
/// until the process is stopped, as rclcpp's lifecycle nodes do.
async fn managed(
    ctx: &Ctx,
    server: &lifecycle::Server,
    mut changes: impl futures::Stream<Item = lifecycle::Request> + Unpin,
    hook: Option<DetectorHook>,
) -> Option<Session> {
    use lifecycle::{Action, Outcome};
    let mut hook = hook;
    let mut session: Option<Session> = None;
    r2r::log_info!(
        &ctx.logger,
        "managed node: unconfigured, ~/ood true until a lifecycle manager configures and activates it"
    );
    let shutdown = wait_for_shutdown();
    tokio::pin!(shutdown);
    loop {
        let (req, step) = tokio::select! {
            _ = &mut shutdown => return session,
            next = server.next(&mut changes, &ctx.logger) => match next {
                Some(n) => n,
                None => return session,
            },
        };
        let result = match step.action {
            Action::Configure => ctx
                .configure(hook.take())
                .map(|s| session = Some(s))
                .map_err(|e| (Outcome::Failure, e)),
            Action::Activate => {
                ctx.shared.set_active(true, &ctx.pubs);
                Ok(())
            }
            Action::Deactivate => {
                ctx.shared.set_active(false, &ctx.pubs);
                Ok(())
            }
            Action::Cleanup | Action::Shutdown => match session.take() {
                None => Ok(()),
                Some(s) => ctx.clean_up(s).await.map_err(|e| (Outcome::Error, e)),
            },
        };
        server.complete(req, step, result, &ctx.logger);
    }
}

/// Live updates of the thresholds. r2r refuses a set of a read-only parameter, of another type
/// or out of range (params::PARAMS), and the validator one that cannot take effect; anything
/// else that cannot is reverted here, so `ros2 param get` shows what is in force.
fn spawn_parameter_updates(
    ctx: &Ctx,
    mut events: impl futures::Stream<Item = (String, ParameterValue)> + Unpin + Send + 'static,
) {
    let shared = ctx.shared.clone();
    let logger = ctx.logger.clone();
    let loaded = ctx.loaded.clone();
    let params = ctx.node().params.clone();
    let initial: Vec<(String, ParameterValue)> = {
        let p = params.lock().expect("parameter lock");
        params::PARAMS
            .iter()
            .filter_map(|d| p.get(d.name).map(|v| (d.name.to_string(), v.value.clone())))
            .collect()
    };
    tokio::spawn(async move {
        let mut current = initial;
        while let Some((name, value)) = events.next().await {
            let bundle_cusum = loaded
                .lock()
                .expect("loaded lock")
                .as_ref()
                .and_then(|l| l.bundle_cusum);
            // What the parameter shows once this is handled (None: refused, reverted).
            let in_force = match (name.as_str(), &value) {
                ("score_threshold", ParameterValue::Double(t))
                    if params::valid_score_threshold(*t) =>
                {
                    shared.score_threshold.store(t.to_bits(), Ordering::Relaxed);
                    Some(value.clone())
                }
                ("cusum_threshold", ParameterValue::Double(t)) if t.is_finite() && *t > 0.0 => {
                    shared.cusum_threshold.store(t.to_bits(), Ordering::Relaxed);
                    Some(value.clone())
                }
                // 0: back to the bundle's own threshold, which the parameter then shows.
                ("cusum_threshold", ParameterValue::Double(t)) if *t == 0.0 => {
                    bundle_cusum.map(|own| {
                        shared
                            .cusum_threshold
                            .store(own.to_bits(), Ordering::Relaxed);
                        ParameterValue::Double(own)
                    })
                }
                _ => None,
            };
            let Some((_, old)) = current.iter_mut().find(|(n, _)| *n == name) else {
                r2r::log_warn!(&logger, "unknown parameter '{name}' ignored");
                continue;
            };
            match in_force {
                Some(v) => {
                    r2r::log_info!(&logger, "{name} set to {v:?}");
                    *old = v;
                }
                None => r2r::log_warn!(&logger, "parameter '{name}' cannot be set to {value:?} at run time (only score_threshold >= 0 and cusum_threshold > 0 can); kept {old:?}"),
            }
            if let Some(p) = params.lock().expect("parameter lock").get_mut(&name) {
                p.value = old.clone();
            }
        }
    });
}

/// `~/reset` (std_srvs/Trigger): zeroes S and leaves OOD.
fn spawn_resets(
    ctx: &Ctx,
    mut resets: impl futures::Stream<Item = r2r::ServiceRequest<Trigger::Service>>
        + Unpin
        + Send
        + 'static,
) {
    let shared = ctx.shared.clone();
    let loaded = ctx.loaded.clone();
    tokio::spawn(async move {
        while let Some(req) = resets.next().await {
            let fail = |message: String| Trigger::Response {
                success: false,
                message,
            };
            if loaded.lock().expect("loaded lock").is_none() {
                let _ = req.respond(fail(
                    "the node is not configured (lifecycle): there is no detector to reset".into(),
                ));
                continue;
            }
            // A hung inference thread never answers: fail within RESET_TIMEOUT instead.
            let response = match tokio::time::timeout(RESET_TIMEOUT, shared.request_reset()).await
            {
                Err(_) => fail(format!(
                    "the inference thread did not answer within {:.1} s (hung? see /diagnostics); nothing was reset",
                    RESET_TIMEOUT.as_secs_f64()
                )),
                Ok(Ok(Some(s))) => Trigger::Response {
                    success: true,
                    message: format!("CUSUM reset; state {}", s.as_str()),
                },
                Ok(Ok(None)) => {
                    fail("the bundle is uncalibrated: there is no CUSUM to reset".into())
                }
                Ok(Err(_)) => fail("monitor is shutting down".into()),
            };
            let _ = req.respond(response);
        }
    });
}

/// `~/ood` heartbeat, stopped when one event takes longer than `max_busy`: a hung pipeline
/// becomes silence, which the gate's watchdog turns into a stop.
fn spawn_heartbeat(ctx: &Ctx) {
    let shared = ctx.shared.clone();
    let pubs = ctx.pubs.clone();
    let (period, max_busy) = (ctx.cfg.heartbeat_period, ctx.cfg.max_busy);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            shared.heartbeat(&pubs, max_busy);
        }
    });
}

/// `/diagnostics`: each camera's health once per `diagnostics_period` (one status per camera).
fn spawn_diagnostics(
    ctx: &Ctx,
    pub_diag: r2r::Publisher<DiagnosticArray>,
    lifecycle_state: Option<Arc<Mutex<u8>>>,
) {
    let shared = ctx.shared.clone();
    let loaded = ctx.loaded.clone();
    let node_name = ctx.node_name.clone();
    let clock = ctx.node().get_ros_clock();
    let cfg = &ctx.cfg;
    let (period, max_busy, expected_rate) =
        (cfg.diagnostics_period, cfg.max_busy, cfg.expected_rate);
    let cameras: Vec<(String, String)> = cfg
        .cameras
        .iter()
        .map(|c| (c.name.clone(), c.topic.clone()))
        .collect();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per camera: received, faults, dropped and lost at the last tick.
        let mut last = vec![(0u64, 0u64, 0u64, 0u64); cameras.len()];
        loop {
            tick.tick().await;
            let statuses: Vec<CameraStatus> = {
                let mut s = shared.status.lock().expect("status lock");
                s.cameras
                    .iter_mut()
                    .map(|c| CameraStatus {
                        latencies: std::mem::take(&mut c.latencies),
                        ..c.clone()
                    })
                    .collect()
            };
            let l = loaded.lock().expect("loaded lock").clone();
            let lifecycle = lifecycle_state
                .as_ref()
                .map(|s| lifecycle::state_msg(*s.lock().expect("lifecycle state")).label);
            let stalled = shared.stalled(max_busy).map(|busy| (busy, max_busy));
            let stamp = now_stamp(&clock);
            let mut array = DiagnosticArray::default();
            for (c, ((camera, topic), st)) in cameras.iter().zip(statuses).enumerate() {
                let mut lat = st.latencies;
                lat.sort();
                let counts = &shared.counts[c];
                // Both kinds of drop: for a newer frame, and in r2r's subscription queue.
                let lost_in_queue = counts.lost_in_queue.load(Ordering::Relaxed);
                let dropped = counts.dropped.load(Ordering::Relaxed);
                let received = counts.received.load(Ordering::Relaxed);
                let (last_received, last_faults, last_dropped, last_lost) = last[c];
                let health = Health {
                    node_name: &node_name,
                    camera,
                    model_id: l
                        .as_ref()
                        .map_or("(not configured)", |l| l.model_ids[c].as_str()),
                    backend: l.as_ref().map_or("", |l| l.backend),
                    device: l.as_ref().map_or("", |l| l.device.as_str()),
                    trained: l.as_ref().is_none_or(|l| l.trained),
                    state: st.state,
                    counters: &st.counters,
                    received,
                    dropped,
                    lost_in_queue,
                    period,
                    // Saturating: a lifecycle cleanup starts the fault counts again.
                    recent_frames: received.saturating_sub(last_received),
                    recent_dropped: (dropped + lost_in_queue).saturating_sub(last_dropped),
                    recent_faults: st.counters.total_faults().saturating_sub(last_faults),
                    recent_lost_in_queue: lost_in_queue.saturating_sub(last_lost),
                    latency_p50: lat.get(lat.len() / 2).copied(),
                    latency_max: lat.last().copied(),
                    topic,
                    stalled,
                    expected_rate,
                    detectors: &st.detectors,
                    lifecycle: lifecycle.as_deref(),
                    active: shared.is_active(),
                };
                array.header = Header {
                    stamp: stamp.clone(),
                    frame_id: String::new(),
                };
                array
                    .status
                    .extend(health_array(&health, stamp.clone()).status);
                last[c] = (
                    received,
                    st.counters.total_faults(),
                    dropped + lost_in_queue,
                    lost_in_queue,
                );
            }
            let _ = pub_diag.publish(&array);
        }
    });
}

/// How long `~/reset` waits for the inference thread before answering failure.
const RESET_TIMEOUT: Duration = Duration::from_secs(1);
/// How long shutdown waits for the inference thread before exiting without it.
const JOIN_TIMEOUT: Duration = Duration::from_millis(1200);

async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn several_calibrated_detectors_at_their_own_thresholds_warn() {
        use super::joint_scale_warning as w;
        assert!(w(&["compressed", "flow"], 1.0)
            .unwrap()
            .contains("vae-ood joint-threshold"));
        assert_eq!(w(&["compressed", "flow"], 1.18), None);
        assert_eq!(w(&["compressed"], 1.0), None);
        assert_eq!(w(&[], 1.0), None);
    }

    #[test]
    fn only_two_named_and_different_cameras_warn() {
        use super::camera_mismatch as m;
        assert!(m(Some("rear"), Some("front"))
            .unwrap()
            .contains("--camera front"));
        assert_eq!(m(Some("front"), Some("front")), None);
        assert_eq!(m(None, Some("front")), None);
        assert_eq!(m(Some("rear"), None), None);
    }
}
