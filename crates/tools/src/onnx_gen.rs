//! Writes β-VAE encoders of the paper's architecture family as ONNX.
//!
//! One graph shape (3x3 conv + BatchNorm + LeakyReLU(0.1) + MaxPool 2 with ceil, flatten, dense
//! layers, then `mu` and `logvar` heads, the PyTorch export's operator set) with weights from a
//! [`WeightSource`]: a trained model (`vae-ood train` exports through here), or a seed. Seeded
//! encoders have never seen data and their verdicts are NOT meaningful; tests use them to run
//! the whole pipeline on a real ONNX graph without training first.

use std::collections::HashMap;

use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};

pub use vae_ood_core::arch::{EncoderArch, LayerCost};

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

/// How a seeded source draws a tensor.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f32),
    Uniform(f32, f32),
}

/// Where the encoder's weights come from. Tensors are named as in a PyTorch state dict
/// (`conv0.weight`, `bn0.running_var`, `fc1.weight` as [out, in], `mu.bias`, ...).
pub trait WeightSource {
    fn tensor(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Vec<f32>, crate::Error>;
}

/// Weights drawn from a seeded generator, in graph order.
pub struct Seeded(ChaCha8Rng);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl WeightSource for Seeded {
    fn tensor(&mut self, _: &str, dims: &[usize], init: Init) -> Result<Vec<f32>, crate::Error> {
        let n = dims.iter().product();
        Ok(match init {
            Init::Normal(std) => {
                let dist =
                    Normal::new(0.0f32, std).map_err(|e| crate::Error::Onnx(e.to_string()))?;
                (0..n).map(|_| dist.sample(&mut self.0)).collect()
            }
            Init::Uniform(lo, hi) => {
                let dist = Uniform::new(lo, hi).map_err(|e| crate::Error::Onnx(e.to_string()))?;
                (0..n).map(|_| dist.sample(&mut self.0)).collect()
            }
        })
    }
}

/// Trained weights by name; a missing tensor or a wrong size is an error naming it.
pub struct Named(pub HashMap<String, Vec<f32>>);

impl WeightSource for Named {
    fn tensor(&mut self, name: &str, dims: &[usize], _: Init) -> Result<Vec<f32>, crate::Error> {
        let t = self
            .0
            .remove(name)
            .ok_or_else(|| crate::Error::Onnx(format!("weights have no tensor '{name}'")))?;
        let n: usize = dims.iter().product();
        if t.len() != n {
            return Err(crate::Error::Onnx(format!(
                "tensor '{name}' has {} values, the graph needs {dims:?} = {n}",
                t.len()
            )));
        }
        Ok(t)
    }
}

/// Records every tensor another source hands out, by name.
struct Recorder<'a>(&'a mut dyn WeightSource, HashMap<String, Vec<f32>>);

impl WeightSource for Recorder<'_> {
    fn tensor(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Vec<f32>, crate::Error> {
        let t = self.0.tensor(name, dims, init)?;
        self.1.insert(name.into(), t.clone());
        Ok(t)
    }
}

/// The seeded encoder's tensors by name (what [`seeded_encoder`] writes), for tools and tests
/// that edit weights before writing a graph with [`Named`].
pub fn seeded_weights(arch: &EncoderArch, seed: u64) -> HashMap<String, Vec<f32>> {
    let mut seeded = Seeded::new(seed);
    let mut rec = Recorder(&mut seeded, HashMap::new());
    encoder_onnx(arch, &mut rec, &GraphNames::default(), "").expect("seeded weights always fit");
    rec.1
}

