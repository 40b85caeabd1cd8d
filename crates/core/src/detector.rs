//! The detector seam: what the monitor, the evaluation and the calibration call to turn
//! frames into nonconformity scores.
//!
//! A [`Detector`] scores frames of one or more *streams* (a camera, a recorded drive). Each
//! stream has its own state inside the detector: the β-VAE image detector keeps none, a
//! detector that watches motion (optical flow) keeps each stream's previous frames. Frames
//! of several streams can be scored in one call ([`Detector::score_batch`]), which is where a
//! backend batches several cameras into one inference.

use crate::bundle::{Bundle, BundleError, DetectorSpec};
use crate::detail::{DetailExtractor, DetailSpec};
use crate::detection::direction::DirectionMeter;
use crate::encoder::{self, BackendOptions, Encoder};
use crate::frame::{FrameError, Pixels};
use crate::preprocess::Preprocessor;
use std::path::Path;
use std::time::{Duration, Instant};

/// Names a stream of frames within one detector (see [`Detector::open_stream`]).
pub type StreamId = usize;

/// One frame of one stream, with its stamp when known.
#[derive(Debug, Clone, Copy)]
pub struct StreamFrame<'a> {
    pub stream: StreamId,
    pub pixels: Pixels<'a>,
    pub stamp_ns: Option<i64>,
}

/// One frame's score and where the time went.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The nonconformity score (the bundle's `score`: by default KL summed over the selected
    /// latents).
    pub score: f64,
    /// KL per latent (all latents, not only the selected ones).
    pub kl: Vec<f64>,
    /// The posterior: mu and logvar of every latent.
    pub mu: Vec<f32>,
    pub logvar: Vec<f32>,
    /// The frame's detail features ([`crate::detail`]): those the score uses, or those asked
    /// for by [`Detector::measure_detail`]; empty when neither.
    pub detail: Vec<f64>,
    /// The posterior's and the extra features' tail scores, when the score is their larger
    /// ([`crate::score::Separate`], the flow detector's motion residual): which part a high
    /// score came from.
    pub tail_scores: Option<[f64; 2]>,
    /// The frame's weakest direction ([`crate::detection::direction`]): image detectors whose
    /// bundle has a direction branch, or told to by [`Detector::measure_direction`].
    pub direction: Option<f64>,
    pub preprocess: Duration,
    pub inference: Duration,
}

/// Why a frame could not be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    #[error("rejected frame: {0}")]
    Rejected(#[from] FrameError),
    #[error("stale frame: {age:?} old, max_frame_age is {max:?}")]
    Stale { age: Duration, max: Duration },
    /// The frame's stamp is further ahead of the node's clock than `max_frame_age`: the two
    /// clocks disagree (a clock that jumped back, `use_sim_time` fed by another /clock than the
    /// camera's, or skew between machines), so the frame's age, and with it the stale check,
    /// cannot be trusted.
    #[error("frame stamped {ahead:?} ahead of the node's clock (more than max_frame_age {max:?}): the camera's and the node's clocks disagree (a clock jump, or use_sim_time with another /clock)")]
    AheadOfClock { ahead: Duration, max: Duration },
    #[error("encoder produced NaN or infinite values")]
    NonFinite,
    #[error("{0}")]
    Inference(String),
    /// A detector with history (the flow detector) has not seen enough consecutive frames of
    /// this stream yet, at its start or after a gap: no score, state STARTING. Not a fault of
    /// the frame; the monitor counts it apart from faults.
    #[error("warming up: {needed} more consecutive frames before the first score")]
    WarmingUp { needed: usize },
    /// No frame arrived for the input timeout: the camera (or its driver) went silent.
    #[error("no frame for {0:?} (input_timeout): camera silent")]
    InputTimeout(Duration),
    /// The encoder's posterior repeated bit for bit over more consecutive frames than
    /// `max_repeated_frames` allows: the camera keeps sending the same image (a frozen driver
    /// or a stuck republisher), which tells nothing about the scene now.
    #[error("{repeats} consecutive frames repeated the previous one exactly (max_repeated_frames {max}): camera frozen")]
    Frozen { repeats: u32, max: u32 },
    /// Fewer frames were stamped in the last second than `min_rate` asks: frames are lost
    /// before they are scored (an overloaded camera or driver, a congested transport, or this
    /// node dropping frames it cannot keep up with), so the verdict rests on a thinner view of
    /// the scene than the detector was calibrated for.
    #[error("{frames} frames stamped in the last second reached scoring, below min_rate {min} Hz: frames are lost before scoring (camera, driver, transport, or this node falling behind: see frames_dropped in /diagnostics)")]
    SlowStream { frames: usize, min: f64 },
}

