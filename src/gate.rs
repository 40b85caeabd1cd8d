//! `ood_gate`: passes the controller's velocity commands through only while the monitor's
//! latest verdict is in-distribution and fresh; otherwise publishes zero velocity.
//!
//! A separate process from the monitor on purpose: if the monitor crashes or hangs, its
//! `~/ood` heartbeat stops, the verdict goes stale after `watchdog_timeout`, and the gate
//! stops the robot. A verdict passes commands only once a second one has followed it within
//! `watchdog_timeout` (a live heartbeat), never on the latched sample alone. Topics (relative,
//! remap them): `ood` (std_msgs/Bool from the monitor), `cmd_vel_in` (from the controller),
//! `cmd_vel_out` (to the base).

use crate::lifecycle;
use crate::params::{self, DefaultValue, ParamDecl, ParamError, Reader};
use anyhow::{anyhow, Context as _, Result};
use futures::StreamExt;
use r2r::geometry_msgs::msg::{Twist, TwistStamped};
use r2r::std_msgs::msg::Bool;
use r2r::QosProfile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const GATE_PARAMS: &[ParamDecl] = &[
    ParamDecl { name: "input_type", default: DefaultValue::Str("twist"), description: "Command message type on cmd_vel_in and cmd_vel_out: 'twist' (geometry_msgs/Twist) or 'twist_stamped' (geometry_msgs/TwistStamped).", constraints: "twist | twist_stamped", ..params::READ_ONLY },
    ParamDecl { name: "watchdog_timeout", default: DefaultValue::Double(0.5), description: "A verdict older than this many seconds counts as OOD (the monitor is dead, hung or cut off).", range: Some(params::Range::Double(0.01, 60.0)), ..params::READ_ONLY },
    ParamDecl { name: "use_sim_time", default: DefaultValue::Bool(false), description: "Stamp TwistStamped zero commands with /clock time. The watchdog always uses the steady clock.", ..params::READ_ONLY },
    ParamDecl { name: "managed", default: DefaultValue::Bool(false), description: "A ROS 2 lifecycle (managed) node: it starts unconfigured and passes commands only while active (a lifecycle manager configures and activates it through ~/change_state); in every other state it publishes zero velocity at stop_rate. false: active at start-up.", ..params::READ_ONLY },
    ParamDecl { name: "stop_rate", default: DefaultValue::Double(20.0), description: "Rate (Hz) at which zero velocity is published while commands are blocked.", range: Some(params::Range::Double(0.1, 1000.0)), ..params::READ_ONLY },
];

/// The gate's validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// TwistStamped instead of Twist on both command topics.
    pub stamped: bool,
    pub watchdog_timeout: Duration,
    pub stop_rate: f64,
    /// A lifecycle node: commands pass only while active.
    pub managed: bool,
}

/// Reads and range-checks the gate's parameters from a snapshot of their values.
pub fn gate_config(r: &Reader) -> Result<GateConfig, ParamError> {
    let stamped = match r.string("input_type")?.as_str() {
        "twist" => false,
        "twist_stamped" => true,
        other => {
            return Err(ParamError(format!(
                "parameter 'input_type' is '{other}'; expected 'twist' or 'twist_stamped'"
            )))
        }
    };
    let timeout = r.double("watchdog_timeout")?;
    if !(0.01..=60.0).contains(&timeout) {
        return Err(ParamError(format!(
            "parameter 'watchdog_timeout' is {timeout}; expected 0.01..=60 seconds"
        )));
    }
    let stop_rate = r.double("stop_rate")?;
    if !(0.1..=1000.0).contains(&stop_rate) {
        return Err(ParamError(format!(
            "parameter 'stop_rate' is {stop_rate}; expected 0.1..=1000 Hz"
        )));
    }
    Ok(GateConfig {
        stamped,
        watchdog_timeout: Duration::from_secs_f64(timeout),
        stop_rate,
        managed: r.bool("managed")?,
    })
}

