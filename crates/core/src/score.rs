//! Nonconformity scores: how an encoder's posterior N(mu, exp(logvar)) becomes one number per
//! frame, larger the less the frame looks like the training distribution.
//!
//! - [`ScoreSpec::Kl`], the paper's score: the KL divergence between the posterior and the prior
//!   N(0, 1), per latent, summed over the selected latents. Latents that vary with the scene
//!   rather than with the data distribution are left out by the selection, which is why the sum
//!   is over a subset.
//! - [`ScoreSpec::Mahalanobis`]: the Mahalanobis distance of the whole posterior, (mu, logvar)
//!   of every latent, from a Gaussian fitted on in-distribution frames ([`Reference`]). Some
//!   shifts move the posterior jointly, in no latent's KL: on the default detector, rain at
//!   the default severity raises no latent's KL (per-frame AUROC about 0.56 on the validation
//!   drives), while this distance separates it (docs/detector-experiments.md). The price is a
//!   fitted reference, so the score depends on the in-distribution drives it was fitted on.
//!   A reference may add the frame's detail features ([`crate::detail`]) to the posterior:
//!   what the encoder's small input averages away (noise, blur) then moves the distance too.

use crate::detail::{DetailError, DetailExtractor, DetailSpec};
use crate::mixture::Component;
use crate::tail::{Tail, TailError};
use serde::{Deserialize, Serialize};

/// KL(N(mu, sigma^2) || N(0, 1)) per latent: 0.5 * (mu^2 + exp(logvar) - logvar - 1).
/// Computed in f64 so the sequential statistics built on it are reproducible.
pub fn kl_per_latent(mu: &[f32], logvar: &[f32]) -> Vec<f64> {
    mu.iter()
        .zip(logvar)
        .map(|(&m, &lv)| {
            let (m, lv) = (f64::from(m), f64::from(lv));
            0.5 * (m * m + lv.exp() - lv - 1.0)
        })
        .collect()
}

/// The KL score: the KL summed over `selected` latent indices.
pub fn nonconformity(kl: &[f64], selected: &[usize]) -> f64 {
    selected.iter().map(|&i| kl[i]).sum()
}

/// Which nonconformity score a bundle uses (the manifest's `score` section; absent = KL).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScoreSpec {
    /// KL to the prior summed over `latents.selected` (the paper's score).
    #[default]
    Kl,
    /// Mahalanobis distance of (mu, logvar), and the detail features if the reference has
    /// them, from a fitted in-distribution Gaussian.
    Mahalanobis(Reference),
}

impl ScoreSpec {
    pub fn is_kl(&self) -> bool {
        matches!(self, Self::Kl)
    }

    /// The score of one posterior, and in the same pass the posterior's and the extra features'
    /// tail scores when the score is their larger ([`Reference::distance_with_tails`]). `kl` is
    /// its KL per latent (see [`kl_per_latent`]), `detail` the frame's detail features when
    /// [`Self::detail`] asks for them (else empty).
    pub fn score_with_tails(
        &self,
        selected: &[usize],
        mu: &[f32],
        logvar: &[f32],
        kl: &[f64],
        detail: &[f64],
    ) -> (f64, Option<[f64; 2]>) {
        match self {
            Self::Kl => (nonconformity(kl, selected), None),
            Self::Mahalanobis(r) => r.distance_with_tails(&features(mu, logvar, detail)),
        }
    }

    /// The detail features the score needs, if any.
    pub fn detail(&self) -> Option<&DetailSpec> {
        match self {
            Self::Kl => None,
            Self::Mahalanobis(r) => r.detail.as_ref(),
        }
    }

    /// Whether the score's features end with the flow detector's motion residual
    /// ([`crate::flow::motion_residual`], the mean over the stack).
    pub fn motion_residual(&self) -> bool {
        matches!(self, Self::Mahalanobis(r) if r.motion_residual)
    }

    /// Whether the motion residual is judged given the stack's motion, whose two values then
    /// follow it in the features ([`Reference::residual_given_motion`]).
    pub fn residual_given_motion(&self) -> bool {
        self.given_motion().is_some()
    }

    /// How the motion residual is judged given the stack's motion, if it is
    /// ([`Reference::residual_given_motion`]).
    pub fn given_motion(&self) -> Option<GivenMotion> {
        match self {
            Self::Mahalanobis(r) => r.residual_given_motion,
            Self::Kl => None,
        }
    }

    /// Whether the score's features end with the flow detector's detail lost against the
    /// stream's past ([`crate::detail_lost`], after the residual and any motion), scored
    /// beside the residual ([`Separate::detail_lost`]).
    pub fn detail_lost(&self) -> bool {
        matches!(self, Self::Mahalanobis(r) if r.detail_lost())
    }

    /// A fresh extractor of [`Self::detail`], if the score uses the detail channel.
    pub fn detail_extractor(&self) -> Option<DetailExtractor> {
        self.detail().copied().map(DetailExtractor::new)
    }

    /// Checks the section against the encoder's latent count (at bundle load).
    pub fn validate(&self, latents: usize) -> Result<(), ScoreError> {
        match self {
            Self::Kl => Ok(()),
            Self::Mahalanobis(r) => {
                if let Some(d) = &r.detail {
                    d.validate()?;
                }
                if r.residual_given_motion.is_some()
                    && !(r.motion_residual && r.separate.as_ref().is_some_and(|s| s.upper_only))
                {
                    return Err(ScoreError::Separate(
                        "residual_given_motion needs motion_residual scored apart, upper tail only"
                            .into(),
                    ));
                }
                r.validate(
                    2 * latents
                        + r.detail.map_or(0, |d| d.features())
                        + usize::from(r.motion_residual)
                        + 2 * usize::from(r.residual_given_motion.is_some())
                        + usize::from(r.detail_lost()),
                )
            }
        }
    }

    /// One line for reports and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Kl => "KL to the prior, summed over the selected latents".into(),
            Self::Mahalanobis(r) => {
                let mut detail = r.detail.map_or(String::new(), |d| {
                    let grid = match d.grid {
                        1 => String::new(),
                        g if d.sorted_cells => format!(" and a {g}x{g} grid, sorted"),
                        g => format!(" and a {g}x{g} grid"),
                    };
                    let directions = if d.directions {
                        " and its directions"
                    } else {
                        ""
                    };
                    format!(
                        ", {} detail octaves at {}x{}{grid}{directions}",
                        d.octaves, d.width, d.height
                    )
                });
                if let Some(g) = r.residual_given_motion {
                    detail.push_str(match g {
                        GivenMotion::Motion => ", motion residual given the motion",
                        GivenMotion::Turn => {
                            ", motion residual and vertical motion given the horizontal"
                        }
                        GivenMotion::Apart => {
                            ", motion residual given the motion and, apart, vertical motion given the horizontal"
                        }
                    });
                } else if r.motion_residual {
                    detail.push_str(", motion residual");
                }
                if r.detail_lost() {
                    detail.push_str(" and, apart, detail lost against the drive's past");
                }
                if !r.parts.is_empty() {
                    let parts: Vec<String> = r
                        .parts
                        .iter()
                        .map(|p| {
                            format!(
                                "{} ({} feature{}{})",
                                p.name,
                                p.features.len(),
                                if p.features.len() == 1 { "" } else { "s" },
                                if p.upper_only { ", upper tail" } else { "" }
                            )
                        })
                        .collect();
                    return format!(
                        "the largest tail score of {} parts, each a Gaussian fitted on {} in-distribution frames: {}",
                        r.parts.len(),
                        r.frames,
                        parts.join(", ")
                    );
                }
                if r.separate.is_some() {
                    return format!(
                        "the larger tail score of the posterior's {} and of the{} apart, fitted on {} in-distribution frames",
                        match r.components() {
                            1 => "Mahalanobis distance".to_string(),
                            k => format!("-2 ln density under a mixture of {k} Gaussians"),
                        },
                        detail.trim_start_matches(','),
                        r.frames
                    );
                }
                let (what, reference) = match r.components() {
                    1 => ("Mahalanobis distance", "from a Gaussian".to_string()),
                    k => ("-2 ln density", format!("under a mixture of {k} Gaussians")),
                };
                format!(
                    "{what} of (mu, logvar{detail}) {reference} fitted on {} in-distribution frames",
                    r.frames
                )
            }
        }
    }
}

