//! `vae-ood import`: a bundle from an encoder trained elsewhere (a PyTorch VAE exported to
//! ONNX), so that nobody has to hand-write a manifest.
//!
//! What the ONNX file says is read from it: the input's size and layout (where declared), the
//! mu and logvar outputs (two outputs of the latent size, named or numbered). What it cannot say
//! (normalisation, channel order, resize mode and filter) comes from the caller, with defaults
//! that are reported as such, because a wrong guess there silently changes every score. The
//! bundle is then loaded and run once on a zero input (the same checks the node runs) before it
//! is kept.

use crate::{Error, Result};
use prost::Message;
use std::path::Path;
use tract_onnx::pb;
use vae_ood_core::bundle::{Bundle, Manifest, OutputRef, Outputs, Provenance};
use vae_ood_core::preprocess::{ChannelOrder, Filter, InputSpec, Layout, Normalize, ResizeMode};

/// What the caller says that the ONNX file cannot (or overrides what it declares).
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Bundle name; default: the file's stem.
    pub name: Option<String>,
    /// The mu and logvar outputs, by name or position.
    pub mu: Option<String>,
    pub logvar: Option<String>,
    pub layout: Option<Layout>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub channel_order: Option<ChannelOrder>,
    pub normalize: Option<Normalize>,
    pub resize: Option<ResizeMode>,
    pub filter: Option<Filter>,
    /// The latent size, where the outputs do not declare it.
    pub latents: Option<usize>,
}

/// The bundle written, and how each field was decided ("from the ONNX input", "default").
#[derive(Debug)]
pub struct Imported {
    pub bundle: Bundle,
    pub decisions: Vec<String>,
}

/// One dimension of a declared shape: a number, a symbol (`batch`) or nothing.
#[derive(Debug, Clone, PartialEq)]
enum Dim {
    Known(i64),
    Symbolic(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known(n) => write!(f, "{n}"),
            Self::Symbolic(s) if s.is_empty() => f.write_str("?"),
            Self::Symbolic(s) => f.write_str(s),
        }
    }
}

fn dims(v: &pb::ValueInfoProto) -> Option<Vec<Dim>> {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as T;
    let Some(T::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimValue(n)) => Dim::Known(*n),
                Some(Value::DimParam(s)) => Dim::Symbolic(s.clone()),
                None => Dim::Symbolic(String::new()),
            })
            .collect(),
    )
}

fn show(d: &[Dim]) -> String {
    let parts: Vec<String> = d.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn known(d: &Dim) -> Option<i64> {
    match d {
        Dim::Known(n) if *n > 0 => Some(*n),
        _ => None,
    }
}

/// Reads `onnx`, writes a bundle to `out` and checks it by a dry run; on failure nothing is
/// left in `out` that was not there before.
pub fn import(onnx_path: &Path, out: &Path, opts: &ImportOptions) -> Result<Imported> {
    let bytes = std::fs::read(onnx_path).map_err(Error::read(onnx_path))?;
    let model = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::Onnx(format!("{} is not an ONNX model: {e}", onnx_path.display())))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Onnx(format!("{} has no graph", onnx_path.display())))?;
    let mut decisions = vec![];
    let (input, input_decisions) = input_spec(graph, opts)?;
    decisions.extend(input_decisions);
    let (outputs, count, output_decisions) = outputs(graph, opts)?;
    decisions.extend(output_decisions);

    let name = opts.name.clone().unwrap_or_else(|| {
        onnx_path
            .file_stem()
            .map_or("imported".into(), |s| s.to_string_lossy().into_owned())
    });
    let description = format!(
        "imported from {} by vae-ood import",
        onnx_path
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into_owned())
    );
    let provenance = Provenance {
        trained: true,
        created_by: format!("vae-ood import {}", onnx_path.display()),
        training_data: String::new(),
        license: String::new(),
        notes: "input spec from the import (see its report): check normalisation, channel order, resize and filter against the preprocessing the encoder was trained with".into(),
    };
    let manifest =
        Manifest::for_image_encoder(count, input, &name, &description, outputs, provenance);
    if out.join(vae_ood_core::bundle::MANIFEST_FILE).exists() {
        return Err(Error::Input(format!(
            "{} already holds a bundle: choose another --out or remove it",
            out.display()
        )));
    }
    let existed = out.exists();
    let written = Bundle::write(out, manifest, &bytes).and_then(|_| {
        // The node's checks: parse, type for the input shape, find the outputs, run on zeros.
        vae_ood_core::detector::load(out, Default::default()).map(|d| d.bundle().clone())
    });
    match written {
        Ok(bundle) => Ok(Imported { bundle, decisions }),
        Err(e) => {
            let _ = std::fs::remove_file(out.join(vae_ood_core::bundle::MANIFEST_FILE));
            let _ = std::fs::remove_file(out.join("encoder.onnx"));
            if !existed {
                let _ = std::fs::remove_dir(out);
            }
            Err(Error::Input(format!(
                "the imported bundle does not load, so none was written: {e}"
            )))
        }
    }
}

