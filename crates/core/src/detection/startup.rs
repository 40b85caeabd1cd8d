//! The start-up phase (`calibration.startup`): a stream's first frames are judged at the
//! calibrated thresholds, later ones at a lower share of them.
//!
//! Why: on clear tuning drives, the frames that set every threshold come at a drive's start.
//! The robot is put down at some pose (off its lane, facing a wall or the map's edge) and the
//! controller takes a few seconds to settle; once it has, clear frames rarely give the
//! sequential statistics any evidence (docs/detector-experiments.md, "A start-up phase").
//! One threshold for the whole drive makes every shift that comes later wait for evidence
//! that only a start needs. So the thresholds hold as calibrated for the first `frames`
//! scored frames of a stream, and after them each is `cruise_scale` times its calibrated value
//! (never under `floor`). Both are chosen on the same tuning drives, so that together the
//! phases alarm on no more of them than the calibrated thresholds' promise allows
//! ([`certify`]). As a stream leaves the start-up, every branch's S falls with its threshold
//! (the gentle end, [`StartupSection::end_ratio`]).

use super::DetectionError;
use serde::{Deserialize, Serialize};

/// The start-up phase of a calibrated bundle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupSection {
    /// Scored frames of a stream judged at the calibrated thresholds.
    pub frames: u64,
    /// After them, every branch's threshold in force is this share of its calibrated value,
    /// in (0, 1].
    pub cruise_scale: f64,
    /// ... but never under this: ln(branches / rate), the level at which the CUSUM of
    /// exchangeable p-values alarms on at most `rate` of the frames over all its branches
    /// (Ville's inequality, once per start of the CUSUM). Video frames are not exchangeable,
    /// so this is a floor, not the guarantee: the tuning drives are.
    pub floor: f64,
    /// Tuning drives on which some branch exceeds its threshold in force at the certified scale
    /// (format 7: with the gentle end; format 6: with a plain fall, and counted before the
    /// floor).
    pub tuning_drives_alarmed: usize,
    /// How many the calibrated thresholds' promise allows (`guarantee.drives_over`; one fewer
    /// beside a change branch, whose share the traces do not hold).
    pub tuning_drives_allowed: usize,
}

impl StartupSection {
    /// Whether the tuning drives keep the promise at the certified scale: no more alarm than
    /// it allows. Where the start-up alone spends the budget, the scale is 1 (nothing lowered)
    /// and this is false: the calibrated thresholds already alarm on more tuning drives than
    /// allowed, and the bundle's stated bound does not hold for them.
    pub fn promise_kept(&self) -> bool {
        self.tuning_drives_alarmed <= self.tuning_drives_allowed
    }

    /// What to warn of where the promise is not kept (the calibrating tool and the node say
    /// the same), or `None`.
    pub fn broken_promise(&self) -> Option<String> {
        (!self.promise_kept()).then(|| {
            format!(
                "{} of its tuning drives alarm with the start-up phase, more than the {} its promise allows: its stated false-alarm bound does not hold; recalibrate with more tuning drives or fewer branches",
                self.tuning_drives_alarmed, self.tuning_drives_allowed
            )
        })
    }

    /// A branch's threshold in force after `scored` frames of the stream, from its calibrated
    /// one.
    pub fn threshold(&self, calibrated: f64, scored: u64) -> f64 {
        if scored < self.frames {
            calibrated
        } else {
            cruising(calibrated, self.cruise_scale, self.floor)
        }
    }

    /// The cruise thresholds in words, given every calibrated threshold the phase lowers: the
    /// scale, or the floor where the scale takes all of them under it (the student's scale of
    /// 2.2e-308 printed as "x0.0000" hid that the floor is what runs).
    pub fn describe_cruise(&self, calibrated: &[f64]) -> String {
        let at_floor = !calibrated.is_empty()
            && calibrated
                .iter()
                .all(|&t| cruising(t, self.cruise_scale, self.floor) == self.floor);
        if at_floor {
            format!("every threshold at the floor of {:.2}", self.floor)
        } else {
            format!(
                "every threshold x{:.4}, never under {:.2}",
                self.cruise_scale, self.floor
            )
        }
    }