/// Reads back an encoder this module wrote (any [`WeightSource`]): its architecture, from the
/// initializers' shapes and the input's, and its tensors by name. ONNX files from elsewhere
/// get an error naming what is missing.
pub fn read_encoder(onnx: &[u8]) -> Result<(EncoderArch, HashMap<String, Vec<f32>>), crate::Error> {
    let model = pb::ModelProto::decode(onnx)
        .map_err(|e| crate::Error::Onnx(format!("not an ONNX model: {e}")))?;
    let graph = model
        .graph
        .ok_or(crate::Error::Onnx("the ONNX model has no graph".into()))?;
    let mut dims = HashMap::new();
    let mut weights = HashMap::new();
    for t in &graph.initializer {
        let v = initializer_f32(t)?;
        dims.insert(
            t.name.clone(),
            t.dims.iter().map(|&d| d as usize).collect::<Vec<_>>(),
        );
        weights.insert(t.name.clone(), v);
    }
    let need = |name: &str| -> Result<&Vec<usize>, crate::Error> {
        dims.get(name).ok_or_else(|| {
            crate::Error::Onnx(format!("no initializer '{name}': only encoders written by vae_ood_monitor (vae-ood train, gen-seeded) can be pruned"))
        })
    };
    let conv0 = need("conv0.weight")?;
    let conv: Vec<usize> = (0..)
        .map_while(|i| dims.get(&format!("conv{i}.weight")).map(|d| d[0]))
        .collect();
    let dense: Vec<usize> = (0..)
        .map_while(|i| dims.get(&format!("fc{i}.weight")).map(|d| d[0]))
        .collect();
    let latents = need("mu.weight")?[0];
    let input = graph
        .input
        .first()
        .ok_or(crate::Error::Onnx("the ONNX graph has no input".into()))?;
    let shape = input_dims(input);
    if shape.len() != 4 || shape[2] == 0 || shape[3] == 0 {
        return Err(crate::Error::Onnx(format!(
            "input '{}' has no fixed NCHW shape",
            input.name
        )));
    }
    // Grouped convolutions read input_channels / groups channels each.
    let groups = (shape[1] / conv0[1].max(1)).max(1);
    let arch = EncoderArch {
        input_channels: conv0[1] * groups,
        input_height: shape[2],
        input_width: shape[3],
        conv,
        dense,
        latents,
        groups,
    };
    Ok((arch, weights))
}

/// Builds the seeded encoder and returns the serialized ONNX model.
pub fn seeded_encoder(arch: &EncoderArch, seed: u64, names: &GraphNames) -> Vec<u8> {
    let doc =
        format!("seeded (untrained) beta-VAE encoder, seed {seed}: scores are not meaningful");
    encoder_onnx(arch, &mut Seeded::new(seed), names, &doc).expect("seeded weights always fit")
}

/// Builds the encoder graph of `arch` with weights from `weights`; `doc` becomes the model's
/// doc string.
pub fn encoder_onnx(
    arch: &EncoderArch,
    weights: &mut dyn WeightSource,
    names: &GraphNames,
    doc: &str,
) -> Result<Vec<u8>, crate::Error> {
    arch.check_groups()
        .map_err(|e| crate::Error::Onnx(e.to_string()))?;
    let g = arch.groups;
    let mut b = GraphBuilder {
        weights,
        nodes: vec![],
        inits: vec![],
        groups: g,
    };
    let mut x = names.input.clone();
    let mut c_in = arch.input_channels;
    for (i, &c_out) in arch.conv.iter().enumerate() {
        let p = format!("conv{i}");
        let fan_in = (c_in / g * 9) as f32;
        let w = b.normal(
            &format!("{p}.weight"),
            &[c_out, c_in / g, 3, 3],
            (2.0 / fan_in).sqrt(),
        )?;
        let bias = b.normal(&format!("{p}.bias"), &[c_out], 0.01)?;
        let mut attrs = vec![
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[1, 1, 1, 1]),
            ints("strides", &[1, 1]),
        ];
        if g > 1 {
            attrs.push(int("group", g as i64));
        }
        x = b.node("Conv", &p, &[&x, &w, &bias], attrs);
        let scale = b.uniform(&format!("bn{i}.weight"), &[c_out], 0.8, 1.2)?;
        let shift = b.normal(&format!("bn{i}.bias"), &[c_out], 0.1)?;
        let mean = b.normal(&format!("bn{i}.running_mean"), &[c_out], 0.1)?;
        let var = b.uniform(&format!("bn{i}.running_var"), &[c_out], 0.5, 1.5)?;
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
        )?;
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
    b.dense("mu", &x, width, arch.latents, head_std, Some(&names.mu))?;
    b.dense(
        "logvar",
        &x,
        width,
        arch.latents,
        0.3 * head_std,
        Some(&names.logvar),
    )?;

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
    Ok(pb::ModelProto {
        ir_version: 8,
        producer_name: "vae_ood_monitor".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec())
}