/// What is wrong with a Mahalanobis reference or the frames it is fitted on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("fitting the Mahalanobis reference needs more frames ({frames}) than features ({features}): give more --fit drives")]
    TooFewFitFrames { frames: usize, features: usize },
    #[error("fit frames differ in their number of latents")]
    RaggedFitFrames,
    #[error("the covariance of the fit frames is not positive definite (constant or duplicated features?)")]
    NotPositiveDefinite,
    #[error("score.mean has {mean} and score.precision {precision} values; the encoder needs {dim} and {} (mu and logvar of every latent, then any detail features, then the motion residual and its motion if any)", dim * dim)]
    ReferenceShape {
        mean: usize,
        precision: usize,
        dim: usize,
    },
    #[error("score.mean or score.precision holds a NaN or infinite value")]
    NonFiniteReference,
    #[error(transparent)]
    Detail(#[from] DetailError),
    #[error("Gaussian mixture reference: {0}")]
    Components(String),
    #[error("score.separate: {0}")]
    Separate(String),
    #[error("score.separate: {0}")]
    Tail(#[from] TailError),
    #[error("score.parts: {0}")]
    Parts(String),
}

/// (mu, logvar) of one posterior as one feature vector: mu of every latent, then logvar.
pub fn posterior_features(mu: &[f32], logvar: &[f32]) -> Vec<f64> {
    features(mu, logvar, &[])
}

/// The Mahalanobis score's feature vector: [`posterior_features`], then the detail features.
pub fn features(mu: &[f32], logvar: &[f32], detail: &[f64]) -> Vec<f64> {
    mu.iter()
        .chain(logvar)
        .map(|&v| f64::from(v))
        .chain(detail.iter().copied())
        .collect()
}

/// An in-distribution Gaussian over posterior features: the reference of the Mahalanobis score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// The drives it was fitted on (kept apart from calibration, tuning and test drives).
    pub fitted_on: Vec<String>,
    /// Number of frames it was fitted on.
    pub frames: usize,
    /// The detail channel, when the features include it (absent: the posterior alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<DetailSpec>,
    /// Flow detectors: the features end with the stack's motion residual
    /// ([`crate::flow::motion_residual`]). Absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub motion_residual: bool,
    /// Flow detectors, with `motion_residual` scored apart upper-tail only: the features end
    /// with the stack's motion too ([`crate::flow::Stacked::motion`], two values after the
    /// residual), and the residual is judged given the motion, as [`GivenMotion`] says: its
    /// standardised excess over what clear frames with that motion leave
    /// ([`Separate::upper_only`]). Absent: the residual alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_given_motion: Option<GivenMotion>,
    /// Mean feature vector (mu of every latent, then logvar, then any detail octaves). Empty
    /// when the reference is a mixture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f64>,
    /// Inverse covariance, row-major, `mean.len()` squared. Empty when the reference is a mixture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub precision: Vec<f64>,
    /// A Gaussian mixture instead of the single Gaussian above ([`crate::mixture`]); the score
    /// is then the mixture's (the squared Mahalanobis distance for one component).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Component>,
    /// The extra features (detail or motion residual) scored apart from the posterior: then
    /// `mean`, `precision` and `components` cover the posterior only, and the score is the
    /// larger of the two parts' tail scores ([`Separate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separate: Option<Box<Separate>>,
    /// The features scored in named parts ([`Part`]), each a Gaussian of its own put on one
    /// scale by its tail over the fit frames; the score is the largest part's tail score. Then
    /// `mean`, `precision`, `components` and `separate` are empty: the parts cover every
    /// feature once. The flow detector's per-branch score (horizontal posterior, vertical
    /// posterior, motion residual), `vae-ood calibrate --parts branches`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// How a flow reference judges the motion residual given the stack's motion (the extra
/// features residual, ln horizontal motion, ln vertical motion; [`crate::flow::Stacked::motion`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GivenMotion {
    /// The residual given both motions: max(0, z)^2, z its excess over its regression on them
    /// ([`conditional_z`]; session 27). Camera shake is motion, so this explains shake's
    /// residual away along with a turn's.
    Motion,
    /// The residual and the vertical motion, each given the horizontal motion (the turn) alone:
    /// max(0, z_r)^2 + max(0, z_v)^2 ([`turn_distance`]). A ground robot's turn moves the scene
    /// horizontally; more residual, or more vertical motion, than the turn explains is a shift.
    Turn,
    /// The residual given both motions (as [`Self::Motion`]), and beside it, with a tail of
    /// its own, the vertical motion given the horizontal motion (as in [`Self::Turn`]): the
    /// extra part's tail score is the larger of the two ([`Separate::vertical_tail`]). Neither
    /// explains the other's shift away, and nothing is summed.
    Apart,
}

impl GivenMotion {
    /// Its name in a bundle and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Motion => "motion",
            Self::Turn => "turn",
            Self::Apart => "apart",
        }
    }
}

impl std::str::FromStr for GivenMotion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "motion" => Ok(Self::Motion),
            "turn" => Ok(Self::Turn),
            "apart" => Ok(Self::Apart),
            other => Err(format!(
                "unknown motion conditioning {other:?}: motion, turn or apart"
            )),
        }
    }
}

/// One part of a [`Reference`] scored in parts: a Gaussian over some of the features, and the
/// tail of its distance over the fit frames. One score over several parts keeps one
/// sequential test and one false-alarm guarantee: a pipeline per part would split the budget
/// between them (docs/detector-experiments.md, "Two scores, two pipelines, one verdict").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// What the part is (e.g. `horizontal`, `vertical`, `motion_residual`).
    pub name: String,
    /// Its features' indices in the score's feature vector (mu of every latent, then logvar,
    /// then the extra features).
    pub features: Vec<usize>,
    /// Mean and inverse covariance (row-major) of those features.
    pub mean: Vec<f64>,
    pub precision: Vec<f64>,
    /// Its distance over the fit frames.
    pub tail: Tail,
    /// One feature counted above its mean only ([`Separate::upper_only`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upper_only: bool,
}

impl Part {
    /// The part's tail score of a frame's full feature vector.
    fn score(&self, x: &[f64]) -> f64 {
        let sub: Vec<f64> = self.features.iter().map(|&i| x[i]).collect();
        self.tail.score(extra_distance(
            &sub,
            &self.mean,
            &self.precision,
            self.upper_only,
            None,
        ))
    }
}

/// One part to fit ([`Reference::fit_parts`]): its name, feature indices, and whether only its
/// upper tail counts (one feature).
#[derive(Debug, Clone, PartialEq)]
pub struct PartSpec {
    pub name: String,
    pub features: Vec<usize>,
    pub upper_only: bool,
}

/// The extra features' own Gaussian, and both parts' in-distribution tails: a frame's score is
/// max(-ln P(posterior distance >= its own), -ln P(extra distance >= its own)), each
/// probability over the fit frames ([`crate::tail`]). One distance over both parts lets the
/// posterior's many features drown a few extra ones (docs/detector-experiments.md, "The motion
/// residual"); the larger tail score sees a frame that is extreme in either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Separate {
    /// Mean and inverse covariance (row-major) of the extra features.
    pub mean: Vec<f64>,
    pub precision: Vec<f64>,
    /// The posterior part's distance (squared Mahalanobis, or the mixture's score) over the
    /// fit frames.
    pub posterior_tail: Tail,
    /// The extra part's distance over the fit frames.
    pub extra_tail: Tail,
    /// The first extra feature counted above its mean only: its distance is max(0, z)^2, z its
    /// standardised value (the motion residual: more change left over than usual is a shift,
    /// less is not one this feature can vouch for). With more extra features, z is the first
    /// one's given the others under the fitted Gaussian (the residual given the motion):
    /// its excess over the conditional mean, in conditional standard deviations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upper_only: bool,
    /// With [`GivenMotion::Apart`]: the tail over the fit frames of the vertical motion's
    /// distance given the horizontal motion ([`vertical_given_turn`]), scored beside the
    /// residual's; the extra part's tail score is the larger of the two. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical_tail: Option<Tail>,
    /// Flow detectors: the features end with the detail the frame lost against the stream's
    /// past ([`crate::detail_lost`]), scored beside the residual with a Gaussian and a tail of
    /// its own (upper tail only: losing detail is the shift, gaining it is not); `mean` and
    /// `precision` then cover the extra features before it. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail_lost: Option<LostPart>,
}