    /// The gentle end: as a stream leaves the start-up, each branch's S is multiplied by this
    /// (its threshold's fall, at most 1), so that its alarm ratio carries over unchanged.
    /// Evidence gathered under the start-up's thresholds (a start still settling) then cannot
    /// alarm by the fall alone; only evidence after it can take the ratio over 1. It only
    /// lowers S, so no drive alarms first with it that would not with a plain fall (with
    /// automatic recovery a lower S may leave OOD sooner, and so enter it again).
    pub fn end_ratio(&self, calibrated: f64) -> f64 {
        fall(calibrated, self.cruise_scale, self.floor)
    }

    /// The section's own consistency: what a hand-edited bundle could break.
    pub fn validate(&self) -> Result<(), DetectionError> {
        let invalid = |param, reason: String| Err(DetectionError::InvalidParam { param, reason });
        if self.frames == 0 {
            return invalid("calibration.startup.frames", "must be at least 1".into());
        }
        if !(self.cruise_scale > 0.0 && self.cruise_scale <= 1.0) {
            return invalid(
                "calibration.startup.cruise_scale",
                format!(
                    "must be in (0, 1], got {}: a start-up phase only lowers thresholds after it",
                    self.cruise_scale
                ),
            );
        }
        if !(self.floor.is_finite() && self.floor >= 0.0) {
            return invalid(
                "calibration.startup.floor",
                format!("must be finite and >= 0, got {}", self.floor),
            );
        }
        Ok(())
    }
}

/// The floor of every threshold after the start-up: ln(branches / rate).
pub fn floor(branches: usize, rate: f64) -> f64 {
    (branches.max(1) as f64 / rate).ln()
}

/// A branch's threshold in force after the start-up, from its calibrated one.
fn cruising(calibrated: f64, scale: f64, floor: f64) -> f64 {
    (calibrated * scale).max(floor)
}

/// The share of S a branch carries out of the start-up: its threshold's fall, at most 1.
fn fall(calibrated: f64, scale: f64, floor: f64) -> f64 {
    if calibrated > 0.0 {
        (cruising(calibrated, scale, floor) / calibrated).min(1.0)
    } else {
        1.0
    }
}