impl Fault {
    /// Stable counter key, e.g. `rejected.truncated`, `stale`, `non_finite`.
    pub fn kind(&self) -> String {
        match self {
            Self::Rejected(e) => format!("rejected.{}", e.kind()),
            Self::Stale { .. } => "stale".into(),
            Self::AheadOfClock { .. } => "ahead_of_clock".into(),
            Self::NonFinite => "non_finite".into(),
            Self::Inference(_) => "inference_error".into(),
            Self::WarmingUp { .. } => "warming_up".into(),
            Self::InputTimeout(_) => "input_timeout".into(),
            Self::Frozen { .. } => "frozen".into(),
            Self::SlowStream { .. } => "slow_stream".into(),
        }
    }
}

/// A detector kind: scores frames of streams against its bundle. Frames come as checked
/// [`Pixels`], read in place (a raw message buffer or a decoded image).
pub trait Detector: Send {
    /// The bundle the detector was loaded from (manifest, model id).
    fn bundle(&self) -> &Bundle;

    /// The backend running the encoder, for logs and diagnostics.
    fn backend(&self) -> &'static str;

    /// The device the encoder runs on ("cpu", or the GPU's name, memory and driver).
    fn device(&self) -> String {
        "cpu".into()
    }

    /// Starts a stream with fresh state and returns its id.
    fn open_stream(&mut self) -> StreamId;

    /// Forgets a stream's state (the next frame starts it afresh).
    fn reset_stream(&mut self, stream: StreamId);

    /// Measures these detail features for the caller: [`Scored::detail`] then holds them
    /// instead of the score's own (calibration fits a new reference on them). The score is
    /// unchanged. `None` goes back to the score's own.
    fn measure_detail(&mut self, spec: Option<DetailSpec>);

    /// Flow detectors: measures the motion residual, summarised by `statistic`
    /// ([`crate::flow::residual_statistic`]), for the caller, as [`Scored::detail`]'s first
    /// value, followed with `with_motion` by the stack's motion ([`crate::flow::Stacked::motion`]),
    /// whatever the score uses (calibration fits a reference on them); `None` stops. Returns
    /// false for a detector that has no motion (the image detector).
    fn measure_motion_residual(
        &mut self,
        _statistic: Option<crate::flow::ResidualStatistic>,
        _with_motion: bool,
    ) -> bool {
        false
    }

    /// Flow detectors, while measuring the motion residual: the frame's detail lost against
    /// the stream's past ([`crate::detail_lost`]) follows the residual (and any motion) in
    /// [`Scored::detail`]. Returns false for a detector that cannot measure it.
    fn measure_detail_lost(&mut self, _on: bool) -> bool {
        false
    }

    /// Image detectors: measures each frame's weakest direction with `meter`
    /// ([`Scored::direction`]) whether or not the bundle has a direction branch (calibration
    /// builds one from it); `None` goes back to the bundle's own. Returns false for a detector
    /// that cannot (the flow detector).
    fn measure_direction(&mut self, _meter: Option<DirectionMeter>) -> bool {
        false
    }

    /// Stops measuring the direction branch's statistic (its cost, about 0.5 ms a frame with
    /// the MSCN statistic, buys nothing when no monitor runs the branch: `direction_branch:
    /// false`). [`Self::measure_direction`] starts it again.
    fn measure_no_direction(&mut self) {}