/// [`Separate::detail_lost`]'s Gaussian and tail over the fit frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LostPart {
    /// Mean and inverse variance of the detail lost over the fit frames.
    pub mean: f64,
    pub precision: f64,
    /// Its distance max(0, z)^2 over the fit frames.
    pub tail: Tail,
}

impl LostPart {
    /// Fits the Gaussian and the tail on the fit frames' values, as any extra part
    /// ([`Reference::fit_extra`], upper tail only).
    pub fn fit(values: &[f64]) -> Result<Self, ScoreError> {
        let one: Vec<Vec<f64>> = values.iter().map(|&v| vec![v]).collect();
        let (g, tail) = Reference::fit_extra(&one, true, None)?;
        Ok(Self {
            mean: g.mean[0],
            precision: g.precision[0],
            tail,
        })
    }

    fn score(&self, v: f64) -> f64 {
        self.tail.score(extra_distance(
            &[v],
            &[self.mean],
            &[self.precision],
            true,
            None,
        ))
    }

    fn validate(&self) -> Result<(), ScoreError> {
        if !(self.mean.is_finite() && self.precision.is_finite() && self.precision > 0.0) {
            return Err(ScoreError::Separate(
                "detail_lost needs a finite mean and a positive precision".into(),
            ));
        }
        Ok(self.tail.validate()?)
    }
}

impl Separate {
    /// The extra part's tail score: its distance's ([`extra_distance`]) under `extra_tail`,
    /// and with a vertical tail the larger of that and the vertical motion's.
    fn tail_score(&self, extra: &[f64], given: Option<GivenMotion>) -> f64 {
        let (extra, lost) = match &self.detail_lost {
            Some(l) => match extra.split_last() {
                Some((&v, rest)) => (rest, l.score(v)),
                None => return f64::NAN,
            },
            None => (extra, f64::NEG_INFINITY),
        };
        let own = self.extra_tail.score(extra_distance(
            extra,
            &self.mean,
            &self.precision,
            self.upper_only,
            given,
        ));
        let own = match &self.vertical_tail {
            None => own,
            Some(t) => fault_max(
                own,
                t.score(vertical_given_turn(extra, &self.mean, &self.precision)),
            ),
        };
        fault_max(own, lost)
    }

    /// Extra features this part reads: its Gaussian's, and the detail lost.
    fn len(&self) -> usize {
        self.mean.len() + usize::from(self.detail_lost.is_some())
    }
}

/// An extra part's distance from its Gaussian: squared Mahalanobis, or with `upper_only` the
/// upper half of the first feature's, max(0, z)^2, z its standardised value given the other
/// features ([`conditional_z`]), or with [`GivenMotion::Turn`] [`turn_distance`].
fn extra_distance(
    x: &[f64],
    mean: &[f64],
    precision: &[f64],
    upper_only: bool,
    given: Option<GivenMotion>,
) -> f64 {
    match (upper_only, given) {
        (true, Some(GivenMotion::Turn)) => turn_distance(x, mean, precision),
        // Apart's residual part is Motion's; its vertical part is Separate::vertical_tail's.
        (true, _) => upper_square(conditional_z(x, mean, precision)),
        (false, _) => crate::mixture::mahalanobis2(x, mean, precision),
    }
}

/// [`GivenMotion::Turn`]'s distance of (residual, ln horizontal motion, ln vertical motion):
/// max(0, z_r)^2 + max(0, z_v)^2, z_r the residual's and z_v the vertical motion's
/// standardised value given the horizontal motion alone, each under the Gaussian's
/// two-feature marginal (the vertical motion is marginalised out of the residual's, and the
/// residual out of the vertical motion's). NaN for another feature count, or a precision
/// that is not positive definite.
pub fn turn_distance(x: &[f64], mean: &[f64], precision: &[f64]) -> f64 {
    upper_square(given_turn_z(x, mean, precision, 0))
        + upper_square(given_turn_z(x, mean, precision, 2))
}

/// The larger of two scores; NaN in either is a fault, never hidden by the other's value
/// (`f64::max` returns the number and drops the NaN).
fn fault_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// max(0, z)^2, the upper-only distance of a standardised value; NaN stays NaN (`f64::max`
/// would turn it into 0 and hide the fault).
fn upper_square(z: f64) -> f64 {
    fault_max(z, 0.0).powi(2)
}

/// [`GivenMotion::Apart`]'s vertical part: max(0, z_v)^2, z_v the vertical motion's
/// standardised value given the horizontal motion alone, as in [`turn_distance`].
pub fn vertical_given_turn(x: &[f64], mean: &[f64], precision: &[f64]) -> f64 {
    upper_square(given_turn_z(x, mean, precision, 2))
}

/// The standardised value of feature `i` of (residual, ln horizontal motion, ln vertical
/// motion) given the horizontal motion (feature 1), under the Gaussian's (i, 1) marginal. NaN
/// for another feature count, or a precision that is not positive definite.
fn given_turn_z(x: &[f64], mean: &[f64], precision: &[f64], i: usize) -> f64 {
    if x.len() != 3 || mean.len() != 3 || precision.len() != 9 {
        return f64::NAN;
    }
    let Ok(cov) = spd_inverse(precision, 3) else {
        return f64::NAN;
    };
    let (cov, idx) = (&cov, [i, 1]);
    let sub: Vec<f64> = idx
        .iter()
        .flat_map(|&a| idx.iter().map(move |&b| cov[a * 3 + b]))
        .collect();
    match spd_inverse(&sub, 2) {
        Ok(p) => conditional_z(&[x[i], x[1]], &[mean[i], mean[1]], &p),
        Err(_) => f64::NAN,
    }
}

/// The first feature's standardised value given the others under the Gaussian (mean,
/// precision): (x0 - E[x0 | rest]) / sd(x0 | rest). With precision P, x0 given the rest has
/// variance 1 / P00 and mean m0 - sum_j P0j (xj - mj) / P00, so z = sum_j P0j (xj - mj) /
/// sqrt(P00), the linear regression's residual of x0 on the rest in its own units; for one
/// feature it is (x0 - m0) sqrt(P00).
pub fn conditional_z(x: &[f64], mean: &[f64], precision: &[f64]) -> f64 {
    let p0 = &precision[..mean.len()];
    let dot: f64 = p0
        .iter()
        .zip(x.iter().zip(mean))
        .map(|(p, (x, m))| p * (x - m))
        .sum();
    dot / p0[0].sqrt()
}

/// Ridge added to the covariance's diagonal before inversion: collapsed latents have a
/// near-constant posterior, and their variance must not make the inverse blow up.
const RIDGE: f64 = 1e-6;

impl Reference {
    /// The record of a fit (drives, frame count, detail channel) with no Gaussian yet: each
    /// `fit_*` fills in the part it fits.
    fn unfitted(fitted_on: Vec<String>, frames: usize, detail: Option<DetailSpec>) -> Self {
        Self {
            fitted_on,
            frames,
            detail,
            motion_residual: false,
            residual_given_motion: None,
            mean: vec![],
            precision: vec![],
            components: vec![],
            separate: None,
            parts: vec![],
        }
    }