struct GraphBuilder<'a> {
    weights: &'a mut dyn WeightSource,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    /// Branches of the model: dense weights are block-diagonal over them.
    groups: usize,
}

/// Zeroes the entries of a [out, in] weight that connect different branches (`groups`
/// diagonal blocks stay): a dense layer of independent branches, as one Gemm.
pub fn block_diagonal(w: &mut [f32], n_out: usize, n_in: usize, groups: usize) {
    if groups <= 1 {
        return;
    }
    let (bo, bi) = (n_out / groups, n_in / groups);
    for o in 0..n_out {
        for i in 0..n_in {
            if o / bo != i / bi {
                w[o * n_in + i] = 0.0;
            }
        }
    }
}

impl GraphBuilder<'_> {
    fn init(&mut self, name: &str, dims: &[usize], init: Init) -> Result<String, crate::Error> {
        let mut data = self.weights.tensor(name, dims, init)?;
        if self.groups > 1 && dims.len() == 2 {
            block_diagonal(&mut data, dims[0], dims[1], self.groups);
        }
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        Ok(name.into())
    }

    fn normal(&mut self, name: &str, dims: &[usize], std: f32) -> Result<String, crate::Error> {
        self.init(name, dims, Init::Normal(std))
    }

    fn uniform(
        &mut self,
        name: &str,
        dims: &[usize],
        lo: f32,
        hi: f32,
    ) -> Result<String, crate::Error> {
        self.init(name, dims, Init::Uniform(lo, hi))
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
    ) -> Result<String, crate::Error> {
        let w = self.normal(&format!("{name}.weight"), &[n_out, n_in], std)?;
        let b = self.normal(&format!("{name}.bias"), &[n_out], 0.01)?;
        Ok(self.node_named("Gemm", name, &[x, &w, &b], vec![int("transB", 1)], output))
    }
}

/// The values of a float32 initializer (raw little-endian bytes or `float_data`).
pub(crate) fn initializer_f32(t: &pb::TensorProto) -> Result<Vec<f32>, crate::Error> {
    if t.data_type != DataType::Float as i32 {
        return Err(crate::Error::Onnx(format!(
            "initializer '{}' is not f32",
            t.name
        )));
    }
    Ok(if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// The declared dimensions of a graph input; 0 where a dimension is not a fixed number.
pub(crate) fn input_dims(input: &pb::ValueInfoProto) -> Vec<usize> {
    match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t
            .shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v as usize,
                _ => 0,
            })
            .collect(),
        _ => vec![],
    }
}

/// An integer attribute, for graph edits elsewhere (quantisation).
pub(crate) fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    int(name, v)
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

