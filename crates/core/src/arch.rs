//! The encoder architecture of the paper's family: layer widths and what each layer costs.
//! Recorded in bundle manifests (provenance) and used by training, pruning and the ONNX writer.

use serde::{Deserialize, Serialize};

/// An architecture whose widths cannot be split into its branches; the message names the
/// width and the rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ArchError(pub String);

/// The encoder's shape: `conv` widths (each halves the spatial size), `dense` hidden widths,
/// then two heads of `latents` units.
///
/// `groups` > 1 makes that many independent branches in one model (the flow detector's
/// horizontal and vertical branches): every width counts all branches together, branch `g`
/// reads input channels, hidden units and latents of block `g` only (grouped convolutions,
/// block-diagonal dense layers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderArch {
    pub input_channels: usize,
    pub input_height: usize,
    pub input_width: usize,
    pub conv: Vec<usize>,
    pub dense: Vec<usize>,
    pub latents: usize,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
}

fn one() -> usize {
    1
}

fn is_one(g: &usize) -> bool {
    *g == 1
}

impl EncoderArch {
    /// The paper's detector: 224x224x3, conv 128/64/32/16, dense 2048/1000/250, 30 latents.
    pub fn paper() -> Self {
        Self {
            input_channels: 3,
            input_height: 224,
            input_width: 224,
            conv: vec![128, 64, 32, 16],
            dense: vec![2048, 1000, 250],
            latents: 30,
            groups: 1,
        }
    }

    /// A small member of the same family that runs in well under a millisecond on one core.
    pub fn tiny() -> Self {
        Self {
            input_channels: 3,
            input_height: 64,
            input_width: 64,
            conv: vec![32, 32, 16, 16],
            dense: vec![256, 128],
            latents: 30,
            groups: 1,
        }
    }

    /// The default detector's shape (`vae-ood train --preset small`): the paper's layer
    /// pattern at 64x64, wide early convolutions (where the time goes, and what compression
    /// thins) and small dense layers; trains on a 2-core CPU in minutes.
    pub fn small() -> Self {
        Self {
            input_channels: 3,
            input_height: 64,
            input_width: 64,
            conv: vec![32, 16, 16, 16],
            dense: vec![256, 128],
            latents: 30,
            groups: 1,
        }
    }

    /// The flow detector's two branches (horizontal and vertical flow, `depth` fields each) on
    /// the reference design's 113x152 crop: 12 latents a branch, as the reference.
    pub fn flow(depth: usize) -> Self {
        Self {
            input_channels: 2 * depth,
            input_height: 113,
            input_width: 152,
            conv: vec![16, 32, 32, 32],
            dense: vec![128],
            latents: 24,
            groups: 2,
        }
    }

    /// Widths that every branch can share equally (each a multiple of `groups`).
    pub fn check_groups(&self) -> Result<(), ArchError> {
        let g = self.groups;
        if g == 0 {
            return Err(ArchError("groups must be at least 1".into()));
        }
        let widths = std::iter::once(&self.input_channels)
            .chain(&self.conv)
            .chain(&self.dense)
            .chain(std::iter::once(&self.latents));
        if let Some(w) = widths.clone().find(|&&w| w % g != 0) {
            return Err(ArchError(format!(
                "width {w} does not split into {g} equal branches (input channels, conv and dense widths and latents must be multiples of groups)"
            )));
        }
        Ok(())
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "paper" => Some(Self::paper()),
            "small" => Some(Self::small()),
            "tiny" => Some(Self::tiny()),
            "flow" => Some(Self::flow(crate::flow::FlowStack::REFERENCE_DEPTH)),
            _ => None,
        }
    }

    /// Spatial size after the conv blocks (MaxPool 2, ceil mode).
    pub fn conv_output_hw(&self) -> (usize, usize) {
        let n = self.conv.len() as u32;
        let down = |s: usize| (0..n).fold(s, |s, _| s.div_ceil(2));
        (down(self.input_height), down(self.input_width))
    }

    pub fn flatten_size(&self) -> usize {
        let (h, w) = self.conv_output_hw();
        h * w * self.conv.last().copied().unwrap_or(self.input_channels)
    }
}

/// Cost of one encoder layer: what compression trades against accuracy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCost {
    pub name: String,
    pub params: usize,
    /// Multiply-accumulates per frame.
    pub macs: usize,
}

impl EncoderArch {
    /// Parameters and multiply-accumulates per layer, in graph order (BatchNorm counted with
    /// its conv; the `mu` and `logvar` heads as one layer). Early convolutions dominate the
    /// arithmetic, dense layers the parameters. Branches (`groups`) divide the convolutions'
    /// cost; dense layers are counted whole, as the ONNX graph stores them (block-diagonal).
    pub fn layer_costs(&self) -> Vec<LayerCost> {
        let mut out = vec![];
        let (mut h, mut w, mut c_in) = (self.input_height, self.input_width, self.input_channels);
        let g = self.groups.max(1);
        for (i, &c) in self.conv.iter().enumerate() {
            out.push(LayerCost {
                name: format!("conv{i}"),
                params: c * c_in / g * 9 + c + 4 * c,
                macs: h * w * c * c_in / g * 9,
            });
            (h, w, c_in) = (h.div_ceil(2), w.div_ceil(2), c);
        }
        let mut n_in = self.flatten_size();
        for (i, &n) in self.dense.iter().enumerate() {
            out.push(LayerCost {
                name: format!("fc{i}"),
                params: n_in * n + n,
                macs: n_in * n,
            });
            n_in = n;
        }
        out.push(LayerCost {
            name: "mu+logvar".into(),
            params: 2 * (n_in * self.latents + self.latents),
            macs: 2 * n_in * self.latents,
        });
        out
    }
}
