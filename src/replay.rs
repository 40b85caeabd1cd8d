//! `vae-ood replay BAG`: publishes a bag's camera topic (and its label topic) at the recorded
//! rate, for users without `ros2 bag play` and for the end-to-end tests. Messages go out as the
//! recorded CDR bytes (no re-serialisation), reliable, after a subscriber has matched.
//!
//! `--lockstep TOPIC` makes a replay lossless and independent of machine load: after each
//! camera frame it waits for the monitor's verdict for that frame (matched by header stamp on
//! TOPIC, the node's `~/verdict`). A monitor that always scores the newest frame would otherwise
//! drop frames whenever it falls behind the recorded rate, and its verdicts would then differ
//! from an offline evaluation of the same bag.

use crate::messages::time_to_nanos;
use anyhow::{anyhow, bail, Context as _, Result};
use r2r::builtin_interfaces::msg::Time;
use r2r::QosProfile;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
    /// Wait for the monitor's verdict on each frame before the next one.
    pub lockstep: Option<Lockstep>,
}

/// `--lockstep`: where the verdicts come and how long one may take.
pub struct Lockstep {
    /// The monitor's verdict topic (`diagnostic_msgs/DiagnosticArray`, stamped with the frame's
    /// header), e.g. `/vae_ood_monitor/verdict`.
    pub verdict_topic: String,
    /// The longest wait for one frame's verdict before the replay fails.
    pub timeout: Duration,
}

/// The header stamp (nanoseconds) of a serialised message that starts with a
/// `std_msgs/Header`, as `sensor_msgs/Image` and `CompressedImage` do. `None` when the bytes
/// are too short or not CDR.
pub fn cdr_header_stamp(cdr: &[u8]) -> Option<i64> {
    let word = |at: usize| -> Option<[u8; 4]> { cdr.get(at..at + 4)?.try_into().ok() };
    // The 4-byte encapsulation header: 0x0000 big-endian CDR, 0x0001 little-endian.
    let (sec, nanosec) = match cdr.get(..2)? {
        [0, 0] => (i32::from_be_bytes(word(4)?), u32::from_be_bytes(word(8)?)),
        [0, 1] => (i32::from_le_bytes(word(4)?), u32::from_le_bytes(word(8)?)),
        _ => return None,
    };
    Some(time_to_nanos(&Time { sec, nanosec }))
}

/// The stamps of verdicts received and not yet waited for.
#[derive(Default)]
struct Verdicts {
    stamps: Mutex<HashSet<i64>>,
    arrived: Condvar,
}

impl Verdicts {
    /// Waits until the verdict stamped `stamp` has arrived (and forgets it).
    fn wait_for(&self, stamp: i64, timeout: Duration) -> bool {
        let stamps = self.stamps.lock().expect("verdict lock");
        let (mut stamps, _) = self
            .arrived
            .wait_timeout_while(stamps, timeout, |s| !s.contains(&stamp))
            .expect("verdict lock");
        stamps.remove(&stamp)
    }
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

    let verdicts = Arc::new(Verdicts::default());
    let verdict_reader = match &opts.lockstep {
        Some(l) => {
            use futures::StreamExt as _;
            let stream = node
                .subscribe::<r2r::diagnostic_msgs::msg::DiagnosticArray>(
                    &l.verdict_topic,
                    QosProfile::default().keep_last(100),
                )
                .with_context(|| format!("subscribing to the verdicts on {}", l.verdict_topic))?;
            let verdicts = verdicts.clone();
            // Ends when the node (and with it the subscription) is dropped by the spinner.
            Some(std::thread::spawn(move || {
                futures::executor::block_on(stream.for_each(|v| {
                    let stamp = time_to_nanos(&v.header.stamp);
                    verdicts.stamps.lock().expect("verdict lock").insert(stamp);
                    verdicts.arrived.notify_all();
                    futures::future::ready(())
                }))
            }))
        }
        None => None,
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
            // The visit cannot be stopped: after a failure the rest of the bag is skipped.
            if failure.is_some() {
                return;
            }
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
                        failure = Some(format!("publishing on {}: {e}", m.topic));
                        return;
                    }
                }
            }
            if let (Some(l), true) = (&opts.lockstep, m.topic == topic) {
                failure = match cdr_header_stamp(&m.data) {
                    None => Some(format!(
                        "--lockstep: a message on {topic} has no readable header stamp"
                    )),
                    Some(stamp) if !verdicts.wait_for(stamp, l.timeout) => Some(format!(
                        "--lockstep: no verdict on {} for the frame stamped {}.{:09} within {:?} \
                         (published {published} messages): is the monitor active and subscribed to {topic}?",
                        l.verdict_topic,
                        stamp.div_euclid(1_000_000_000),
                        stamp.rem_euclid(1_000_000_000),
                        l.timeout
                    )),
                    Some(_) => None,
                };
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
    if let Some(r) = verdict_reader {
        let _ = r.join();
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::cdr_header_stamp;

    #[test]
    fn the_header_stamp_is_read_in_either_byte_order() {
        // sec = 1_700_000_000, nanosec = 250, then the frame id and the rest of the message.
        let mut le = vec![0, 1, 0, 0];
        le.extend(1_700_000_000i32.to_le_bytes());
        le.extend(250u32.to_le_bytes());
        le.extend([1, 0, 0, 0, 0]);
        assert_eq!(cdr_header_stamp(&le), Some(1_700_000_000_000_000_250));
        let mut be = vec![0, 0, 0, 0];
        be.extend(1_700_000_000i32.to_be_bytes());
        be.extend(250u32.to_be_bytes());
        assert_eq!(cdr_header_stamp(&be), Some(1_700_000_000_000_000_250));
        // Not CDR (an unknown encapsulation), or cut short.
        assert_eq!(
            cdr_header_stamp(&[0, 7, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
            None
        );
        assert_eq!(cdr_header_stamp(&le[..10]), None);
    }
}
