//! Writes β-VAE encoders of the paper's architecture family as ONNX, with seeded weights.
//!
//! Until a trained detector ships, the bundled default detector comes from here: same graph
//! shape as the paper's encoder (3x3 conv + BatchNorm + LeakyReLU(0.1) + MaxPool 2 with ceil,
//! flatten, dense layers, then `mu` and `logvar` heads), deterministic weights from a seed.
//! Its verdicts are NOT meaningful: it has never seen data. It exists so the whole pipeline
//! (bundle, preprocessing, inference, node, tests) runs on a real ONNX graph.

use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};
use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};

/// The encoder's shape: `conv` widths (each halves the spatial size), `dense` hidden widths,
/// then two heads of `latents` units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderArch {
    pub input_channels: usize,
    pub input_height: usize,
    pub input_width: usize,
    pub conv: Vec<usize>,
    pub dense: Vec<usize>,
    pub latents: usize,
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
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "paper" => Some(Self::paper()),
            "tiny" => Some(Self::tiny()),
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

/// Names of the graph's input and two outputs. PyTorch exports use numeric output names;
/// tests use that variant to check bundles can address outputs by index.
#[derive(Debug, Clone)]
pub struct GraphNames {
    pub input: String,
    pub mu: String,
    pub logvar: String,
}

impl Default for GraphNames {
    fn default() -> Self {
        Self {
            input: "image".into(),
            mu: "mu".into(),
            logvar: "logvar".into(),
        }
    }
}

/// Builds the seeded encoder and returns the serialized ONNX model.
pub fn seeded_encoder(arch: &EncoderArch, seed: u64, names: &GraphNames) -> Vec<u8> {
    let mut b = GraphBuilder {
        rng: ChaCha8Rng::seed_from_u64(seed),
        nodes: vec![],
        inits: vec![],
    };
    let mut x = names.input.clone();
    let mut c_in = arch.input_channels;
    for (i, &c_out) in arch.conv.iter().enumerate() {
        let p = format!("conv{i}");
        let fan_in = (c_in * 9) as f32;
        let w = b.normal(
            &format!("{p}.weight"),
            &[c_out, c_in, 3, 3],
            (2.0 / fan_in).sqrt(),
        );
        let bias = b.normal(&format!("{p}.bias"), &[c_out], 0.01);
        x = b.node(
            "Conv",
            &p,
            &[&x, &w, &bias],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[1, 1, 1, 1]),
                ints("strides", &[1, 1]),
            ],
        );
        let scale = b.uniform(&format!("bn{i}.weight"), &[c_out], 0.8, 1.2);
        let shift = b.normal(&format!("bn{i}.bias"), &[c_out], 0.1);
        let mean = b.normal(&format!("bn{i}.running_mean"), &[c_out], 0.1);
        let var = b.uniform(&format!("bn{i}.running_var"), &[c_out], 0.5, 1.5);
        x = b.node(
            "BatchNormalization",
            &format!("bn{i}"),
            &[&x, &scale, &shift, &mean, &var],
            vec![float("epsilon", 1e-5)],
        );
        x = b.node(
            "LeakyRelu",
            &format!("act{i}"),
            &[&x],
            vec![float("alpha", 0.1)],
        );
        x = b.node(
            "MaxPool",
            &format!("pool{i}"),
            &[&x],
            vec![
                ints("kernel_shape", &[2, 2]),
                ints("strides", &[2, 2]),
                int("ceil_mode", 1),
            ],
        );
        c_in = c_out;
    }
    x = b.node("Flatten", "flatten", &[&x], vec![int("axis", 1)]);
    let mut width = arch.flatten_size();
    for (i, &units) in arch.dense.iter().enumerate() {
        x = b.dense(
            &format!("fc{i}"),
            &x,
            width,
            units,
            (2.0 / width as f32).sqrt(),
            None,
        );
        x = b.node(
            "LeakyRelu",
            &format!("fc{i}.act"),
            &[&x],
            vec![float("alpha", 0.1)],
        );
        width = units;
    }
    // Heads: small weights keep mu near N(0, 1) and logvar near 0, as a trained VAE's would be.
    let head_std = 1.0 / (width as f32).sqrt();
    b.dense("mu", &x, width, arch.latents, head_std, Some(&names.mu));
    b.dense(
        "logvar",
        &x,
        width,
        arch.latents,
        0.3 * head_std,
        Some(&names.logvar),
    );

    let graph = pb::GraphProto {
        name: "vae_encoder".into(),
        node: b.nodes,
        initializer: b.inits,
        input: vec![value_info(
            &names.input,
            &[1, arch.input_channels, arch.input_height, arch.input_width],
        )],
        output: vec![
            value_info(&names.mu, &[1, arch.latents]),
            value_info(&names.logvar, &[1, arch.latents]),
        ],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        producer_name: "vae_ood_monitor".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "seeded (untrained) beta-VAE encoder, seed {seed}: scores are not meaningful"
        ),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

struct GraphBuilder {
    rng: ChaCha8Rng,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
}

impl GraphBuilder {
    fn init(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn normal(&mut self, name: &str, dims: &[usize], std: f32) -> String {
        let dist = Normal::new(0.0f32, std).expect("finite std");
        let data = (0..dims.iter().product())
            .map(|_| dist.sample(&mut self.rng))
            .collect();
        self.init(name, dims, data)
    }

    fn uniform(&mut self, name: &str, dims: &[usize], lo: f32, hi: f32) -> String {
        let dist = Uniform::new(lo, hi).expect("lo < hi");
        let data = (0..dims.iter().product())
            .map(|_| dist.sample(&mut self.rng))
            .collect();
        self.init(name, dims, data)
    }

    /// Adds a node with one output named after the node (or `output`) and returns that name.
    fn node_named(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        output: Option<&str>,
    ) -> String {
        let out = output.map_or_else(|| format!("{name}.out"), str::to_string);
        self.nodes.push(pb::NodeProto {
            name: name.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        self.node_named(op, name, inputs, attrs, None)
    }

    /// A PyTorch-style `Linear` as Gemm with transB = 1.
    fn dense(
        &mut self,
        name: &str,
        x: &str,
        n_in: usize,
        n_out: usize,
        std: f32,
        output: Option<&str>,
    ) -> String {
        let w = self.normal(&format!("{name}.weight"), &[n_out, n_in], std);
        let b = self.normal(&format!("{name}.bias"), &[n_out], 0.01);
        self.node_named("Gemm", name, &[x, &w, &b], vec![int("transB", 1)], output)
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let shape = pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(Value::DimValue(d as i64)),
                ..Default::default()
            })
            .collect(),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = seeded_encoder(&EncoderArch::tiny(), 7, &GraphNames::default());
        assert_eq!(
            a,
            seeded_encoder(&EncoderArch::tiny(), 7, &GraphNames::default())
        );
        assert_ne!(
            a,
            seeded_encoder(&EncoderArch::tiny(), 8, &GraphNames::default())
        );
    }

    #[test]
    fn paper_preset_has_the_papers_flatten_size() {
        assert_eq!(EncoderArch::paper().flatten_size(), 3136);
        assert_eq!(EncoderArch::tiny().flatten_size(), 16 * 4 * 4);
    }
}