/// The input spec: size and layout from the declared input where it has them, the rest from
/// the options or defaults.
fn input_spec(graph: &pb::GraphProto, opts: &ImportOptions) -> Result<(InputSpec, Vec<String>)> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    // Older exporters list the weights among the inputs too.
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(Error::Input(format!(
            "the encoder has {} inputs {names:?}; an encoder takes exactly one (the image)",
            names.len()
        )));
    };
    let d = dims(input).unwrap_or_default();
    if !d.is_empty() && d.len() != 4 {
        return Err(Error::Input(format!(
            "input '{}' has shape {}: expected 4 dimensions (batch, channels, height, width or batch, height, width, channels)",
            input.name,
            show(&d)
        )));
    }
    let mut decisions = vec![];
    let is_channels = |x: &Dim| matches!(known(x), Some(1 | 3));
    let layout = match opts.layout {
        Some(l) => {
            decisions.push(format!("layout {l:?} (--layout)"));
            l
        }
        None if d.len() == 4 && is_channels(&d[3]) && !is_channels(&d[1]) => {
            decisions.push(format!(
                "layout NHWC (from input '{}' {})",
                input.name,
                show(&d)
            ));
            Layout::Nhwc
        }
        None => {
            decisions.push(if d.len() == 4 && is_channels(&d[1]) {
                format!("layout NCHW (from input '{}' {})", input.name, show(&d))
            } else {
                format!(
                    "layout NCHW (default: input '{}' {} does not say; --layout nhwc otherwise)",
                    input.name,
                    show(&d)
                )
            });
            Layout::Nchw
        }
    };
    let (c_axis, h_axis, w_axis) = match layout {
        Layout::Nchw => (1, 2, 3),
        Layout::Nhwc => (3, 1, 2),
    };
    let declared = |axis: usize| d.get(axis).and_then(known);
    let size = |given: Option<u32>, axis: usize, what: &str, flag: &str| -> Result<u32> {
        match (given, declared(axis)) {
            (Some(g), Some(n)) if i64::from(g) != n => Err(Error::Input(format!(
                "{flag} {g} contradicts the input's declared {what} {n}"
            ))),
            (Some(g), _) => Ok(g),
            (None, Some(n)) => u32::try_from(n)
                .map_err(|_| Error::Input(format!("the input's {what} {n} is out of range"))),
            (None, None) => Err(Error::Input(format!(
                "the input's {what} is not declared ({}): give {flag}",
                show(&d)
            ))),
        }
    };
    let height = size(opts.height, h_axis, "height", "--height")?;
    let width = size(opts.width, w_axis, "width", "--width")?;
    decisions.push(format!(
        "size {width}x{height} ({})",
        if opts.width.is_some() || opts.height.is_some() {
            "--width/--height"
        } else {
            "from the input"
        }
    ));
    let channels = declared(c_axis);
    let channel_order = match (opts.channel_order, channels) {
        (Some(ChannelOrder::Gray), Some(3))
        | (Some(ChannelOrder::Rgb | ChannelOrder::Bgr), Some(1)) => {
            return Err(Error::Input(format!(
                "--channel-order {:?} does not fit the input's {} channel(s)",
                opts.channel_order.unwrap(),
                channels.unwrap()
            )))
        }
        (Some(o), _) => {
            decisions.push(format!("channel order {o:?} (--channel-order)"));
            o
        }
        (None, Some(1)) => {
            decisions.push("channel order Gray (the input has 1 channel)".into());
            ChannelOrder::Gray
        }
        (None, _) => {
            decisions.push(
                "channel order Rgb (default; --channel-order bgr for OpenCV-trained models)".into(),
            );
            ChannelOrder::Rgb
        }
    };
    let c = if channel_order == ChannelOrder::Gray {
        1
    } else {
        3
    };
    let normalize = match &opts.normalize {
        Some(n) => {
            decisions.push(format!(
                "normalisation mean {:?} std {:?} (--normalize)",
                n.mean, n.std
            ));
            n.clone()
        }
        None => {
            decisions.push("normalisation pixel / 255, no mean or std (default; torchvision's ImageNet normalisation is --normalize 0.485,0.456,0.406/0.229,0.224,0.225)".into());
            Normalize {
                mean: vec![0.0; c],
                std: vec![1.0; c],
            }
        }
    };
    let resize = opts.resize.unwrap_or_default();
    let filter = opts.filter.unwrap_or(Filter::Area);
    decisions.push(format!(
        "resize {resize:?} ({}), filter {filter:?} ({})",
        if opts.resize.is_some() {
            "--resize"
        } else {
            "default"
        },
        if opts.filter.is_some() {
            "--filter"
        } else {
            "default"
        }
    ));
    let spec = InputSpec {
        width,
        height,
        channel_order,
        layout,
        normalize,
        resize,
        filter,
    };
    spec.validate().map_err(|e| Error::Input(e.to_string()))?;
    Ok((spec, decisions))
}