    /// Fits the mean and the inverse covariance (plus [`RIDGE`]) of `features`.
    pub fn fit(
        features: &[Vec<f64>],
        detail: Option<DetailSpec>,
        fitted_on: Vec<String>,
    ) -> Result<Self, ScoreError> {
        let n = features.len();
        let d = features.first().map_or(0, Vec::len);
        if d == 0 || n <= d {
            return Err(ScoreError::TooFewFitFrames {
                frames: n,
                features: d,
            });
        }
        if features.iter().any(|f| f.len() != d) {
            return Err(ScoreError::RaggedFitFrames);
        }
        let mut mean = vec![0.0; d];
        for f in features {
            for (m, v) in mean.iter_mut().zip(f) {
                *m += v / n as f64;
            }
        }
        let mut cov = vec![0.0; d * d];
        for f in features {
            for i in 0..d {
                let di = f[i] - mean[i];
                for j in 0..=i {
                    cov[i * d + j] += di * (f[j] - mean[j]) / (n - 1) as f64;
                }
            }
        }
        for i in 0..d {
            cov[i * d + i] += RIDGE;
            for j in 0..i {
                cov[j * d + i] = cov[i * d + j];
            }
        }
        let precision = spd_inverse(&cov, d)?;
        let r = Self {
            mean,
            precision,
            ..Self::unfitted(fitted_on, n, detail)
        };
        r.validate(d)?;
        Ok(r)
    }

    /// Fits `k` Gaussians by EM (seeded; [`crate::mixture::fit`]); `k = 1` is [`Self::fit`].
    pub fn fit_mixture(
        features: &[Vec<f64>],
        k: usize,
        detail: Option<DetailSpec>,
        fitted_on: Vec<String>,
    ) -> Result<Self, ScoreError> {
        if k == 1 {
            return Self::fit(features, detail, fitted_on);
        }
        let components = crate::mixture::fit(features, k, 0, crate::mixture::SCORE_FLAGS)?;
        let r = Self {
            components,
            ..Self::unfitted(fitted_on, features.len(), detail)
        };
        r.validate(features[0].len())?;
        Ok(r)
    }

    /// Fits the posterior part (the first `posterior` features) as [`Self::fit_mixture`] does,
    /// the rest by a Gaussian of its own, and both parts' tails on the same frames
    /// ([`Separate`]). With `upper_only` the first extra feature is the one counted, given any
    /// others: the motion residual given the stack's motion as `given` says, the one such part
    /// a score has ([`Self::residual_given_motion`], set here when there are others:
    /// [`GivenMotion::Motion`] unless `given` says otherwise).
    pub fn fit_separate(
        features: &[Vec<f64>],
        posterior: usize,
        upper_only: bool,
        given: Option<GivenMotion>,
        k: usize,
        detail: Option<DetailSpec>,
        fitted_on: Vec<String>,
    ) -> Result<Self, ScoreError> {
        let d = features.first().map_or(0, Vec::len);
        if posterior == 0 || posterior >= d {
            return Err(ScoreError::Separate(format!(
                "{d} features leave no extra features after the posterior's {posterior}"
            )));
        }
        let (post, extra): (Vec<Vec<f64>>, Vec<Vec<f64>>) = features
            .iter()
            .map(|f| (f[..posterior].to_vec(), f[posterior..].to_vec()))
            .unzip();
        let mut r = Self::fit_mixture(&post, k, detail, fitted_on)?;
        let given = (upper_only && d - posterior > 1).then(|| given.unwrap_or(GivenMotion::Motion));
        let (e, extra_tail) = Self::fit_extra(&extra, upper_only, given)?;
        let part = |x: &[f64]| r.part_distance(x);
        let posterior_tail = Tail::measure(&post.iter().map(|x| part(x)).collect::<Vec<_>>())?;
        let vertical_tail = match given {
            Some(GivenMotion::Apart) => Some(Tail::measure(
                &extra
                    .iter()
                    .map(|x| vertical_given_turn(x, &e.mean, &e.precision))
                    .collect::<Vec<_>>(),
            )?),
            _ => None,
        };
        r.separate = Some(Box::new(Separate {
            mean: e.mean,
            precision: e.precision,
            posterior_tail,
            extra_tail,
            upper_only,
            vertical_tail,
            detail_lost: None,
        }));
        r.residual_given_motion = given;
        r.validate(d)?;
        Ok(r)
    }

    /// An extra part's fit: a Gaussian over `features` ([`Self::fit`]) and the tail of its
    /// [`extra_distance`] over the same frames.
    fn fit_extra(
        features: &[Vec<f64>],
        upper_only: bool,
        given: Option<GivenMotion>,
    ) -> Result<(Self, Tail), ScoreError> {
        let g = Self::fit(features, None, vec![])?;
        let tail = Tail::measure(
            &features
                .iter()
                .map(|x| extra_distance(x, &g.mean, &g.precision, upper_only, given))
                .collect::<Vec<_>>(),
        )?;
        Ok((g, tail))
    }

    /// Adds the detail lost against the stream's past as one more feature scored apart
    /// ([`Separate::detail_lost`]), fitted on its values over the same fit frames as the rest.
    /// Needs a separate extra part, upper tail only (the motion residual's).
    pub fn add_detail_lost(&mut self, values: &[f64]) -> Result<(), ScoreError> {
        let s = self.separate.as_mut().filter(|s| s.upper_only).ok_or_else(|| {
            ScoreError::Separate(
                "the detail lost is scored beside the motion residual: fit it apart, upper tail only first"
                    .into(),
            )
        })?;
        s.detail_lost = Some(LostPart::fit(values)?);
        Ok(())
    }

    /// Whether the features end with the detail lost ([`Separate::detail_lost`]).
    pub fn detail_lost(&self) -> bool {
        self.separate
            .as_ref()
            .is_some_and(|s| s.detail_lost.is_some())
    }

    /// Fits one Gaussian per part of `parts`, which must cover every feature once, and each
    /// part's tail on the same frames ([`Part`]).
    pub fn fit_parts(
        features: &[Vec<f64>],
        parts: &[PartSpec],
        detail: Option<DetailSpec>,
        fitted_on: Vec<String>,
    ) -> Result<Self, ScoreError> {
        let d = features.first().map_or(0, Vec::len);
        let mut fitted = vec![];
        for p in parts {
            if p.features.iter().any(|&i| i >= d) {
                return Err(ScoreError::Parts(format!(
                    "part {} names a feature beyond the {d} the frames have",
                    p.name
                )));
            }
            let sub: Vec<Vec<f64>> = features
                .iter()
                .map(|x| p.features.iter().map(|&i| x[i]).collect())
                .collect();
            let (g, tail) = Self::fit_extra(&sub, p.upper_only, None)?;
            fitted.push(Part {
                name: p.name.clone(),
                features: p.features.clone(),
                mean: g.mean,
                precision: g.precision,
                tail,
                upper_only: p.upper_only,
            });
        }
        let r = Self {
            parts: fitted,
            ..Self::unfitted(fitted_on, features.len(), detail)
        };
        r.validate(d)?;
        Ok(r)
    }

    /// The distance of the part `mean`, `precision` or `components` cover (all features, or
    /// the posterior's when separate).
    fn part_distance(&self, x: &[f64]) -> f64 {
        if !self.components.is_empty() {
            return crate::mixture::score(&self.components, x);
        }
        if x.len() != self.mean.len() {
            return f64::NAN;
        }
        crate::mixture::mahalanobis2(x, &self.mean, &self.precision)
    }

    /// Gaussians in the reference: 1, or the mixture's components.
    pub fn components(&self) -> usize {
        self.components.len().max(1)
    }

    /// Squared Mahalanobis distance (x - mean)^T precision (x - mean); NaN (a fault, not a
    /// score) when `x` has the wrong number of features.
    /// With a mixture, its score ([`crate::mixture::score`]).
    /// With a separate extra part, the larger of the two tail scores ([`Separate`]).
    pub fn distance(&self, x: &[f64]) -> f64 {
        self.distance_with_tails(x).0
    }