/// Every calibrated threshold a start-up phase lowers, from the pooled one, the relative
/// branch's (its threshold and the pooled threshold's multiplier after its hold) and the
/// direction branch's: the pooled one before and after its share, then the others.
pub fn calibrated_thresholds(
    pooled: f64,
    relative: Option<(f64, f64)>,
    direction: Option<f64>,
) -> Vec<f64> {
    [
        Some(pooled),
        relative.map(|(_, share)| pooled * share),
        relative.map(|(t, _)| t),
        direction,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// One branch's step on one frame, as the phase reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BranchStep {
    /// S, unbounded (no ceiling).
    pub s: f64,
    /// The calibrated threshold in force at that frame (before the phase lowers it).
    pub threshold: f64,
}

/// One tuning drive as the phase sees it: per scored frame, each branch's step, or `None` where
/// the branch gave no step (a baseline filling, a frame without texture). Branches keep their
/// order.
pub type Trace = Vec<Vec<Option<BranchStep>>>;

/// Whether a drive alarms after its first `frames` frames at the cruise thresholds of `scale`
/// and `floor`, with the phase's gentle end ([`StartupSection::end_ratio`]): as the stream
/// leaves the start-up, each branch's S is multiplied by its threshold's fall. Rebuilt from
/// the unscaled S: a CUSUM started lower takes the same increments (S's differences while S is
/// over 0) and is 0 wherever the unscaled one is.
fn alarms_in_cruise(trace: &Trace, frames: usize, scale: f64, floor: f64) -> bool {
    let branches = trace.iter().map(Vec::len).max().unwrap_or(0);
    (0..branches).any(|b| {
        // S as computed, S with the gentle end, and the branch's last calibrated threshold.
        let (mut s, mut gentle, mut calibrated) = (0.0, 0.0, f64::NAN);
        for (t, frame) in trace.iter().enumerate() {
            let step = frame.get(b).copied().flatten();
            if let Some(st) = step {
                calibrated = st.threshold;
            }
            if t == frames && calibrated.is_finite() {
                gentle = s * fall(calibrated, scale, floor);
            }
            let Some(BranchStep { s: now, .. }) = step else {
                continue;
            };
            gentle = if now > 0.0 {
                (gentle + now - s).max(0.0)
            } else {
                0.0
            };
            s = now;
            if t >= frames && gentle > cruising(calibrated, scale, floor) {
                return true;
            }
        }
        false
    })
}

/// Whether a drive exceeds a calibrated threshold in its first `frames` frames.
fn alarms_in_start_up(trace: &Trace, frames: usize) -> bool {
    trace
        .iter()
        .take(frames)
        .any(|f| f.iter().flatten().any(|st| st.s > st.threshold))
}

/// The smallest scale at which a drive that kept quiet through the start-up stays quiet after
/// it: infinite when it alarms even at the calibrated thresholds, 0 when not even at the floor.
fn critical_scale(trace: &Trace, frames: usize, floor: f64) -> f64 {
    let alarms = |scale| alarms_in_cruise(trace, frames, scale, floor);
    if alarms(1.0) {
        return f64::INFINITY;
    }
    if !alarms(f64::MIN_POSITIVE) {
        return 0.0;
    }
    // Alarms fall as the scale rises: the thresholds and the carried S's share rise together.
    // That needs two things the monitor gives: a drive quiet through the start-up carries S
    // at most its threshold, and no threshold in force falls later in the stream (the pooled
    // one's share after the relative branch's hold is at least 1).
    let (mut lo, mut hi) = (f64::MIN_POSITIVE, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if alarms(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The cruise scale of a `frames`-frame start-up, and the tuning drives it alarms on: drives
/// over a calibrated threshold in their first `frames` frames alarm in the start-up; of the
/// others, at most `allowed` minus those may alarm afterwards, so the scale is the next one's
/// critical scale (never above 1). Drives too short to leave the start-up count only there.
pub fn certify(traces: &[Trace], frames: usize, allowed: usize, floor: f64) -> (f64, usize) {
    let (started, cruising): (Vec<&Trace>, Vec<&Trace>) =
        traces.iter().partition(|t| alarms_in_start_up(t, frames));
    let mut critical: Vec<f64> = cruising
        .iter()
        .map(|t| critical_scale(t, frames, floor))
        .collect();
    critical.sort_by(|a, b| b.total_cmp(a));
    let Some(room) = allowed.checked_sub(started.len()) else {
        // The start-up alone spends the budget: no lower threshold is certified after it.
        return (
            1.0,
            started.len() + critical.iter().filter(|&&c| c > 1.0).count(),
        );
    };
    // A scale no drive needs leaves every threshold at the floor. The next drive's critical
    // scale sits on the edge of its alarm: a margin of 1e-9 keeps the monitor's own rounding
    // of S on the quiet side.
    let scale =
        (critical.get(room).copied().unwrap_or(0.0) * (1.0 + 1e-9)).clamp(f64::MIN_POSITIVE, 1.0);
    let over = critical.iter().filter(|&&c| c > scale).count();
    (scale, started.len() + over)
}

/// One start-up length as [`certify`] weighed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weighed {
    pub frames: usize,
    pub cruise_scale: f64,
    pub tuning_drives_alarmed: usize,
}

/// The start-up's length by session 43's rule (docs/detector-experiments.md): of `candidates`
/// (frames, ascending), the shortest whose cruise thresholds (each of `calibrated` as
/// [`certify`] puts it in force) are those of the longest, where the tuning drives' starts no
/// longer set them. Returns it as weighed, and every candidate.
pub fn shortest(
    traces: &[Trace],
    candidates: &[usize],
    allowed: usize,
    floor: f64,
    calibrated: &[f64],
) -> Option<(Weighed, Vec<Weighed>)> {
    let table: Vec<Weighed> = candidates
        .iter()
        .map(|&frames| {
            let (cruise_scale, tuning_drives_alarmed) = certify(traces, frames, allowed, floor);
            Weighed {
                frames,
                cruise_scale,
                tuning_drives_alarmed,
            }
        })
        .collect();
    let in_force = |scale| calibrated.iter().map(move |&c| cruising(c, scale, floor));
    let last = table.last()?.cruise_scale;
    let same = |scale| {
        in_force(scale)
            .zip(in_force(last))
            .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs())
    };
    let chosen = *table.iter().find(|w| same(w.cruise_scale))?;
    Some((chosen, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(s: f64, threshold: f64) -> Option<BranchStep> {
        Some(BranchStep { s, threshold })
    }

    fn section(frames: u64, cruise_scale: f64, floor: f64) -> StartupSection {
        StartupSection {
            frames,
            cruise_scale,
            floor,
            tuning_drives_alarmed: 0,
            tuning_drives_allowed: 1,
        }
    }

    #[test]
    fn the_cruise_is_described_by_its_floor_where_the_scale_takes_every_threshold_under_it() {
        let s = section(3, 0.25, 5.0);
        assert_eq!(
            s.describe_cruise(&[40.0, 12.0]),
            "every threshold x0.2500, never under 5.00"
        );
        assert_eq!(
            s.describe_cruise(&[20.0, 12.0]),
            "every threshold at the floor of 5.00"
        );
        assert_eq!(
            section(3, 2.2e-308, 9.9).describe_cruise(&[21.4]),
            "every threshold at the floor of 9.90"
        );
    }

    #[test]
    fn thresholds_hold_through_the_start_up_and_fall_after_it_to_the_floor_at_most() {
        let s = section(3, 0.25, 5.0);
        assert_eq!(s.threshold(40.0, 0), 40.0);
        assert_eq!(s.threshold(40.0, 2), 40.0);
        assert_eq!(s.threshold(40.0, 3), 10.0);
        assert_eq!(s.threshold(12.0, 3), 5.0);
    }

    #[test]
    fn a_section_that_would_raise_thresholds_or_never_start_is_refused() {
        assert!(section(3, 0.5, 1.0).validate().is_ok());
        assert!(section(0, 0.5, 1.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("frames"));
        assert!(section(3, 1.5, 1.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("(0, 1]"));
        assert!(section(3, 0.0, 1.0).validate().is_err());
        assert!(section(3, 0.5, f64::NAN).validate().is_err());
    }

    #[test]
    fn the_floor_is_ln_branches_over_rate() {
        assert!((floor(1, 1e-4) - 10_000f64.ln()).abs() < 1e-12);
        assert!((floor(3, 5e-5) - 60_000f64.ln()).abs() < 1e-12);
    }

    /// One branch at a calibrated threshold of 10 (no floor to speak of).
    fn one_branch(s: &[f64]) -> Trace {
        s.iter().map(|&x| vec![step(x, 10.0)]).collect()
    }

    /// Equal but for the certification's margin of 1e-9.
    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-8 * b.abs().max(1e-300)
    }

    /// Four drives, a start-up of 2 frames: one alarms in it (15 > 10). The others carry S into
    /// the cruise as the share of their threshold's fall, then take their increments: [9, 1, 9]
    /// carries 1 x scale and gains 8, over 10 x scale below a scale of 8/9; [1, 1, 2] gains 1,
    /// over below 1/9; [10, 8, 4] falls from 8 x scale by 4 and never alarms (with a plain fall
    /// to the cruise thresholds it would, below 0.4). With 2 drives allowed, one more may alarm
    /// after the start-up: the scale is the next drive's 1/9, and 2 drives alarm.
    #[test]
    fn the_scale_spends_what_the_start_up_leaves_of_the_budget() {
        let traces: Vec<Trace> = [
            &[15.0, 1.0, 1.0][..],
            &[9.0, 1.0, 9.0],
            &[10.0, 8.0, 4.0],
            &[1.0, 1.0, 2.0],
        ]
        .iter()
        .map(|s| one_branch(s))
        .collect();
        let (scale, alarmed) = certify(&traces, 2, 2, 0.0);
        assert!(near(scale, 1.0 / 9.0) && alarmed == 2, "{scale} {alarmed}");
        // With one drive allowed, the start-up spent it: the largest after it, 8/9.
        let (scale, alarmed) = certify(&traces, 2, 1, 0.0);
        assert!(near(scale, 8.0 / 9.0) && alarmed == 1, "{scale} {alarmed}");
        // None allowed: the start-up's drive is already over, so nothing is lowered, and the
        // section says the promise is not kept.
        assert_eq!(certify(&traces, 2, 0, 0.0), (1.0, 1));
        let over = StartupSection {
            tuning_drives_alarmed: 1,
            tuning_drives_allowed: 0,
            ..section(2, 1.0, 0.0)
        };
        assert!(!over.promise_kept() && section(2, 1.0 / 9.0, 0.0).promise_kept());
        let said = over.broken_promise().expect("a warning");
        assert!(
            said.starts_with("1 of its tuning drives") && said.contains("the 0 its promise allows"),
            "{said}"
        );
        assert_eq!(section(2, 1.0 / 9.0, 0.0).broken_promise(), None);
        // A start-up that covers the whole drive: no frame after it, every threshold at its floor.
        let (scale, alarmed) = certify(&traces, 3, 1, 0.0);
        assert!(scale > 0.0 && scale < 1e-300);
        assert_eq!(alarmed, 1);
    }

    /// The cruise scale found is exactly where the drive stops alarming, as the monitor would
    /// judge it: just under it the drive alarms, at it it does not.
    #[test]
    fn the_critical_scale_is_the_edge_of_an_alarm() {
        let t = one_branch(&[3.0, 6.0, 2.0, 7.0, 0.0, 5.0]);
        let c = critical_scale(&t, 2, 0.5);
        assert!(c > 0.0 && c < 1.0, "{c}");
        assert!(!alarms_in_cruise(&t, 2, c, 0.5));
        assert!(alarms_in_cruise(&t, 2, c * (1.0 - 1e-9), 0.5));
        // The floor holds the thresholds up: at a floor of 10 nothing after the start-up alarms.
        assert_eq!(critical_scale(&t, 2, 10.0), 0.0);
    }

    /// A branch with no step at some frames (a baseline filling) carries its S through them;
    /// branches are judged each against its own threshold.
    #[test]
    fn branches_without_a_step_keep_their_s_and_each_has_its_threshold() {
        let t: Trace = vec![
            vec![step(1.0, 10.0), None],
            vec![step(2.0, 10.0), step(3.0, 4.0)],
            vec![step(0.0, 10.0), None],
            vec![step(0.0, 10.0), step(4.5, 4.0)],
        ];
        // The first branch falls to 0. The second carries 3 x scale through frame 2 (no step
        // there) and gains 1.5 at frame 3: over its own 4 x scale at every scale.
        assert!(alarms_in_cruise(&t, 2, 0.5, 0.0));
        assert!(alarms_in_cruise(&t, 2, 0.95, 0.0));
        // Even at its calibrated threshold (4.5 > 4): no scale keeps it quiet.
        assert!(critical_scale(&t, 2, 0.0).is_infinite());
        assert!(!alarms_in_start_up(&t, 2));
        assert!(alarms_in_start_up(&t, 4));
    }

    /// The rule for the length: a start that is still rising at frame 1 sets the scale there
    /// (5 carried as 5 x scale, +3: over 10 x scale below 0.6); from frame 2 on it has settled
    /// and every threshold is at the floor, as at the longest candidate.
    #[test]
    fn the_shortest_start_up_whose_thresholds_are_the_longest_ones() {
        let traces = vec![one_branch(&[5.0, 8.0, 0.0, 0.0])];
        let (chosen, table) = shortest(&traces, &[1, 2, 3], 0, 1.0, &[10.0]).unwrap();
        assert_eq!(chosen, table[1]);
        assert_eq!(chosen.frames, 2);
        assert!(near(table[0].cruise_scale, 0.6), "{table:?}");
        assert!(
            table[1..].iter().all(|w| w.cruise_scale < 1e-300),
            "{table:?}"
        );
        assert!(shortest(&traces, &[], 0, 1.0, &[10.0]).is_none());
    }

    /// A ratio of exactly 1 does not alarm (S equal to the threshold), as in tuning.
    #[test]
    fn a_ratio_at_the_threshold_is_not_an_alarm() {
        let traces = vec![one_branch(&[10.0, 5.0]), one_branch(&[3.0, 6.0])];
        // Neither alarms in a 1-frame start-up; the second carries 3 x scale and gains 3: at 1
        // it stands at 6, under 10.
        let (scale, alarmed) = certify(&traces, 1, 0, 0.0);
        assert!(near(scale, 3.0 / 7.0), "{scale}");
        assert_eq!(alarmed, 0);
    }

    #[test]
    fn the_end_ratio_is_the_thresholds_fall_and_never_raises_s() {
        let s = section(3, 0.25, 5.0);
        assert_eq!(s.end_ratio(40.0), 0.25);
        assert_eq!(s.end_ratio(12.0), 5.0 / 12.0);
        assert_eq!(s.end_ratio(4.0), 1.0);
    }
}
