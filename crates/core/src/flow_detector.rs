//! The paper's second detector: a VAE over stacked optical flow (the paper authors' RTCSA 2022
//! design). Each stream keeps its motion history ([`crate::flow::FlowStack`]); once it holds
//! `depth` fields, the horizontal and vertical stacks go to the encoder's two branches and
//! the posterior is scored as the bundle says (by default the KL of the selected latents,
//! which may come from both branches; a Mahalanobis reference may add the stack's motion
//! residual, [`crate::flow::motion_residual`]). Until then, and again after a gap in a
//! stream, frames give [`Fault::WarmingUp`] (state STARTING) instead of a score.

use crate::bundle::{Bundle, DetectorSpec};
use crate::detail::DetailSpec;
use crate::detector::{
    encode_all, scored, zero_size, Detector, Fault, Scored, StreamFrame, StreamId,
};
use crate::encoder::Encoder;
use crate::flow::{FlowSpec, FlowStack, ResidualStatistic};
use crate::score::PartSpec;
use std::time::Instant;

pub struct FlowDetector {
    bundle: Bundle,
    spec: FlowSpec,
    encoder: Box<dyn Encoder>,
    streams: Vec<FlowStack>,
    /// The motion residual is measured for the caller ([`Detector::measure_motion_residual`]),
    /// and with `measure_motion` the stack's motion after it.
    measure_residual: bool,
    measure_motion: bool,
    /// And the detail lost after them ([`Detector::measure_detail_lost`]).
    measure_lost: bool,
}

impl FlowDetector {
    /// A detector over a loaded, checked encoder of a flow bundle.
    ///
    /// # Panics
    /// When the bundle is not a flow bundle ([`crate::detector::load`] dispatches on the kind).
    pub(crate) fn new(bundle: Bundle, encoder: Box<dyn Encoder>) -> Self {
        let DetectorSpec::Flow(spec) = bundle.manifest.detector.clone() else {
            panic!("FlowDetector needs a flow bundle");
        };
        Self {
            bundle,
            spec,
            encoder,
            streams: vec![],
            measure_residual: false,
            measure_motion: false,
            measure_lost: false,
        }
    }

    /// The parts of a per-branch score ([`crate::score::Reference::fit_parts`]) over `count`
    /// latents' features (mu of every latent, then logvar): `horizontal` and `vertical`, each
    /// its branch's mu and logvar, then `motion_residual` (counted above its mean only with
    /// `residual_upper_only`) when the features end with it.
    pub fn branch_parts(
        count: usize,
        motion_residual: bool,
        residual_upper_only: bool,
    ) -> Vec<PartSpec> {
        let [h, v] = FlowSpec::branch_latents(count);
        let mut parts: Vec<PartSpec> = [("horizontal", h), ("vertical", v)]
            .into_iter()
            .map(|(name, r)| PartSpec {
                name: name.into(),
                features: r.clone().chain(r.map(|i| count + i)).collect(),
                upper_only: false,
            })
            .collect();
        if motion_residual {
            parts.push(PartSpec {
                name: "motion_residual".into(),
                features: vec![2 * count],
                upper_only: residual_upper_only,
            });
        }
        parts
    }

    /// Whether the streams measure the detail lost: the score uses it, or the caller asked.
    fn detail_lost(&self) -> bool {
        self.measure_lost || self.bundle.manifest.score.detail_lost()
    }

    /// The KL of each branch (horizontal, vertical) from a frame's per-latent KL: the
    /// reference design's per-branch scores.
    pub fn branch_kl(kl: &[f64]) -> [f64; 2] {
        FlowSpec::branch_latents(kl.len()).map(|r| kl[r].iter().sum())
    }
}

impl Detector for FlowDetector {
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
        let mut stack = self.spec.stack();
        stack.measure_detail_lost(self.detail_lost());
        self.streams.push(stack);
        self.streams.len() - 1
    }

    fn reset_stream(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.reset();
        }
    }

    /// Detail features describe a single image; the flow detector's score has none.
    fn measure_detail(&mut self, _spec: Option<DetailSpec>) {}

    fn measure_motion_residual(
        &mut self,
        statistic: Option<ResidualStatistic>,
        with_motion: bool,
    ) -> bool {
        self.measure_residual = statistic.is_some();
        self.measure_motion = statistic.is_some() && with_motion;
        if let Some(s) = statistic {
            // Every stream's history summarises its pairs the new way from its next pair on.
            self.spec.residual = s;
            for stack in &mut self.streams {
                stack.residual = s;
            }
        }
        true
    }

    fn measure_detail_lost(&mut self, on: bool) -> bool {
        self.measure_lost = on;
        let measure = self.detail_lost();
        for stack in &mut self.streams {
            stack.measure_detail_lost(measure);
        }
        true
    }

    fn score_batch(&mut self, frames: &[StreamFrame<'_>]) -> Vec<Result<Scored, Fault>> {
        let t0 = Instant::now();
        // Each frame advances its stream's history; warm stacks go to the encoder together.
        let mut results: Vec<Option<Result<Scored, Fault>>> = Vec::with_capacity(frames.len());
        let mut inputs = vec![];
        let mut residuals = vec![];
        for f in frames {
            let step = match (zero_size(&f.pixels), self.streams.get_mut(f.stream)) {
                (Some(e), _) => Err(Fault::from(e)),
                (None, None) => Err(Fault::Inference(format!(
                    "stream {} was never opened",
                    f.stream
                ))),
                (None, Some(stack)) => match stack.push(f.pixels, f.stamp_ns) {
                    Ok(Some(s)) => Ok((
                        self.spec.encoder_input(&s),
                        (s.residual, s.motion, s.detail_lost),
                    )),
                    Ok(None) => Err(Fault::WarmingUp {
                        needed: stack.warming_up(),
                    }),
                    Err(e) => Err(Fault::Inference(e.to_string())),
                },
            };
            match step {
                Ok((x, residual)) => {
                    inputs.push(x);
                    residuals.push(residual);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut encoded = encode_all(self.encoder.as_mut(), &inputs, t0.elapsed())
            .into_iter()
            .zip(residuals);
        let manifest = &self.bundle.manifest;
        let own = manifest.score.motion_residual();
        let (own_motion, own_lost) = (
            manifest.score.residual_given_motion(),
            manifest.score.detail_lost(),
        );
        let (measure, measure_motion) = (self.measure_residual, self.measure_motion);
        let measure_lost = measure && self.measure_lost;
        // The residual, then the motion and the detail lost when asked for.
        let extra = |(r, [h, v], lost): (f64, [f64; 2], f64), motion: bool, with_lost: bool| {
            let mut e = vec![r];
            if motion {
                e.extend([h, v]);
            }
            if with_lost {
                e.push(lost);
            }
            e
        };
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => {
                    let (r, residual) = encoded.next().expect("one result per encoded input");
                    let (p, pre, inf) = r?;
                    let detail = (
                        if own {
                            extra(residual, own_motion, own_lost)
                        } else {
                            vec![]
                        },
                        measure.then(|| extra(residual, measure_motion, measure_lost)),
                    );
                    scored(manifest, p.mu, p.logvar, detail).map(|mut s| {
                        s.preprocess = pre;
                        s.inference = inf;
                        s
                    })
                }
            })
            .collect()
    }
}
