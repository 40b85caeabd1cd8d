//! `vae-ood replay BAG`: publishes a bag's camera topic (and its label topic) at the recorded
//! rate, for users without `ros2 bag play` and for the end-to-end tests. Messages go out as the
//! recorded CDR bytes (no re-serialisation), reliable, after a subscriber has matched.

use anyhow::{anyhow, bail, Context as _, Result};
use r2r::QosProfile;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vae_ood_bag::{Bag, BagMessage, BOOL};

pub struct ReplayOptions {
    pub bag: PathBuf,
    pub topic: Option<String>,
    pub label_topic: Option<String>,
    /// Playback speed factor (2.0 = twice as fast).
    pub rate: f64,
    pub repeat: bool,
    /// Publish /clock from the recorded times, for nodes with use_sim_time.
    pub clock: bool,
    /// How long to wait for a subscriber on the camera topic before starting.
    pub wait: Duration,
}

/// The playback speed factors `replay` accepts.
pub const MIN_RATE: f64 = 0.01;
pub const MAX_RATE: f64 = 1000.0;

pub fn replay(opts: &ReplayOptions) -> Result<u64> {
    // Below 0.01 a ten-second drive takes over a quarter of an hour per frame second: a typo,
    // not a playback speed; above 1000 the schedule is finer than the publisher can keep.
    if !(MIN_RATE..=MAX_RATE).contains(&opts.rate) {
        bail!(
            "--rate is {}; expected a playback speed factor in {MIN_RATE}..={MAX_RATE} (1 = as recorded)",
            opts.rate
        );
    }
    let bag = Bag::open(&opts.bag)?;
    let (topic, image_type) = bag.camera_topic(opts.topic.as_deref())?;
    if let Some(l) = &opts.label_topic {
        bag.check_topic(l, &[BOOL])?;
    }

    let ctx = r2r::Context::create().context("initialising ROS 2 (rcl_init)")?;
    let mut node = r2r::Node::create(ctx, "vae_ood_replay", "")?;
    let image_pub =
        node.create_publisher_untyped(&topic, &image_type, QosProfile::default().keep_last(100))?;
    let label_pub = match &opts.label_topic {
        Some(l) => {
            Some(node.create_publisher_untyped(l, BOOL, QosProfile::default().keep_last(100))?)
        }
        None => None,
    };
    let clock_pub = if opts.clock {
        Some(node.create_publisher::<r2r::rosgraph_msgs::msg::Clock>(
            "/clock",
            QosProfile::default().keep_last(1),
        )?)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                node.spin_once(Duration::from_millis(20));
            }
        })
    };
    let deadline = Instant::now() + opts.wait;
    while image_pub
        .get_inter_process_subscription_count()
        .unwrap_or(0)
        == 0
    {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!("no subscriber on {topic} after {:?}", opts.wait);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the subscriber's side of discovery settle so the first frames are not lost.
    std::thread::sleep(Duration::from_millis(300));

    let mut topics = vec![topic.as_str()];
    if let Some(l) = &opts.label_topic {
        topics.push(l.as_str());
    }
    let mut published = 0u64;
    loop {
        let start = Instant::now();
        let mut first: Option<i64> = None;
        let mut failure = None;
        let result = bag.visit(&topics, &mut |m: BagMessage| {
            let t0 = *first.get_or_insert(m.log_time_ns);
            let due = Duration::from_nanos(((m.log_time_ns - t0).max(0) as f64 / opts.rate) as u64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            if let Some(c) = &clock_pub {
                let t = Duration::from_nanos(m.log_time_ns.max(0) as u64);
                let _ = c.publish(&r2r::rosgraph_msgs::msg::Clock {
                    clock: r2r::Clock::to_builtin_time(&t),
                });
            }
            let publisher = if m.topic == topic {
                Some(&image_pub)
            } else {
                label_pub.as_ref()
            };
            if let Some(p) = publisher {
                match p.publish_raw(&m.data) {
                    Ok(()) => published += 1,
                    Err(e) => {
                        failure.get_or_insert(format!("publishing on {}: {e}", m.topic));
                    }
                }
            }
        });
        if let Some(f) = failure {
            stop.store(true, Ordering::Relaxed);
            return Err(anyhow!(f));
        }
        if let Err(e) = result {
            stop.store(true, Ordering::Relaxed);
            return Err(anyhow!(e).context(format!(
                "replaying {} (published {published} messages before the damage)",
                opts.bag.display()
            )));
        }
        if !opts.repeat {
            break;
        }
    }
    // Reliable delivery of the last messages before the participant goes away.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = spinner.join();
    Ok(published)
}