/// Commands in either message type.
enum Cmd {
    Twist(Twist),
    Stamped(TwistStamped),
}

#[derive(Clone)]
enum CmdPub {
    Twist(r2r::Publisher<Twist>),
    Stamped(r2r::Publisher<TwistStamped>),
}

impl CmdPub {
    fn pass(&self, cmd: &Cmd) {
        let _ = match (self, cmd) {
            (Self::Twist(p), Cmd::Twist(m)) => p.publish(m),
            (Self::Stamped(p), Cmd::Stamped(m)) => p.publish(m),
            _ => Ok(()),
        };
    }

    fn stop(&self, clock: &Mutex<r2r::Clock>) {
        let _ = match self {
            Self::Twist(p) => p.publish(&Twist::default()),
            Self::Stamped(p) => {
                let mut m = TwistStamped::default();
                if let Some(now) = clock.lock().ok().and_then(|mut c| c.get_now().ok()) {
                    m.header.stamp = r2r::Clock::to_builtin_time(&now);
                }
                p.publish(&m)
            }
        };
    }
}

/// The latest verdict and when it arrived. `closed` (shutdown) blocks everything.
struct Verdict {
    ood: bool,
    at: Instant,
    closed: bool,
    /// The previous verdict arrived less than `watchdog_timeout` before this one. A verdict
    /// alone proves nothing about the monitor now: `~/ood` is latched (transient-local), so a
    /// gate that starts while the monitor's inference thread is hung (process alive, heartbeat
    /// stopped) still receives its last `false`. Only a second verdict in time shows a live
    /// heartbeat.
    confirmed: bool,
}

/// What decides whether a command passes, shared by the gate's tasks.
#[derive(Clone)]
struct Gate {
    verdict: Arc<Mutex<Option<Verdict>>>,
    /// Commands pass only while active: from the start when unmanaged, else when a lifecycle
    /// manager activates the gate.
    active: Arc<AtomicBool>,
    timeout: Duration,
}

impl Gate {
    fn verdict(&self) -> std::sync::MutexGuard<'_, Option<Verdict>> {
        self.verdict.lock().expect("verdict lock")
    }

    fn passing(&self) -> bool {
        self.active.load(Ordering::Relaxed)
            && matches!(*self.verdict(), Some(Verdict { ood: false, at, closed: false, confirmed: true }) if at.elapsed() < self.timeout)
    }
}

