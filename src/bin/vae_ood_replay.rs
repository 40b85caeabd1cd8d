//! `vae_ood_replay BAG`: publishes a rosbag2 bag's camera topic (and its label topic) over
//! ROS 2 at the recorded rate. See `vae_ood_monitor::replay`. `vae-ood replay` runs this.
#[cfg(feature = "replay")]
fn main() -> anyhow::Result<()> {
    use clap::Parser;
    use std::time::Duration;
    use vae_ood_monitor::replay::{replay, Lockstep, ReplayOptions};

    /// Publish a bag's camera topic (and --label-topic) at the recorded rate over ROS 2.
    #[derive(Parser)]
    #[command(name = "vae_ood_replay", version)]
    struct Args {
        bag: std::path::PathBuf,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        label_topic: Option<String>,
        /// Playback speed factor (0.01..=1000; 1 = as recorded).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Start again at the end.
        #[arg(long = "loop")]
        repeat: bool,
        /// Publish /clock from the recorded times (for use_sim_time).
        #[arg(long)]
        clock: bool,
        /// Seconds to wait for a subscriber.
        #[arg(long, default_value_t = 30.0)]
        wait: f64,
        /// Lossless replay: after each camera frame, wait for the monitor's verdict on it (this
        /// verdict topic, e.g. /vae_ood_monitor/verdict) before publishing the next.
        #[arg(long, value_name = "VERDICT_TOPIC")]
        lockstep: Option<String>,
        /// Seconds one frame's verdict may take under --lockstep before the replay fails.
        #[arg(long, default_value_t = 10.0)]
        lockstep_timeout: f64,
    }

    let a = Args::parse();
    let seconds = |name: &str, s: f64| {
        if (0.0..=86_400.0).contains(&s) {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!(
                "--{name} is {s}; expected 0..=86400 seconds"
            ))
        }
    };
    let lockstep = match a.lockstep {
        Some(verdict_topic) => Some(Lockstep {
            verdict_topic,
            timeout: seconds("lockstep-timeout", a.lockstep_timeout)?,
        }),
        None => None,
    };
    let n = replay(&ReplayOptions {
        bag: a.bag,
        topic: a.topic,
        label_topic: a.label_topic,
        rate: a.rate,
        repeat: a.repeat,
        clock: a.clock,
        wait: seconds("wait", a.wait)?,
        lockstep,
    })?;
    eprintln!("replayed {n} messages");
    Ok(())
}

#[cfg(not(feature = "replay"))]
fn main() {
    eprintln!("vae_ood_replay was built without the `replay` feature: rebuild it in a ROS 2 environment (source scripts/env.sh; cargo build -p vae_ood_monitor --features replay)");
    std::process::exit(1);
}