/// The mu and logvar outputs and the latent size.
fn outputs(graph: &pb::GraphProto, opts: &ImportOptions) -> Result<(Outputs, usize, Vec<String>)> {
    let outs: Vec<(&str, Option<Vec<Dim>>)> = graph
        .output
        .iter()
        .map(|o| (o.name.as_str(), dims(o)))
        .collect();
    let listing = || {
        outs.iter()
            .enumerate()
            .map(|(i, (n, d))| {
                format!(
                    "#{i} '{n}' {}",
                    d.as_deref().map_or("(no shape)".into(), show)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A name, or a position when no output has that name.
    let find = |given: &str, flag: &str| -> Result<usize> {
        outs.iter()
            .position(|(n, _)| *n == given)
            .or_else(|| given.parse::<usize>().ok().filter(|&i| i < outs.len()))
            .ok_or_else(|| {
                Error::Input(format!(
                    "{flag} {given}: no such output among {}",
                    listing()
                ))
            })
    };
    let mut decisions = vec![];
    let (mu, logvar) = match (&opts.mu, &opts.logvar) {
        (Some(m), Some(l)) => {
            decisions.push("mu and logvar outputs (--mu, --logvar)".into());
            (find(m, "--mu")?, find(l, "--logvar")?)
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Input(
                "give both --mu and --logvar, or neither".into(),
            ))
        }
        (None, None) => {
            let named = |keys: &[&str]| {
                let hits: Vec<usize> = outs
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| {
                        let n = n.to_ascii_lowercase();
                        keys.iter().any(|k| n.contains(k))
                    })
                    .map(|(i, _)| i)
                    .collect();
                (hits.len() == 1).then(|| hits[0])
            };
            let logvar = named(&["logvar", "log_var", "logsigma", "log_sigma"]);
            let mu = named(&["mu", "mean"]).filter(|&m| Some(m) != logvar);
            match (mu, logvar) {
                (Some(m), Some(l)) => {
                    decisions.push(format!(
                        "mu '{}', logvar '{}' (by their names)",
                        outs[m].0, outs[l].0
                    ));
                    (m, l)
                }
                _ if outs.len() == 2 => {
                    decisions.push(format!(
                        "mu '{}' (output #0), logvar '{}' (output #1): the only two outputs, in the usual order; --mu/--logvar otherwise",
                        outs[0].0, outs[1].0
                    ));
                    (0, 1)
                }
                _ => {
                    return Err(Error::Input(format!(
                        "cannot tell which outputs are mu and logvar among {}: give --mu and --logvar (names or positions)",
                        listing()
                    )))
                }
            }
        }
    };
    if mu == logvar {
        return Err(Error::Input(
            "mu and logvar must be two different outputs".into(),
        ));
    }
    let last = |i: usize| outs[i].1.as_ref().and_then(|d| d.last().and_then(known));
    let count = match (last(mu), last(logvar), opts.latents) {
        (Some(a), Some(b), _) if a != b => {
            return Err(Error::Input(format!(
                "mu and logvar must have the same size; they declare {a} and {b} ({})",
                listing()
            )))
        }
        (Some(a), _, Some(l)) | (_, Some(a), Some(l)) if a as usize != l => {
            return Err(Error::Input(format!(
                "--latents {l} contradicts the outputs' declared size {a}"
            )))
        }
        (_, _, Some(l)) => {
            decisions.push(format!("{l} latents (--latents)"));
            l
        }
        (Some(a), _, None) | (None, Some(a), None) => {
            decisions.push(format!("{a} latents (from the outputs)"));
            a as usize
        }
        (None, None, None) => {
            return Err(Error::Input(format!(
                "the outputs do not declare the latent size ({}): give --latents",
                listing()
            )))
        }
    };
    // Numbered outputs (PyTorch's "0", "15") are addressed by position, named ones by name.
    let reference = |i: usize| {
        let n = outs[i].0;
        if n.is_empty() || n.chars().all(|c| c.is_ascii_digit()) {
            OutputRef::Index { index: i }
        } else {
            OutputRef::Name { name: n.into() }
        }
    };
    Ok((
        Outputs {
            mu: reference(mu),
            logvar: reference(logvar),
        },
        count,
        decisions,
    ))
}