    /// [`Self::distance`], and with a separate extra part both parts' tail scores, computed
    /// once for both ([`Self::tail_scores`]).
    pub fn distance_with_tails(&self, x: &[f64]) -> (f64, Option<[f64; 2]>) {
        if !self.parts.is_empty() {
            // validate() made the parts cover 0..n once: n features, no more, no fewer.
            let n: usize = self.parts.iter().map(|p| p.features.len()).sum();
            if x.len() != n {
                return (f64::NAN, None);
            }
            let d = self
                .parts
                .iter()
                .map(|p| p.score(x))
                .fold(f64::NEG_INFINITY, fault_max);
            return (d, None);
        }
        if self.separate.is_none() {
            return (self.part_distance(x), None);
        }
        let tails = self.tail_scores(x);
        let d = tails.map_or(f64::NAN, |[a, b]| fault_max(a, b));
        (d, tails)
    }

    /// With a separate extra part ([`Separate`]): both parts' tail scores, (posterior, extra
    /// features), whose larger is [`Self::distance`]. They say which part a high score came
    /// from (`vae-ood eval`'s frames.csv). `None` for other references, or when `x` is shorter
    /// than the extra part.
    pub fn tail_scores(&self, x: &[f64]) -> Option<[f64; 2]> {
        let s = self.separate.as_ref().filter(|_| self.parts.is_empty())?;
        let split = x.len().checked_sub(s.len())?;
        let (post, extra) = x.split_at(split);
        Some([
            s.posterior_tail.score(self.part_distance(post)),
            s.tail_score(extra, self.residual_given_motion),
        ])
    }

    fn validate(&self, dim: usize) -> Result<(), ScoreError> {
        if !self.parts.is_empty() {
            return self.validate_parts(dim);
        }
        let dim = match &self.separate {
            None => dim,
            Some(s) => {
                let e = s.mean.len();
                // Upper tail only: the residual, and with residual_given_motion its motion.
                let upper = 1 + 2 * usize::from(self.residual_given_motion.is_some());
                if e == 0 || e >= dim || s.precision.len() != e * e || (s.upper_only && e != upper)
                {
                    return Err(ScoreError::Separate(format!(
                        "mean has {e} and precision {} values; the extra features need between 1 and {} ({upper} with upper_only) and their square",
                        s.precision.len(),
                        dim.saturating_sub(1)
                    )));
                }
                if s.mean.iter().chain(&s.precision).any(|v| !v.is_finite()) {
                    return Err(ScoreError::NonFiniteReference);
                }
                s.posterior_tail.validate()?;
                s.extra_tail.validate()?;
                let apart = self.residual_given_motion == Some(GivenMotion::Apart);
                match &s.vertical_tail {
                    Some(t) if apart => t.validate()?,
                    None if !apart => {}
                    _ => return Err(ScoreError::Separate(
                        "vertical_tail goes with residual_given_motion: apart, and only with it"
                            .into(),
                    )),
                }
                if let Some(l) = &s.detail_lost {
                    if !(self.motion_residual && s.upper_only) {
                        return Err(ScoreError::Separate(
                            "detail_lost goes with motion_residual scored apart, upper tail only"
                                .into(),
                        ));
                    }
                    l.validate()?;
                }
                match dim.checked_sub(s.len()) {
                    Some(p) if p > 0 => p,
                    _ => {
                        return Err(ScoreError::Separate(format!(
                            "{dim} features leave no posterior after {} extra ones",
                            s.len()
                        )))
                    }
                }
            }
        };
        if !self.components.is_empty() {
            return self.validate_mixture(dim);
        }
        if self.mean.len() != dim || self.precision.len() != dim * dim {
            return Err(ScoreError::ReferenceShape {
                mean: self.mean.len(),
                precision: self.precision.len(),
                dim,
            });
        }
        if self
            .mean
            .iter()
            .chain(&self.precision)
            .any(|v| !v.is_finite())
        {
            return Err(ScoreError::NonFiniteReference);
        }
        Ok(())
    }

    fn validate_parts(&self, dim: usize) -> Result<(), ScoreError> {
        let bad = |m: String| Err(ScoreError::Parts(m));
        if !self.mean.is_empty()
            || !self.precision.is_empty()
            || !self.components.is_empty()
            || self.separate.is_some()
        {
            return bad(
                "a reference in parts holds no mean, precision, components or separate of its own"
                    .into(),
            );
        }
        let mut seen = vec![0u32; dim];
        for p in &self.parts {
            let e = p.features.len();
            if e == 0 || p.mean.len() != e || p.precision.len() != e * e || (p.upper_only && e != 1)
            {
                return bad(format!(
                    "part {}: {e} features, mean {} and precision {} values (need as many, their square, and one feature with upper_only)",
                    p.name,
                    p.mean.len(),
                    p.precision.len()
                ));
            }
            for &i in &p.features {
                match seen.get_mut(i) {
                    Some(c) => *c += 1,
                    None => {
                        return bad(format!(
                            "part {}: feature {i}, but the score has {dim}",
                            p.name
                        ))
                    }
                }
            }
            if p.mean.iter().chain(&p.precision).any(|v| !v.is_finite()) {
                return Err(ScoreError::NonFiniteReference);
            }
            p.tail.validate()?;
        }
        if let Some(i) = seen.iter().position(|&c| c != 1) {
            return bad(format!(
                "the parts must hold each of the {dim} features once; feature {i} is in {}",
                seen[i]
            ));
        }
        Ok(())
    }

    fn validate_mixture(&self, dim: usize) -> Result<(), ScoreError> {
        if !self.mean.is_empty() || !self.precision.is_empty() {
            return Err(ScoreError::Components(
                "give either mean and precision (one Gaussian) or components, not both".into(),
            ));
        }
        crate::mixture::validate(&self.components, dim)
    }
}

/// The lower Cholesky factor L of a symmetric positive-definite matrix (A = L L^T, row-major).
pub(crate) fn cholesky(a: &[f64], d: usize) -> Result<Vec<f64>, ScoreError> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s = a[i * d + j] - (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return Err(ScoreError::NotPositiveDefinite);
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Ok(l)
}