pub fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--describe-parameters") {
        println!("{}", params::describe_json(GATE_PARAMS));
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<()> {
    let ctx = r2r::Context::create().context("initialising ROS 2 (rcl_init)")?;
    let mut node = r2r::Node::create(ctx, "ood_gate", "").context("creating the node")?;
    let logger = node.logger().to_string();
    params::declare(&mut node, GATE_PARAMS).map_err(|e| anyhow!(e))?;
    let (param_handler, _events) = node.make_parameter_handler()?;
    let GateConfig {
        stamped,
        watchdog_timeout: timeout,
        stop_rate: rate,
        managed,
    } = gate_config(&Reader::new(&node)).map_err(|e| anyhow!(e))?;

    let out = if stamped {
        CmdPub::Stamped(node.create_publisher("cmd_vel_out", QosProfile::default())?)
    } else {
        CmdPub::Twist(node.create_publisher("cmd_vel_out", QosProfile::default())?)
    };
    let commands: std::pin::Pin<Box<dyn futures::Stream<Item = Cmd> + Send>> = if stamped {
        Box::pin(
            node.subscribe::<TwistStamped>("cmd_vel_in", QosProfile::default())?
                .map(Cmd::Stamped),
        )
    } else {
        Box::pin(
            node.subscribe::<Twist>("cmd_vel_in", QosProfile::default())?
                .map(Cmd::Twist),
        )
    };
    // Same QoS as the monitor's ~/ood: reliable + transient-local, so the latest verdict arrives
    // even if the gate starts after the monitor.
    let mut verdicts = node.subscribe::<Bool>(
        "ood",
        QosProfile::default()
            .keep_last(1)
            .reliable()
            .transient_local(),
    )?;
    let clock = node.get_ros_clock();
    let gate = Gate {
        verdict: Arc::new(Mutex::new(None)),
        active: Arc::new(AtomicBool::new(!managed)),
        timeout,
    };
    let lifecycle = if managed {
        Some(lifecycle::Server::new(&mut node)?)
    } else {
        None
    };
    r2r::log_info!(
        &logger,
        "gating cmd_vel_in -> cmd_vel_out ({}), watchdog {:?}, stop rate {rate} Hz",
        if stamped { "TwistStamped" } else { "Twist" },
        timeout
    );

    tokio::spawn(param_handler);
    tokio::spawn({
        let (gate, out, clock, logger) = (gate.clone(), out.clone(), clock.clone(), logger.clone());
        async move {
            while let Some(m) = verdicts.next().await {
                let was = gate.passing();
                {
                    let mut v = gate.verdict();
                    if v.as_ref().is_some_and(|v| v.closed) {
                        continue;
                    }
                    let confirmed = v.as_ref().is_some_and(|p| p.at.elapsed() < timeout);
                    *v = Some(Verdict {
                        ood: m.data,
                        at: Instant::now(),
                        closed: false,
                        confirmed,
                    });
                }
                if m.data {
                    out.stop(&clock);
                }
                if was == m.data {
                    r2r::log_info!(
                        &logger,
                        "verdict {}: commands {}",
                        if m.data { "OOD" } else { "in-distribution" },
                        if m.data { "blocked" } else { "pass" }
                    );
                }
            }
        }
    });
    tokio::spawn({
        let (gate, out, clock) = (gate.clone(), out.clone(), clock.clone());
        let mut commands = commands;
        async move {
            while let Some(cmd) = commands.next().await {
                if gate.passing() {
                    out.pass(&cmd);
                } else {
                    out.stop(&clock);
                }
            }
        }
    });
    tokio::spawn({
        let (gate, out, clock, logger) = (gate.clone(), out.clone(), clock.clone(), logger.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut blocked = true;
            loop {
                tick.tick().await;
                let pass = gate.passing();
                if !pass {
                    out.stop(&clock);
                    if !blocked {
                        r2r::log_warn!(&logger, "verdict stale or OOD: publishing zero velocity");
                    }
                }
                blocked = !pass;
            }
        }
    });

    let shutdown = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let shutdown = shutdown.clone();
        tokio::task::spawn_blocking(move || {
            while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                node.spin_once(Duration::from_millis(10));
            }
        })
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match lifecycle {
        None => signal.await,
        Some((server, mut changes)) => {
            tokio::pin!(signal);
            loop {
                let (req, step) = tokio::select! {
                    _ = &mut signal => break,
                    next = server.next(&mut changes, &logger) => match next {
                        Some(n) => n,
                        None => break,
                    },
                };
                // Nothing to load: configure and cleanup only move the state.
                match step.action {
                    lifecycle::Action::Activate => gate.active.store(true, Ordering::Relaxed),
                    lifecycle::Action::Deactivate | lifecycle::Action::Shutdown => {
                        gate.active.store(false, Ordering::Relaxed);
                        out.stop(&clock);
                    }
                    lifecycle::Action::Configure | lifecycle::Action::Cleanup => {}
                }
                server.complete(req, step, Ok(()), &logger);
            }
        }
    }
    r2r::log_info!(&logger, "shutting down: publishing zero velocity");
    // Block first, so no task can pass a command after the final zero.
    *gate.verdict() = Some(Verdict {
        ood: true,
        at: Instant::now(),
        closed: true,
        confirmed: false,
    });
    out.stop(&clock);
    tokio::time::sleep(Duration::from_millis(200)).await;
    out.stop(&clock);
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = spinner.await;
    Ok(())
}