/// Writes a bundle holding an UNTRAINED encoder of preset `preset` with seeded weights
/// (`vae-ood gen-seeded`: a placeholder for tests; its verdicts mean nothing), and proves it
/// loads and runs. `numeric_outputs` names the outputs "0" and "1", as PyTorch exports do, and
/// addresses them by index.
pub fn write_seeded_bundle(
    out: &std::path::Path,
    preset: &str,
    seed: u64,
    name: &str,
    numeric_outputs: bool,
) -> crate::Result<vae_ood_core::bundle::Bundle> {
    use vae_ood_core::bundle::{Bundle, Manifest, OutputRef, Outputs, Provenance};
    use vae_ood_core::preprocess::{
        ChannelOrder, Filter, InputSpec, Layout, Normalize, ResizeMode,
    };
    let arch = EncoderArch::preset(preset).ok_or_else(|| {
        crate::Error::Input(format!(
            "unknown preset '{preset}' (expected tiny, small, paper or flow)"
        ))
    })?;
    let (names, outputs) = if numeric_outputs {
        (
            GraphNames {
                input: "input.1".into(),
                mu: "0".into(),
                logvar: "1".into(),
            },
            Outputs {
                mu: OutputRef::Index { index: 0 },
                logvar: OutputRef::Index { index: 1 },
            },
        )
    } else {
        (
            GraphNames::default(),
            Outputs {
                mu: OutputRef::Name { name: "mu".into() },
                logvar: OutputRef::Name {
                    name: "logvar".into(),
                },
            },
        )
    };
    let onnx = seeded_encoder(&arch, seed, &names);
    let input = InputSpec {
        width: arch.input_width as u32,
        height: arch.input_height as u32,
        channel_order: ChannelOrder::Rgb,
        layout: Layout::Nchw,
        normalize: Normalize::default(),
        resize: ResizeMode::Stretch,
        filter: Filter::Area,
    };
    let description = format!("UNTRAINED {preset} {} encoder with seeded weights: a placeholder whose verdicts are not meaningful", if arch.groups > 1 { "optical-flow VAE" } else { "beta-VAE" });
    let provenance = Provenance {
        trained: false,
        created_by: format!(
            "vae-ood gen-seeded --preset {preset} --seed {seed} --name {name}{}",
            if numeric_outputs {
                " --numeric-outputs"
            } else {
                ""
            }
        ),
        training_data: "none (seeded weights)".into(),
        license: "Apache-2.0 (generated by this project)".into(),
        notes: format!(
            "architecture: {}",
            serde_json::to_string(&arch).expect("serialisable")
        ),
    };
    // The flow preset is the flow detector's encoder: its bundle says so.
    let manifest = if arch.groups > 1 {
        let flow = vae_ood_core::flow::FlowSpec::REFERENCE;
        Manifest::for_flow_encoder(&arch, flow, name, &description, outputs, provenance)
    } else {
        Manifest::for_encoder(&arch, input, name, &description, outputs, provenance)
    };
    let bundle = Bundle::write(out, manifest, &onnx)?;
    // Prove it loads and runs before reporting success.
    vae_ood_core::detector::load(out, Default::default())?;
    Ok(bundle)
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
    fn read_encoder_gives_back_architecture_and_weights() {
        let arch = EncoderArch::tiny();
        let w = seeded_weights(&arch, 9);
        let (a, r) = read_encoder(&seeded_encoder(&arch, 9, &GraphNames::default())).unwrap();
        assert_eq!((a, r), (arch, w));
        assert!(read_encoder(b"not onnx").is_err());
    }

    #[test]
    fn layer_costs_match_the_papers_encoder() {
        let costs = EncoderArch::paper().layer_costs();
        let params: usize = costs.iter().map(|c| c.params).sum();
        // ~8.8 M parameters, about 99 % of them dense (NOTES: the reference implementation).
        assert!((8_700_000..8_900_000).contains(&params), "{params}");
        let dense: usize = costs
            .iter()
            .filter(|c| !c.name.starts_with("conv"))
            .map(|c| c.params)
            .sum();
        assert!(dense as f64 > 0.985 * params as f64);
        // The first two convolutions do most of the arithmetic.
        let macs: usize = costs.iter().map(|c| c.macs).sum();
        assert!((costs[0].macs + costs[1].macs) as f64 > 0.8 * macs as f64);
        assert_eq!(costs[0].macs, 224 * 224 * 128 * 3 * 9);
    }

    #[test]
    fn paper_preset_has_the_papers_flatten_size() {
        assert_eq!(EncoderArch::paper().flatten_size(), 3136);
        assert_eq!(EncoderArch::tiny().flatten_size(), 16 * 4 * 4);
    }
}
