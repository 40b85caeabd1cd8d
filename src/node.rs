//! The monitor node: camera frames in, OOD verdicts out.
//!
//! Threads: r2r's executor spins in one blocking thread; a tokio task turns each camera
//! message into a slot holding only the newest frame (older ones are dropped and counted);
//! one inference thread ([`crate::inference`]) takes frames from the slot, runs the core
//! monitor and publishes. A slow model therefore never queues stale frames; a silent camera
//! faults after `input_timeout`; a hung pipeline stops the `~/ood` heartbeat.

use crate::inference::{self, Incoming, LoopCtx, Pipeline, PipelinePublishers, Publishers, Shared};
use crate::messages::{frame_age, health_array, now_stamp, CameraMsg, Health};
use crate::params::{self, NodeConfig};
use anyhow::{anyhow, Context as _, Result};
use futures::StreamExt;
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::sensor_msgs::msg::{CompressedImage, Image};
use r2r::std_msgs::msg::{Bool, Float32};
use r2r::std_srvs::srv::Trigger;
use r2r::{ParameterValue, QosProfile};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vae_ood_core::detector::Detector;
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::monitor::{Monitor, MonitorConfig};

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

async fn run(hook: Option<DetectorHook>) -> Result<()> {
    let ctx = r2r::Context::create().context("initialising ROS 2 (rcl_init)")?;
    let mut node = r2r::Node::create(ctx, DEFAULT_NODE_NAME, "").context("creating the node")?;
    let node_name = node.fully_qualified_name()?;
    let logger = node.logger().to_string();

    params::declare(&mut node, params::PARAMS).map_err(|e| anyhow!(e))?;
    let (param_handler, mut param_events) = node.make_parameter_handler()?;
    let cfg: NodeConfig = params::read(&node).map_err(|e| anyhow!(e))?;
    for unknown in params::unknown(&node, params::PARAMS) {
        r2r::log_warn!(
            &logger,
            "parameter '{unknown}' is not a parameter of this node (typo?); ignored"
        );
    }

    // Publishers exist before the models load, so consumers see OOD (STARTING) from the start.
    // ~/ood is reliable + transient-local: a gate that starts later still gets the last verdict.
    let ood_qos = QosProfile::default()
        .keep_last(1)
        .reliable()
        .transient_local();
    let verdict_qos = QosProfile::default().keep_last(50);
    let ood = node.create_publisher::<Bool>("~/ood", ood_qos.clone())?;
    let pub_diag =
        node.create_publisher::<DiagnosticArray>("/diagnostics", QosProfile::default())?;
    ood.publish(&Bool { data: true })?;

    // One pipeline per detector bundle, its outputs under ~/<name>/ when there are several.
    let names = detector_names(&cfg.model_bundles)?;
    let several = names.len() > 1;
    let monitor_cfg = MonitorConfig {
        score_threshold: cfg.score_threshold,
        max_frame_age: cfg.max_frame_age,
        recovery: cfg.recovery,
        cusum_threshold: cfg.cusum_threshold,
        max_repeated_frames: cfg.max_repeated_frames,
    };
    let mut hook = hook;
    let mut pipelines = vec![];
    // The CUSUM threshold tuned into the (single) bundle, if it is calibrated.
    let mut bundle_cusum = None;
    let (mut backend, mut device, mut trained) = ("", String::new(), true);
    for (bundle, name) in cfg.model_bundles.iter().zip(&names) {
        let bundle_dir = resolve_bundle(bundle)?;
        let detector = vae_ood_core::detector::load(
            &bundle_dir,
            BackendOptions {
                kind: cfg.backend,
                threads: cfg.threads,
            },
        )
        .with_context(|| format!("loading detector bundle {}", bundle_dir.display()))?;
        // The test hook replaces the first detector only.
        let detector = match hook.take() {
            Some(h) => h(detector),
            None => detector,
        };
        let model_id = detector.model_id().to_string();
        let kind = detector.bundle().manifest.detector.kind();
        let is_trained = detector.bundle().manifest.provenance.trained;
        if !several {
            bundle_cusum = detector
                .bundle()
                .manifest
                .calibration
                .as_ref()
                .map(|c| c.pipeline.cusum_threshold);
        }
        trained &= is_trained;
        (backend, device) = (detector.backend(), detector.device());
        let monitor = Monitor::new(detector, monitor_cfg)
            .map_err(|e| anyhow!("bundle {}: calibration: {e}", bundle_dir.display()))?;
        let decision = match monitor.pipeline() {
            Some(p) => format!(
                "calibrated: window {}, decay {}, cusum_threshold {}, recovery {:?}",
                p.window, p.decay, p.cusum_threshold, cfg.recovery
            ),
            None => format!(
                "uncalibrated bundle: per-frame score_threshold {}",
                cfg.score_threshold
            ),
        };
        let outputs = if several {
            format!("; outputs under ~/{name}/")
        } else {
            String::new()
        };
        r2r::log_info!(
            &logger,
            "loaded detector {model_id} ({kind}) from {} on {backend}, device {device} ({} thread(s)); {decision}{outputs}",
            bundle_dir.display(),
            cfg.threads
        );
        if !is_trained {
            r2r::log_warn!(
                &logger,
                "detector {model_id} is an UNTRAINED placeholder: its verdicts are not meaningful"
            );
        }
        let prefix = if several {
            format!("~/{name}/")
        } else {
            "~/".to_string()
        };
        let topic = |t: &str| format!("{prefix}{t}");
        let pubs = PipelinePublishers {
            ood: if several {
                Some(node.create_publisher::<Bool>(&topic("ood"), ood_qos.clone())?)
            } else {
                None
            },
            score: float_pub(&mut node, &topic("score"))?,
            p_value: float_pub(&mut node, &topic("p_value"))?,
            martingale: float_pub(&mut node, &topic("martingale"))?,
            cusum: float_pub(&mut node, &topic("cusum"))?,
            verdict: node
                .create_publisher::<DiagnosticArray>(&topic("verdict"), verdict_qos.clone())?,
        };
        pipelines.push(Pipeline {
            name: if several { name.clone() } else { String::new() },
            model_id,
            monitor,
            pubs,
        });
    }
    let model_id = pipelines
        .iter()
        .map(|p| p.model_id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let pubs = Publishers {
        ood,
        verdict: if several {
            Some(node.create_publisher::<DiagnosticArray>("~/verdict", verdict_qos)?)
        } else {
            None
        },
    };
    let shared = Arc::new(Shared::new(cfg.score_threshold, cfg.cusum_threshold));
    // `ros2 param get cusum_threshold` shows the threshold in force, not the 0 that asks for
    // the bundle's; a set that cannot take effect is refused with the reason. The parameter
    // services answer only once this is in place (the handler is spawned below), so a request
    // made while the detectors load waits for it.
    if let (Some(own), None) = (bundle_cusum, cfg.cusum_threshold) {
        if let Some(p) = node
            .params
            .lock()
            .expect("parameter lock")
            .get_mut("cusum_threshold")
        {
            p.value = ParameterValue::Double(own);
        }
    }
    node.set_parameter_validator(Box::new(move |name, _| match name {
        "cusum_threshold" if several => Err("cusum_threshold cannot change with several detectors: each decides with its own bundle's threshold (recalibrate a bundle to change it)".into()),
        "cusum_threshold" if bundle_cusum.is_none() => Err("cusum_threshold cannot change: the bundle is not calibrated, so it decides per frame with score_threshold".into()),
        _ => Ok(()),
    }));

    // Camera subscription: relative, image_transport-style names, remappable.
    let qos = if cfg.reliable_images {
        QosProfile::default().reliable()
    } else {
        QosProfile::sensor_data()
    }
    .keep_last(cfg.image_qos_depth);
    let topic = if cfg.compressed {
        "image/compressed"
    } else {
        "image"
    };
    let frames: std::pin::Pin<Box<dyn futures::Stream<Item = CameraMsg> + Send>> = if cfg.compressed
    {
        Box::pin(
            node.subscribe_counting_drops::<CompressedImage>(
                topic,
                qos,
                shared.lost_in_queue.clone(),
            )?
            .map(CameraMsg::Compressed),
        )
    } else {
        Box::pin(
            node.subscribe_counting_drops::<Image>(topic, qos, shared.lost_in_queue.clone())?
                .map(CameraMsg::Raw),
        )
    };
    let mut resets =
        node.create_service::<Trigger::Service>("~/reset", QosProfile::services_default())?;

    // Inference thread.
    let worker = {
        let shared = shared.clone();
        let ctx = LoopCtx {
            logger: logger.clone(),
            node_name: node_name.clone(),
            model_id: model_id.clone(),
            backend,
            device: device.clone(),
            input_timeout: cfg.input_timeout,
            clock: node.get_ros_clock(),
        };
        let pubs = Publishers {
            ood: pubs.ood.clone(),
            verdict: pubs.verdict.clone(),
        };
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || inference::run(pipelines, &shared, &ctx, &pubs))?
    };

    // Subscription task: newest frame wins.
    tokio::spawn({
        let shared = shared.clone();
        let clock = node.get_ros_clock();
        let mut frames = frames;
        async move {
            while let Some(msg) = frames.next().await {
                let received = Instant::now();
                let now = clock.lock().ok().and_then(|mut c| c.get_now().ok());
                let age = now.and_then(|now| frame_age(&msg.header().stamp, now));
                shared.offer(Incoming { msg, age, received });
            }
        }
    });

    // ~/reset (std_srvs/Trigger): zeroes S and leaves OOD.
    tokio::spawn({
        let shared = shared.clone();
        async move {
            while let Some(req) = resets.next().await {
                // A hung inference thread never answers: fail within RESET_TIMEOUT instead.
                let reply = tokio::time::timeout(RESET_TIMEOUT, shared.request_reset()).await;
                let response = match reply {
                    Err(_) => Trigger::Response {
                        success: false,
                        message: format!(
                            "the inference thread did not answer within {:.1} s (hung? see /diagnostics); nothing was reset",
                            RESET_TIMEOUT.as_secs_f64()
                        ),
                    },
                    Ok(reply) => match reply {
                    Ok(Some(s)) => Trigger::Response {
                        success: true,
                        message: format!("CUSUM reset; state {}", s.as_str()),
                    },
                    Ok(None) => Trigger::Response {
                        success: false,
                        message: "the bundle is uncalibrated: there is no CUSUM to reset".into(),
                    },
                    Err(_) => Trigger::Response {
                        success: false,
                        message: "monitor is shutting down".into(),
                    },
                    },
                };
                let _ = req.respond(response);
            }
        }
    });

    // Parameter services, and live updates of the thresholds. r2r refuses a set of a read-only
    // parameter, of another type or out of range (params::PARAMS), and the validator above
    // one that cannot take effect; anything else that cannot is reverted here, so `ros2 param
    // get` shows what is in force.
    tokio::spawn(param_handler);
    tokio::spawn({
        let shared = shared.clone();
        let logger = logger.clone();
        let params = node.params.clone();
        let initial: Vec<(String, ParameterValue)> = {
            let p = params.lock().expect("parameter lock");
            params::PARAMS
                .iter()
                .filter_map(|d| p.get(d.name).map(|v| (d.name.to_string(), v.value.clone())))
                .collect()
        };
        async move {
            let mut current = initial;
            while let Some((name, value)) = param_events.next().await {
                let accepted = match (name.as_str(), &value) {
                    ("score_threshold", ParameterValue::Double(t))
                        if params::valid_score_threshold(*t) =>
                    {
                        shared.score_threshold.store(t.to_bits(), Ordering::Relaxed);
                        true
                    }
                    ("cusum_threshold", ParameterValue::Double(t)) if t.is_finite() && *t > 0.0 => {
                        shared.cusum_threshold.store(t.to_bits(), Ordering::Relaxed);
                        true
                    }
                    // 0: back to the bundle's own threshold, which the parameter then shows.
                    ("cusum_threshold", ParameterValue::Double(t)) if *t == 0.0 => {
                        match bundle_cusum {
                            Some(own) => {
                                shared
                                    .cusum_threshold
                                    .store(own.to_bits(), Ordering::Relaxed);
                                if let Some(p) =
                                    params.lock().expect("parameter lock").get_mut(&name)
                                {
                                    p.value = ParameterValue::Double(own);
                                }
                                r2r::log_info!(
                                    &logger,
                                    "cusum_threshold back to the bundle's {own}"
                                );
                                if let Some(entry) = current.iter_mut().find(|(n, _)| *n == name) {
                                    entry.1 = ParameterValue::Double(own);
                                }
                                continue;
                            }
                            None => false,
                        }
                    }
                    _ => false,
                };
                if accepted {
                    r2r::log_info!(&logger, "{name} set to {value:?}");
                    if let Some(entry) = current.iter_mut().find(|(n, _)| *n == name) {
                        entry.1 = value;
                    }
                } else if let Some((_, old)) = current.iter().find(|(n, _)| *n == name) {
                    r2r::log_warn!(&logger, "parameter '{name}' cannot be set to {value:?} at run time (only score_threshold >= 0 and cusum_threshold > 0 can); kept {old:?}");
                    if let Some(p) = params.lock().expect("parameter lock").get_mut(&name) {
                        p.value = old.clone();
                    }
                } else {
                    r2r::log_warn!(&logger, "unknown parameter '{name}' ignored");
                }
            }
        }
    });

    // ~/ood heartbeat, stopped when one event takes longer than `max_busy`: a hung pipeline
    // becomes silence, which the gate's watchdog turns into a stop.
    tokio::spawn({
        let shared = shared.clone();
        let ood = pubs.ood.clone();
        let period = cfg.heartbeat_period;
        let max_busy = cfg.max_busy;
        async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                shared.heartbeat(&ood, max_busy);
            }
        }
    });

    // Diagnostics.
    tokio::spawn({
        let shared = shared.clone();
        let (node_name, model_id) = (node_name.clone(), model_id.clone());
        let clock = node.get_ros_clock();
        let period = cfg.diagnostics_period;
        let (max_busy, expected_rate) = (cfg.max_busy, cfg.expected_rate);
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut last_received, mut last_faults, mut last_dropped, mut last_lost) =
                (0u64, 0u64, 0u64, 0u64);
            loop {
                tick.tick().await;
                let (state, counters, detectors, mut lat) = {
                    let mut s = shared.status.lock().expect("status lock");
                    (
                        s.state,
                        s.counters.clone(),
                        s.detectors.clone(),
                        std::mem::take(&mut s.latencies),
                    )
                };
                lat.sort();
                // Both kinds of drop: for a newer frame, and in r2r's subscription queue.
                let lost_in_queue = shared.lost_in_queue.load(Ordering::Relaxed);
                let dropped = shared.dropped.load(Ordering::Relaxed);
                let received = shared.received.load(Ordering::Relaxed);
                let health = Health {
                    node_name: &node_name,
                    model_id: &model_id,
                    backend,
                    device: &device,
                    trained,
                    state,
                    counters: &counters,
                    received,
                    dropped,
                    lost_in_queue,
                    period,
                    recent_frames: received - last_received,
                    recent_dropped: dropped + lost_in_queue - last_dropped,
                    recent_faults: counters.total_faults() - last_faults,
                    recent_lost_in_queue: lost_in_queue - last_lost,
                    latency_p50: lat.get(lat.len() / 2).copied(),
                    latency_max: lat.last().copied(),
                    topic,
                    stalled: shared.stalled(max_busy).map(|busy| (busy, max_busy)),
                    expected_rate,
                    detectors: &detectors,
                };
                let _ = pub_diag.publish(&health_array(&health, now_stamp(&clock)));
                (last_received, last_faults, last_dropped, last_lost) = (
                    received,
                    counters.total_faults(),
                    dropped + lost_in_queue,
                    lost_in_queue,
                );
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
    shared.stop(&pubs.ood);
    // A hung inference thread cannot be joined: wait for it a bounded time, then leave without
    // it (the process exits; the final verdict is published either way).
    let joined = {
        let t0 = Instant::now();
        while !worker.is_finished() && t0.elapsed() < JOIN_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worker.is_finished()
    };
    let _ = pubs.ood.publish(&Bool { data: true });
    // Give DDS a moment to deliver the final verdict before the participant goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !joined {
        r2r::log_error!(
            &logger,
            "the inference thread did not stop within {:.1} s (hung); exiting without it",
            JOIN_TIMEOUT.as_secs_f64()
        );
        std::process::exit(1);
    }
    let _ = worker.join();
    let _ = spinner.await;
    Ok(())
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