    /// Scores the next frame of each listed stream (at most one frame per stream), in order,
    /// in one call where the backend can batch.
    fn score_batch(&mut self, frames: &[StreamFrame<'_>]) -> Vec<Result<Scored, Fault>>;

    /// Scores the next frame of one stream, unstamped (taken as the stream's next frame).
    fn score(&mut self, stream: StreamId, frame: Pixels<'_>) -> Result<Scored, Fault> {
        self.score_at(stream, frame, None)
    }

    /// Scores the next frame of one stream, stamped `stamp_ns` when known: a detector with
    /// history restarts it when the stamps show a gap.
    fn score_at(
        &mut self,
        stream: StreamId,
        frame: Pixels<'_>,
        stamp_ns: Option<i64>,
    ) -> Result<Scored, Fault> {
        self.score_batch(&[StreamFrame {
            stream,
            pixels: frame,
            stamp_ns,
        }])
        .pop()
        .expect("score_batch returns one result per frame")
    }

    fn model_id(&self) -> &str {
        &self.bundle().model_id
    }
}

/// Loads the detector a bundle describes (its `detector.kind`), its encoder on the chosen
/// backend.
pub fn load(dir: impl AsRef<Path>, opts: BackendOptions) -> Result<Box<dyn Detector>, BundleError> {
    let bundle = Bundle::load(dir)?;
    let encoder = encoder::load(&bundle, opts)?;
    Ok(match &bundle.manifest.detector {
        DetectorSpec::Image => Box::new(ImageDetector::new(bundle, encoder)),
        DetectorSpec::Flow(_) => Box::new(crate::flow_detector::FlowDetector::new(bundle, encoder)),
    })
}

/// The paper's β-VAE detector: each frame on its own, the posterior of one frame scored in
/// latent space. Keeps no per-stream state.
pub struct ImageDetector {
    bundle: Bundle,
    encoder: Box<dyn Encoder>,
    preprocessor: Preprocessor,
    /// The detail channel the bundle's score uses, and one measured for the caller.
    detail: Option<DetailExtractor>,
    extra_detail: Option<DetailExtractor>,
    /// The direction branch's meter (the bundle's, or one asked for).
    direction: Option<DirectionMeter>,
    streams: StreamId,
}

impl ImageDetector {
    pub fn load(dir: impl AsRef<Path>, opts: BackendOptions) -> Result<Self, BundleError> {
        let bundle = Bundle::load(dir)?;
        image_only(&bundle)?;
        let encoder = encoder::load(&bundle, opts)?;
        Ok(Self::new(bundle, encoder))
    }

    /// A detector over a given encoder (a test's blocking or failing one, another runtime),
    /// after the same model checks a loaded encoder gets.
    pub fn with_encoder(
        bundle: Bundle,
        mut encoder: Box<dyn Encoder>,
    ) -> Result<Self, BundleError> {
        image_only(&bundle)?;
        encoder::check_encoder(encoder.as_mut(), &bundle.manifest)?;
        Ok(Self::new(bundle, encoder))
    }

    pub(crate) fn new(bundle: Bundle, encoder: Box<dyn Encoder>) -> Self {
        Self {
            preprocessor: Preprocessor::new(bundle.manifest.input.clone()),
            detail: bundle.manifest.score.detail_extractor(),
            extra_detail: None,
            direction: own_direction(&bundle),
            bundle,
            encoder,
            streams: 0,
        }
    }
}

/// A posterior scored as `manifest` scores it, with the frame's detail features (`own`, the
/// score's; `extra`, those measured for the caller); non-finite values are a fault.
pub(crate) fn scored(
    manifest: &crate::bundle::Manifest,
    mu: Vec<f32>,
    logvar: Vec<f32>,
    (own, extra): (Vec<f64>, Option<Vec<f64>>),
) -> Result<Scored, Fault> {
    if mu.iter().chain(&logvar).any(|v| !v.is_finite()) {
        return Err(Fault::NonFinite);
    }
    let (kl, score, tail_scores) = manifest.score_posterior_with_tails(&mu, &logvar, &own);
    let detail = extra.unwrap_or(own);
    if !score.is_finite() {
        return Err(Fault::NonFinite);
    }
    Ok(Scored {
        score,
        kl,
        mu,
        logvar,
        detail,
        tail_scores,
        direction: None,
        preprocess: Duration::ZERO,
        inference: Duration::ZERO,
    })
}

impl Detector for ImageDetector {
    fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    fn backend(&self) -> &'static str {
        self.encoder.backend()
    }

    fn device(&self) -> String {
        self.encoder.device()
    }

    fn open_stream(&mut self) -> StreamId {
        self.streams += 1;
        self.streams - 1
    }

    fn reset_stream(&mut self, _stream: StreamId) {}

    fn measure_detail(&mut self, spec: Option<DetailSpec>) {
        self.extra_detail = spec.map(DetailExtractor::new);
    }

    fn measure_direction(&mut self, meter: Option<DirectionMeter>) -> bool {
        self.direction = meter.or_else(|| own_direction(&self.bundle));
        true
    }

    fn measure_no_direction(&mut self) {
        self.direction = None;
    }

    fn score_batch(&mut self, frames: &[StreamFrame<'_>]) -> Vec<Result<Scored, Fault>> {
        if frames.is_empty() {
            return vec![];
        }
        // A frame with no pixels is that frame's fault alone: the batch's other frames (other
        // cameras) are scored as if it had not come.
        let empty: Vec<Option<FrameError>> = frames.iter().map(|f| zero_size(&f.pixels)).collect();
        if empty.iter().any(Option::is_some) {
            let rest: Vec<StreamFrame<'_>> = frames
                .iter()
                .zip(&empty)
                .filter(|(_, e)| e.is_none())
                .map(|(f, _)| *f)
                .collect();
            let mut scored = self.score_batch(&rest).into_iter();
            return empty
                .into_iter()
                .map(|e| match e {
                    Some(e) => Err(e.into()),
                    None => scored.next().expect("one result per frame with pixels"),
                })
                .collect();
        }
        let t0 = Instant::now();
        let inputs: Vec<Vec<f32>> = frames
            .iter()
            .map(|f| self.preprocessor.run(f.pixels))
            .collect();
        let (own, extra, meter) = (
            &mut self.detail,
            &mut self.extra_detail,
            &mut self.direction,
        );
        // The direction branch shares the score's luma pass where both measure at one size.
        let shared = matches!((&own, &meter), (Some(d), Some(m)) if m.shares_luma_with(d));
        let (mut details, mut directions): (Vec<_>, Vec<_>) = frames
            .iter()
            .map(|StreamFrame { pixels: px, .. }| {
                let (features, direction) = match (own.as_mut(), meter.as_mut()) {
                    (Some(d), Some(m)) if shared => {
                        let (f, means) = d.features_and_direction_means(*px);
                        (f, m.from_means(means))
                    }
                    (d, m) => (
                        d.map_or(vec![], |d| d.features(*px)),
                        m.map(|m| m.measure(*px)),
                    ),
                };
                (
                    (features, extra.as_mut().map(|d| d.features(*px))),
                    direction,
                )
            })
            .unzip();
        let pre = t0.elapsed();
        encode_all(self.encoder.as_mut(), &inputs, pre)
            .into_iter()
            .zip(details.drain(..))
            .zip(directions.drain(..))
            .map(|((r, detail), direction)| {
                let (p, pre, inf) = r?;
                scored(&self.bundle.manifest, p.mu, p.logvar, detail).map(|mut s| {
                    s.direction = direction;
                    s.preprocess = pre;
                    s.inference = inf;
                    s
                })
            })
            .collect()
    }
}

/// The direction meter a bundle's direction branch needs.
fn own_direction(bundle: &Bundle) -> Option<DirectionMeter> {
    let d = bundle.manifest.calibration.as_ref()?.direction.as_ref()?;
    Some(d.meter())
}

/// The image detector cannot run another kind's bundle.
fn image_only(bundle: &Bundle) -> Result<(), BundleError> {
    match &bundle.manifest.detector {
        DetectorSpec::Image => Ok(()),
        other => Err(BundleError::Manifest {
            path: bundle.dir.join(crate::bundle::MANIFEST_FILE),
            reason: format!(
                "a {} detector bundle: load it with detector::load, which picks the detector its kind names",
                other.kind()
            ),
        }),
    }
}

/// The frame error of a frame with no pixels, which no detector can score.
pub(crate) fn zero_size(px: &Pixels<'_>) -> Option<FrameError> {
    (px.width() == 0 || px.height() == 0).then(|| FrameError::ZeroSize {
        width: px.width(),
        height: px.height(),
    })
}

/// One frame's posterior and its share of the call's preprocessing and inference time.
pub(crate) type Encoded = Result<(crate::encoder::Posterior, Duration, Duration), Fault>;

/// Encodes `inputs` in one batch call; `pre` is the time their preprocessing took. Stage times
/// are shared evenly by the frames of one call; a failed call fails every frame.
pub(crate) fn encode_all(
    encoder: &mut dyn Encoder,
    inputs: &[Vec<f32>],
    pre: Duration,
) -> Vec<Encoded> {
    if inputs.is_empty() {
        return vec![];
    }
    let t1 = Instant::now();
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let posteriors = encoder.encode_batch(&refs);
    let n = inputs.len() as u32;
    let (pre, inf) = (pre / n, t1.elapsed() / n);
    match posteriors {
        Ok(ps) if ps.len() == inputs.len() => ps.into_iter().map(|p| Ok((p, pre, inf))).collect(),
        Ok(ps) => {
            let e = format!(
                "the encoder gave {} results for {} inputs",
                ps.len(),
                inputs.len()
            );
            inputs
                .iter()
                .map(|_| Err(Fault::Inference(e.clone())))
                .collect()
        }
        Err(e) => inputs
            .iter()
            .map(|_| Err(Fault::Inference(e.0.clone())))
            .collect(),
    }
}