/// Inverse of a symmetric positive-definite matrix (row-major, `d` x `d`) by Cholesky
/// factorisation. Hand-written because a 60x60 inverse at calibration time is all this crate
/// needs from linear algebra.
pub(crate) fn spd_inverse(a: &[f64], d: usize) -> Result<Vec<f64>, ScoreError> {
    let l = cholesky(a, d)?;
    // Solve L L^T X = I column by column.
    let mut inv = vec![0.0; d * d];
    for c in 0..d {
        let mut y = vec![0.0; d];
        for i in 0..d {
            let e = if i == c { 1.0 } else { 0.0 };
            y[i] = (e - (0..i).map(|k| l[i * d + k] * y[k]).sum::<f64>()) / l[i * d + i];
        }
        for i in (0..d).rev() {
            let x = (y[i]
                - (i + 1..d)
                    .map(|k| l[k * d + i] * inv[k * d + c])
                    .sum::<f64>())
                / l[i * d + i];
            inv[i * d + c] = x;
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_at_the_prior_and_positive_elsewhere() {
        let kl = kl_per_latent(&[0.0, 1.0, 0.0, -2.0], &[0.0, 0.0, 1.0, -1.0]);
        assert_eq!(kl[0], 0.0);
        assert!((kl[1] - 0.5).abs() < 1e-12);
        assert!((kl[2] - 0.5 * (1f64.exp() - 2.0)).abs() < 1e-12);
        assert!((kl[3] - 0.5 * (4.0 + (-1f64).exp() + 1.0 - 1.0)).abs() < 1e-12);
        assert!((nonconformity(&kl, &[1, 3]) - (kl[1] + kl[3])).abs() < 1e-12);
    }

    /// Frames of a known 2-D Gaussian: mean (1, -2), variances 4 and 0.25, correlated.
    fn correlated_frames() -> Vec<Vec<f64>> {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut normal = || {
            // Box-Muller on a xorshift stream: deterministic, no extra dependency.
            let mut u = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng >> 11) as f64 / (1u64 << 53) as f64
            };
            let (a, b) = (u().max(1e-300), u());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        };
        (0..20_000)
            .map(|_| {
                let (z1, z2) = (normal(), normal());
                vec![1.0 + 2.0 * z1, -2.0 + 0.5 * (0.6 * z1 + 0.8 * z2)]
            })
            .collect()
    }

    #[test]
    fn a_mixture_reference_that_does_not_add_up_is_refused() {
        let r = Reference::fit_mixture(&correlated_frames(), 2, None, vec![]).unwrap();
        assert!(r.validate(2).is_ok());
        let refused = |edit: &dyn Fn(&mut Reference), why: &str| {
            let mut bad = r.clone();
            edit(&mut bad);
            let e = bad.validate(2).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        };
        refused(&|b| b.components[0].weight += 0.1, "sum to 1");
        refused(
            &|b| {
                b.components[0].weight = -0.5;
                b.components[1].weight = 1.5;
            },
            "positive",
        );
        refused(&|b| b.mean = vec![0.0, 0.0], "not both");
        refused(&|b| b.components[1].log_det_precision += 0.5, "ln det");
        refused(&|b| b.components[0].precision[0] = f64::NAN, "finite");
        refused(
            &|b| b.components[0].mean.pop().map(drop).unwrap_or(()),
            "mean",
        );
    }

    /// [`correlated_frames`] with a third feature on its own scale, spread over [10, 11).
    fn frames_with_an_extra_feature() -> Vec<Vec<f64>> {
        correlated_frames()
            .into_iter()
            .enumerate()
            .map(|(i, mut f)| {
                f.push(10.0 + ((i * 7919) % 1000) as f64 / 1000.0);
                f
            })
            .collect()
    }

    #[test]
    fn a_separate_extra_part_is_not_drowned_by_the_posterior() {
        // Posterior part: the correlated 2-D frames; extra part: one feature, its own scale.
        let frames = frames_with_an_extra_feature();
        let mut r = Reference::fit_separate(&frames, 2, false, None, 1, None, vec![]).unwrap();
        r.motion_residual = true;
        let s = r.separate.as_ref().unwrap();
        assert_eq!((r.mean.len(), s.mean.len()), (2, 1));
        assert!(ScoreSpec::Mahalanobis(r.clone()).validate(1).is_ok());
        let typical = r.distance(&[1.0, -2.0, 10.5]);
        let odd_extra = r.distance(&[1.0, -2.0, 12.0]);
        let odd_posterior = r.distance(&[1.0, 0.0, 10.5]);
        assert!(typical < 1.0, "{typical}");
        // Either part alone makes the frame extreme: beyond every fit frame (ln 20,000 = 9.9).
        assert!(
            odd_extra > 9.9 && odd_posterior > 9.9,
            "{odd_extra} {odd_posterior}"
        );
        // The score is the larger part's tail score, and a wrong length is a fault.
        assert!((r.distance(&[1.0, 0.0, 12.0]) - odd_extra.max(odd_posterior)).abs() < 1e-12);
        assert!(r.distance(&[1.0, -2.0]).is_nan());
        // Both parts' tail scores, each the one its part alone would give.
        let [post, extra] = r.tail_scores(&[1.0, 0.0, 10.5]).unwrap();
        assert!(
            (post - odd_posterior).abs() < 1e-12 && extra < 1.0,
            "{post} {extra}"
        );
        let [post, extra] = r.tail_scores(&[1.0, -2.0, 12.0]).unwrap();
        assert!(post < 1.0 && (extra - odd_extra).abs() < 1e-12);
        assert!(r.tail_scores(&[]).is_none());
        // One pass gives both, as the two calls do.
        let x = [1.0, 0.0, 12.0];
        assert_eq!(
            r.distance_with_tails(&x),
            (r.distance(&x), r.tail_scores(&x))
        );
        // Written and read back, it scores the same; a broken tail is refused at load.
        let text = serde_yaml::to_string(&ScoreSpec::Mahalanobis(r.clone())).unwrap();
        let back: ScoreSpec = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, ScoreSpec::Mahalanobis(r.clone()));
        let mut bad = r.clone();
        bad.separate
            .as_mut()
            .unwrap()
            .extra_tail
            .quantiles
            .reverse();
        assert!(ScoreSpec::Mahalanobis(bad).validate(1).is_err());
        let mut bad = r;
        bad.separate.as_mut().unwrap().mean.push(0.0);
        assert!(ScoreSpec::Mahalanobis(bad).validate(1).is_err());
        // Upper tail only: less than the mean scores as the mean, more as before.
        let r = Reference::fit_separate(&frames, 2, true, None, 1, None, vec![]).unwrap();
        assert!(r.distance(&[1.0, -2.0, 8.0]) < 1.0);
        assert!(r.distance(&[1.0, -2.0, 12.0]) > 9.9);
        // Upper tail only over two extra features: one (the residual), or three (with its
        // motion), never two.
        let two: Vec<Vec<f64>> = (0..40)
            .map(|i| (0..4).map(|j| ((i * (j + 3) * 7919) % 97) as f64).collect())
            .collect();
        let e = Reference::fit_separate(&two, 2, true, None, 1, None, vec![]).unwrap_err();
        assert!(e.to_string().contains("3 with upper_only"), "{e}");
    }

    #[test]
    fn the_residual_given_the_motion_is_its_regression_residual() {
        // Extra features: a residual that grows with the motion (r = 2 m1 - m2 + noise of sd
        // 0.1) and the motion (m1, m2) spread widely.
        let frames: Vec<Vec<f64>> = correlated_frames()
            .into_iter()
            .enumerate()
            .map(|(i, mut f)| {
                let m1 = ((i * 7919) % 1000) as f64 / 100.0;
                let m2 = ((i * 104_729) % 1000) as f64 / 200.0;
                let noise = 0.1 * (((i * 31_337) % 1001) as f64 / 1000.0 - 0.5) * 12f64.sqrt();
                f.extend([2.0 * m1 - m2 + noise, m1, m2]);
                f
            })
            .collect();
        let mut r = Reference::fit_separate(&frames, 2, true, None, 1, None, vec![]).unwrap();
        assert_eq!(r.residual_given_motion, Some(GivenMotion::Motion));
        r.motion_residual = true;
        assert!(ScoreSpec::Mahalanobis(r.clone()).validate(1).is_ok());
        let s = r.separate.as_ref().unwrap();
        // z is the residual's excess over its regression on the motion, in the noise's sd.
        for (m1, m2, excess) in [(1.0, 4.0, 0.0), (9.0, 0.5, 0.3), (5.0, 2.0, -0.2)] {
            let z = conditional_z(&[2.0 * m1 - m2 + excess, m1, m2], &s.mean, &s.precision);
            assert!((z - excess / 0.1).abs() < 0.1, "{m1} {m2} {excess}: {z}");
        }
        // A large residual that the motion explains is typical; the same excess at little
        // motion is extreme, beyond every fit frame.
        let post = [1.0, -2.0];
        let score = |extra: [f64; 3]| r.distance(&[&post[..], &extra].concat());
        assert!(score([18.0, 9.0, 0.0]) < 1.0, "{}", score([18.0, 9.0, 0.0]));
        assert!(score([18.0, 1.0, 0.0]) > 9.9, "{}", score([18.0, 1.0, 0.0]));
        // Less residual than the motion leaves is no shift (upper tail only).
        assert!(score([10.0, 9.0, 0.0]) < 1.0);
        // The flag needs the residual scored apart, upper tail only, and all three features.
        let mut bad = r.clone();
        bad.motion_residual = false;
        assert!(ScoreSpec::Mahalanobis(bad).validate(1).is_err());
        let mut bad = r.clone();
        bad.residual_given_motion = None;
        assert!(ScoreSpec::Mahalanobis(bad).validate(1).is_err());
        // Written and read back, it scores the same.
        let text = serde_yaml::to_string(&ScoreSpec::Mahalanobis(r.clone())).unwrap();
        assert!(text.contains("residual_given_motion: motion"));
        let back: ScoreSpec = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, ScoreSpec::Mahalanobis(r));
    }

    /// Extra features (residual, horizontal motion h, vertical motion v) where the residual
    /// grows with both motions, r = 2 h + v + noise of sd 0.1, and h and v vary independently.
    fn frames_with_turns_and_vertical_motion() -> Vec<Vec<f64>> {
        correlated_frames()
            .into_iter()
            .enumerate()
            .map(|(i, mut f)| {
                let h = ((i * 7919) % 1000) as f64 / 100.0;
                let v = ((i * 104_729) % 1000) as f64 / 1000.0;
                let noise = 0.1 * (((i * 31_337) % 1001) as f64 / 1000.0 - 0.5) * 12f64.sqrt();
                f.extend([2.0 * h + v + noise, h, v]);
                f
            })
            .collect()
    }

    #[test]
    fn given_the_turn_the_residual_and_the_vertical_motion_are_judged_on_the_turn_alone() {
        let frames = frames_with_turns_and_vertical_motion();
        let fit = |g| {
            let mut r =
                Reference::fit_separate(&frames, 2, true, Some(g), 1, None, vec![]).unwrap();
            r.motion_residual = true;
            r
        };
        let (turn, motion) = (fit(GivenMotion::Turn), fit(GivenMotion::Motion));
        assert_eq!(turn.residual_given_motion, Some(GivenMotion::Turn));
        assert!(ScoreSpec::Mahalanobis(turn.clone()).validate(1).is_ok());
        // The distance is the two marginal regressions' upper halves: the same as a Gaussian
        // fitted on the (r, h) and (v, h) columns alone (a Gaussian's marginal is the fit of
        // the marginal's columns).
        let s = turn.separate.as_ref().unwrap();
        let columns = |i: usize| -> Reference {
            let sub: Vec<Vec<f64>> = frames.iter().map(|f| vec![f[2 + i], f[3]]).collect();
            Reference::fit(&sub, None, vec![]).unwrap()
        };
        let (rh, vh) = (columns(0), columns(2));
        for x in [
            [21.0, 9.0, 2.0],
            [1.0, 0.5, 0.0],
            [12.0, 5.0, 0.5],
            [3.0, 5.0, 0.1],
        ] {
            let z = |g: &Reference, a: f64| conditional_z(&[a, x[1]], &g.mean, &g.precision);
            let want = z(&rh, x[0]).max(0.0).powi(2) + z(&vh, x[2]).max(0.0).powi(2);
            let got = turn_distance(&x, &s.mean, &s.precision);
            assert!(
                (got - want).abs() < 1e-6 * want.max(1.0),
                "{x:?}: {got} vs {want}"
            );
        }
        // A sharp turn's large residual is typical under both.
        let post = [1.0, -2.0];
        let score = |r: &Reference, extra: [f64; 3]| r.distance(&[&post[..], &extra].concat());
        let sharp_turn = [2.0 * 9.0 + 0.5, 9.0, 0.5];
        assert!(
            score(&turn, sharp_turn) < 1.0,
            "{}",
            score(&turn, sharp_turn)
        );
        assert!(score(&motion, sharp_turn) < 1.0);
        // Shaking: vertical motion far beyond any fit frame's, with the residual it brings.
        // Given both motions that residual is explained; given the turn it is not, and the
        // vertical motion itself counts.
        let shake = [2.0 * 3.0 + 4.0, 3.0, 4.0];
        assert!(score(&motion, shake) < 1.0, "{}", score(&motion, shake));
        assert!(score(&turn, shake) > 9.9, "{}", score(&turn, shake));
        // Less of either than the turn leaves is no shift (upper tails only).
        assert!(score(&turn, [2.0 * 3.0, 3.0, 0.0]) < 1.0);
        // Written and read back, it scores the same; an unknown conditioning is refused.
        let text = serde_yaml::to_string(&ScoreSpec::Mahalanobis(turn.clone())).unwrap();
        assert!(text.contains("residual_given_motion: turn"));
        let back: ScoreSpec = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back.given_motion(), Some(GivenMotion::Turn));
        assert_eq!(back, ScoreSpec::Mahalanobis(turn.clone()));
        let e = "sideways".parse::<GivenMotion>().unwrap_err();
        assert!(e.contains("motion, turn or apart"), "{e}");
        assert!(turn_distance(&[1.0, 2.0], &s.mean, &s.precision).is_nan());
    }

    #[test]
    fn apart_the_residual_is_judged_given_the_motion_and_the_vertical_motion_given_the_turn() {
        let frames = frames_with_turns_and_vertical_motion();
        let fit = |g| {
            let mut r =
                Reference::fit_separate(&frames, 2, true, Some(g), 1, None, vec![]).unwrap();
            r.motion_residual = true;
            r
        };
        let (apart, motion) = (fit(GivenMotion::Apart), fit(GivenMotion::Motion));
        assert!(ScoreSpec::Mahalanobis(apart.clone()).validate(1).is_ok());
        let (sa, sm) = (
            apart.separate.as_ref().unwrap(),
            motion.separate.as_ref().unwrap(),
        );
        // The residual part is Motion's, fitted on the same frames; the vertical part has a
        // tail of its own, over vertical_given_turn of the fit frames.
        assert_eq!((&sa.mean, &sa.extra_tail), (&sm.mean, &sm.extra_tail));
        assert!(sm.vertical_tail.is_none());
        let vt = sa.vertical_tail.as_ref().unwrap();
        assert!(vertical_given_turn(&[1.0, 2.0], &sa.mean, &sa.precision).is_nan());
        let post = [1.0, -2.0];
        let tails =
            |r: &Reference, extra: [f64; 3]| r.tail_scores(&[&post[..], &extra].concat()).unwrap();
        for x in [
            [21.0, 9.0, 2.0],
            [1.0, 0.5, 0.0],
            [2.0 * 3.0 + 4.0, 3.0, 4.0],
            [3.0, 5.0, 0.1],
        ] {
            let want = tails(&motion, x)[1].max(vt.score(vertical_given_turn(
                &x,
                &sa.mean,
                &sa.precision,
            )));
            assert_eq!(tails(&apart, x)[1], want, "{x:?}");
            assert_eq!(tails(&apart, x)[0], tails(&motion, x)[0], "{x:?}");
        }
        // The vertical part is the vertical half of Turn's distance.
        let turn = fit(GivenMotion::Turn);
        let st = turn.separate.as_ref().unwrap();
        let v = [1.0, 3.0, 4.0];
        assert!(
            (vertical_given_turn(&v, &st.mean, &st.precision)
                - turn_distance(&v, &st.mean, &st.precision))
            .abs()
                < 1e-9
        );
        // A sharp turn is typical; shaking, explained away given both motions, is not, by
        // its vertical motion alone.
        let score = |r: &Reference, extra: [f64; 3]| r.distance(&[&post[..], &extra].concat());
        let (sharp_turn, shake) = ([2.0 * 9.0 + 0.5, 9.0, 0.5], [2.0 * 3.0 + 4.0, 3.0, 4.0]);
        assert!(
            score(&apart, sharp_turn) < 1.0,
            "{}",
            score(&apart, sharp_turn)
        );
        assert!(score(&motion, shake) < 1.0);
        assert!(score(&apart, shake) > 9.9, "{}", score(&apart, shake));
        // Round trip; a vertical tail without Apart, or Apart without one, is refused.
        let text = serde_yaml::to_string(&ScoreSpec::Mahalanobis(apart.clone())).unwrap();
        assert!(text.contains("residual_given_motion: apart") && text.contains("vertical_tail"));
        let back: ScoreSpec = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, ScoreSpec::Mahalanobis(apart.clone()));
        let mut bad = apart.clone();
        bad.residual_given_motion = Some(GivenMotion::Motion);
        let e = ScoreSpec::Mahalanobis(bad)
            .validate(1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vertical_tail"), "{e}");
        let mut bad = apart;
        bad.separate.as_mut().unwrap().vertical_tail = None;
        assert!(ScoreSpec::Mahalanobis(bad).validate(1).is_err());
    }

    #[test]
    fn the_detail_lost_is_a_third_tail_beside_the_residual() {
        let frames = frames_with_an_extra_feature();
        let mut r = Reference::fit_separate(&frames, 2, true, None, 1, None, vec![]).unwrap();
        r.motion_residual = true;
        let plain = r.clone();
        // The fit frames' detail lost: small, around 0.1.
        let lost: Vec<f64> = (0..frames.len())
            .map(|i| 0.1 + ((i * 104_729) % 1000) as f64 / 5000.0)
            .collect();
        r.add_detail_lost(&lost).unwrap();
        assert!(r.detail_lost() && ScoreSpec::Mahalanobis(r.clone()).detail_lost());
        assert!(ScoreSpec::Mahalanobis(r.clone()).validate(1).is_ok());
        let l = r.separate.as_ref().unwrap().detail_lost.clone().unwrap();
        let x = |lost: f64| [frames[0].clone(), vec![lost]].concat();
        // Below its mean the loss adds nothing: the residual's tail decides, as without it.
        assert_eq!(r.tail_scores(&x(-1.0)), plain.tail_scores(&frames[0]));
        // Far above it, its tail does; the score is the largest of the three.
        let t = r.tail_scores(&x(3.0)).unwrap();
        assert!(t[1] > plain.tail_scores(&frames[0]).unwrap()[1]);
        assert_eq!(t[1], l.score(3.0));
        assert_eq!(r.distance(&x(3.0)), t[0].max(t[1]));
        // One feature short is a fault, not a score.
        assert!(r.distance(&frames[0][..2]).is_nan());
        // Round trip; without the residual scored apart upper-tail only it is refused.
        let text = serde_yaml::to_string(&ScoreSpec::Mahalanobis(r.clone())).unwrap();
        assert!(text.contains("detail_lost"));
        let back: ScoreSpec = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, ScoreSpec::Mahalanobis(r.clone()));
        let mut bad = r;
        bad.motion_residual = false;
        assert!(ScoreSpec::Mahalanobis(bad).validate(1).is_err());
        let mut both = Reference::fit_separate(&frames, 2, false, None, 1, None, vec![]).unwrap();
        assert!(both.add_detail_lost(&lost).is_err());
    }

    #[test]
    fn a_reference_in_parts_scores_the_largest_parts_tail() {
        // Features: the correlated 2-D frames split as [x0] and [x1] (non-contiguous parts are
        // allowed: the part order and the feature order differ), then one extra feature.
        let frames = frames_with_an_extra_feature();
        let spec = |name: &str, features: Vec<usize>, upper_only| PartSpec {
            name: name.into(),
            features,
            upper_only,
        };
        let parts = [
            spec("b", vec![1], false),
            spec("a", vec![0], false),
            spec("extra", vec![2], true),
        ];
        let mut r = Reference::fit_parts(&frames, &parts, None, vec![]).unwrap();
        r.motion_residual = true;
        assert!(ScoreSpec::Mahalanobis(r.clone()).validate(1).is_ok());
        assert!((r.parts[1].mean[0] - 1.0).abs() < 0.05 && (r.parts[0].mean[0] + 2.0).abs() < 0.02);
        let typical = r.distance(&[1.0, -2.0, 10.5]);
        assert!(typical < 1.0, "{typical}");
        // Each part alone makes a frame extreme; the score is the largest part's tail score.
        let odd: Vec<f64> = [[9.0, -2.0, 10.5], [1.0, 0.0, 10.5], [1.0, -2.0, 12.0]]
            .iter()
            .map(|x| r.distance(x))
            .collect();
        assert!(odd.iter().all(|&d| d > 9.9), "{odd:?}");
        let all = r.distance(&[9.0, 0.0, 12.0]);
        assert!((all - odd.iter().copied().fold(0.0, f64::max)).abs() < 1e-12);
        // Upper tail only on the extra part; wrong length and NaN are faults.
        assert!(r.distance(&[1.0, -2.0, 8.0]) < 1.0);
        assert!(r.distance(&[1.0, -2.0]).is_nan());
        assert!(r.distance(&[f64::NAN, -2.0, 10.5]).is_nan());
        // Written and read back, it scores the same.
        let text = serde_yaml::to_string(&ScoreSpec::Mahalanobis(r.clone())).unwrap();
        let back: ScoreSpec = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, ScoreSpec::Mahalanobis(r.clone()));
        // Parts must cover every feature once, and hold nothing else beside them.
        let refused = |f: &dyn Fn(&mut Reference)| {
            let mut bad = r.clone();
            f(&mut bad);
            ScoreSpec::Mahalanobis(bad)
                .validate(1)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&|b| b.parts[0].features = vec![0]).contains("once"));
        assert!(refused(&|b| {
            b.parts.pop();
        })
        .contains("once"));
        assert!(refused(&|b| b.mean = vec![0.0; 3]).contains("no mean"));
        assert!(refused(&|b| b.parts[2].tail.quantiles.reverse()).contains("non-decreasing"));
        assert!(refused(&|b| b.parts[1].precision.push(1.0)).contains("part a"));
        let beyond = [spec("a", vec![0, 1, 2, 3], false)];
        assert!(Reference::fit_parts(&frames, &beyond, None, vec![])
            .unwrap_err()
            .to_string()
            .contains("beyond"));
    }

    #[test]
    fn the_fitted_reference_recovers_a_known_gaussian() {
        let r = Reference::fit(&correlated_frames(), None, vec!["synthetic".into()]).unwrap();
        assert!((r.mean[0] - 1.0).abs() < 0.05 && (r.mean[1] + 2.0).abs() < 0.02);
        // Covariance [[4, 0.6], [0.6, 0.25]] (determinant 0.64): the inverse in closed form.
        let det = 4.0 * 0.25 - 0.6 * 0.6;
        let want = [0.25 / det, -0.6 / det, -0.6 / det, 4.0 / det];
        for (p, w) in r.precision.iter().zip(want) {
            assert!(
                (p - w).abs() < 0.05 * w.abs().max(1.0),
                "{:?} vs {want:?}",
                r.precision
            );
        }
        // At the mean the distance is 0; along the narrow direction it grows faster.
        assert!(r.distance(&r.mean) < 1e-12);
        let wide = r.distance(&[r.mean[0] + 1.0, r.mean[1] + 0.15]);
        let narrow = r.distance(&[r.mean[0], r.mean[1] + 0.5]);
        assert!(narrow > 3.0 * wide, "narrow {narrow} wide {wide}");
    }

    #[test]
    fn a_fit_with_too_few_frames_or_a_bad_section_is_refused() {
        let few = vec![vec![1.0, 2.0], vec![2.0, 1.0]];
        assert!(Reference::fit(&few, None, vec![])
            .unwrap_err()
            .to_string()
            .contains("more frames"));
        let mut r = Reference::fit(&correlated_frames(), None, vec![]).unwrap();
        let spec = ScoreSpec::Mahalanobis(r.clone());
        assert!(spec.validate(1).is_ok());
        assert!(spec
            .validate(2)
            .unwrap_err()
            .to_string()
            .contains("mu and logvar"));
        r.precision[0] = f64::NAN;
        assert!(ScoreSpec::Mahalanobis(r).validate(1).is_err());
    }

    #[test]
    fn the_spec_reads_as_the_manifest_writes_it() {
        let r = Reference::fit(&correlated_frames(), None, vec!["a".into()]).unwrap();
        let spec = ScoreSpec::Mahalanobis(r);
        let text = serde_yaml::to_string(&spec).unwrap();
        assert!(text.starts_with("kind: mahalanobis"), "{text}");
        assert_eq!(serde_yaml::from_str::<ScoreSpec>(&text).unwrap(), spec);
        assert_eq!(
            serde_yaml::from_str::<ScoreSpec>("kind: kl").unwrap(),
            ScoreSpec::Kl
        );
    }

    proptest::proptest! {
        #[test]
        fn kl_is_never_negative(mu in -10f32..10.0, lv in -10f32..10.0) {
            proptest::prop_assert!(kl_per_latent(&[mu], &[lv])[0] >= 0.0);
        }
    }
}
