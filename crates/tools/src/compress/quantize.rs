//! Post-training quantisation of an ONNX encoder, written as standard ONNX operators so that
//! any runtime can load it:
//!
//! - `fp16`: every float initializer stored as float16, cast back to float32 at load. Halves
//!   the file; tract has no fast fp16 kernel on x86, so it computes in f32.
//! - `int8-dynamic`: the dense layers (Gemm) as onnxruntime's dynamic quantisation writes them:
//!   weights int8 per output neuron, activations quantised at run time
//!   (DynamicQuantizeLinear + MatMulInteger). Convolutions stay f32.
//! - `int8-static`: QDQ. Conv and Gemm weights int8 per output channel (DequantizeLinear), and
//!   every conv and dense input quantised to uint8 with a scale fixed from calibration frames
//!   (QuantizeLinear + DequantizeLinear). tract folds QDQ back to f32 arithmetic: this measures
//!   the accuracy int8 would cost, not a speed gain (NOTES.md).
//!
//! Scales are symmetric per output channel for weights (zero point 0, range ±127) and
//! asymmetric per tensor for activations (min..max of the calibration frames, always
//! including 0).

use crate::onnx_gen::{initializer_f32, input_dims, int_attr};
use prost::Message;
use std::collections::HashMap;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;

/// A quantisation scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    Fp16,
    Int8Dynamic,
    Int8Static,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp16 => "fp16",
            Precision::Int8Dynamic => "int8-dynamic",
            Precision::Int8Static => "int8-static",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        match s {
            "fp16" => Ok(Precision::Fp16),
            "int8-dynamic" => Ok(Precision::Int8Dynamic),
            "int8-static" => Ok(Precision::Int8Static),
            _ => Err(crate::Error::Onnx(format!(
                "unknown precision '{s}': use fp16, int8-dynamic or int8-static"
            ))),
        }
    }
}

/// Quantises the float32 encoder `onnx`. `calibration` holds preprocessed input frames; only
/// `int8-static` uses them (at least one is needed there).
pub fn quantize(
    onnx: &[u8],
    precision: Precision,
    calibration: &[Vec<f32>],
) -> Result<Vec<u8>, crate::Error> {
    let mut model = pb::ModelProto::decode(onnx)
        .map_err(|e| crate::Error::Onnx(format!("not an ONNX model: {e}")))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or(crate::Error::Onnx("the ONNX model has no graph".into()))?;
    match precision {
        Precision::Fp16 => to_fp16(graph),
        Precision::Int8Dynamic => dynamic_dense(graph)?,
        Precision::Int8Static => {
            if calibration.is_empty() {
                return Err(crate::Error::Onnx(
                    "int8-static quantisation needs calibration frames".into(),
                ));
            }
            let ranges = activation_ranges(onnx, &quantised_inputs(graph), calibration)?;
            static_qdq(graph, &ranges)?;
        }
    }
    model.doc_string = format!("{} ({precision} by vae-ood compress)", model.doc_string);
    Ok(model.encode_to_vec())
}

fn tensor(name: &str, dims: &[i64], ty: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: ty as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    tensor(
        name,
        dims,
        DataType::Float,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn take_init(graph: &mut pb::GraphProto, name: &str) -> Result<pb::TensorProto, crate::Error> {
    let i = graph
        .initializer
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| crate::Error::Onnx(format!("no initializer '{name}'")))?;
    Ok(graph.initializer.remove(i))
}

fn to_fp16(graph: &mut pb::GraphProto) {
    let mut casts = vec![];
    for t in graph.initializer.iter_mut() {
        let Ok(v) = initializer_f32(t) else { continue };
        let name = std::mem::take(&mut t.name);
        let stored = format!("{name}.fp16");
        *t = tensor(
            &stored,
            &t.dims,
            DataType::Float16,
            v.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        );
        casts.push(node(
            "Cast",
            &format!("{name}.cast"),
            &[&stored],
            &[&name],
            vec![int_attr("to", DataType::Float as i64)],
        ));
    }
    casts.append(&mut graph.node);
    graph.node = casts;
}

/// Symmetric int8 per row of a [rows, cols] matrix: (values, scale per row).
fn quantize_rows(w: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let cols = w.len() / rows.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        q.extend(
            row.iter()
                .map(|x| (x / s).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(s);
    }
    (q, scales)
}

fn i8_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

/// Replaces the weight initializer `name` ([out, ...]) by int8 values and a DequantizeLinear
/// (axis 0) that gives back a float tensor of the same name.
fn dequantized_weight(
    graph: &mut pb::GraphProto,
    name: &str,
    nodes: &mut Vec<pb::NodeProto>,
) -> Result<(), crate::Error> {
    let t = take_init(graph, name)?;
    let w = initializer_f32(&t)?;
    let rows = *t
        .dims
        .first()
        .ok_or(crate::Error::Onnx("scalar weight".into()))? as usize;
    let (q, s) = quantize_rows(&w, rows);
    let (qn, sn, zn) = (
        format!("{name}.int8"),
        format!("{name}.scale"),
        format!("{name}.zero"),
    );
    graph
        .initializer
        .push(tensor(&qn, &t.dims, DataType::Int8, i8_bytes(&q)));
    graph.initializer.push(f32_tensor(&sn, &[rows as i64], &s));
    graph
        .initializer
        .push(tensor(&zn, &[rows as i64], DataType::Int8, vec![0; rows]));
    nodes.push(node(
        "DequantizeLinear",
        &format!("{name}.dequantize"),
        &[&qn, &sn, &zn],
        &[name],
        vec![int_attr("axis", 0)],
    ));
    Ok(())
}

/// Dense layers (Gemm, transB = 1) as DynamicQuantizeLinear + MatMulInteger.
fn dynamic_dense(graph: &mut pb::GraphProto) -> Result<(), crate::Error> {
    let old = std::mem::take(&mut graph.node);
    let mut nodes = vec![];
    for n in old {
        if n.op_type != "Gemm" {
            nodes.push(n);
            continue;
        }
        let p = n.name.clone();
        let (x, wname, bname) = (&n.input[0], &n.input[1], &n.input[2]);
        let t = take_init(graph, wname)?;
        let w = initializer_f32(&t)?;
        let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
        let (q, s) = quantize_rows(&w, rows);
        // MatMulInteger wants B as [in, out] with a zero point per output column.
        let mut qt = vec![0i8; q.len()];
        for r in 0..rows {
            for c in 0..cols {
                qt[c * rows + r] = q[r * cols + c];
            }
        }
        let (qn, sn, zn) = (
            format!("{p}.weight.int8"),
            format!("{p}.weight.scale"),
            format!("{p}.weight.zero"),
        );
        graph.initializer.push(tensor(
            &qn,
            &[cols as i64, rows as i64],
            DataType::Int8,
            i8_bytes(&qt),
        ));
        graph.initializer.push(f32_tensor(&sn, &[rows as i64], &s));
        graph
            .initializer
            .push(tensor(&zn, &[rows as i64], DataType::Int8, vec![0; rows]));
        let o = |s: &str| format!("{p}.{s}");
        nodes.push(node(
            "DynamicQuantizeLinear",
            &o("quantize_input"),
            &[x],
            &[&o("xq"), &o("xs"), &o("xz")],
            vec![],
        ));
        nodes.push(node(
            "MatMulInteger",
            &o("matmul_integer"),
            &[&o("xq"), &qn, &o("xz"), &zn],
            &[&o("acc")],
            vec![],
        ));
        nodes.push(node(
            "Cast",
            &o("acc_float"),
            &[&o("acc")],
            &[&o("accf")],
            vec![int_attr("to", DataType::Float as i64)],
        ));
        nodes.push(node(
            "Mul",
            &o("mul_input_scale"),
            &[&o("accf"), &o("xs")],
            &[&o("y1")],
            vec![],
        ));
        nodes.push(node(
            "Mul",
            &o("mul_weight_scale"),
            &[&o("y1"), &sn],
            &[&o("y2")],
            vec![],
        ));
        nodes.push(node(
            "Add",
            &o("add_bias"),
            &[&o("y2"), bname],
            &[&n.output[0]],
            vec![],
        ));
    }
    graph.node = nodes;
    Ok(())
}

/// The data inputs of the Conv and Gemm nodes: the tensors int8-static quantises.
fn quantised_inputs(graph: &pb::GraphProto) -> Vec<String> {
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "Gemm")
        .map(|n| n.input[0].clone())
        .fold(vec![], |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        })
}

/// (min, max) of each tensor in `names` over the calibration frames, run in tract.
fn activation_ranges(
    onnx: &[u8],
    names: &[String],
    frames: &[Vec<f32>],
) -> Result<HashMap<String, (f32, f32)>, crate::Error> {
    let mut model = pb::ModelProto::decode(onnx).map_err(|e| crate::Error::Onnx(e.to_string()))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or(crate::Error::Onnx("no graph".into()))?;
    let input = graph
        .input
        .first()
        .ok_or(crate::Error::Onnx("no input".into()))?
        .clone();
    graph.output = names
        .iter()
        .map(|n| pb::ValueInfoProto {
            name: n.clone(),
            ..Default::default()
        })
        .collect();
    // A dimension that is not fixed (a dynamic batch, say) is run at 1.
    let dims: Vec<usize> = input_dims(&input).into_iter().map(|d| d.max(1)).collect();
    let bytes = model.encode_to_vec();
    let err =
        |e: &dyn std::fmt::Display| crate::Error::Onnx(format!("measuring activation ranges: {e}"));
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact(&dims).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| err(&e))?;
    let mut ranges: HashMap<String, (f32, f32)> =
        names.iter().map(|n| (n.clone(), (0.0, 0.0))).collect();
    for f in frames {
        let x =
            tract_ndarray::ArrayD::from_shape_vec(dims.clone(), f.clone()).map_err(|e| err(&e))?;
        let out = plan
            .run(tvec!(Tensor::from(x).into()))
            .map_err(|e| err(&e))?;
        for (name, t) in names.iter().zip(out.iter()) {
            let v = t.to_plain_array_view::<f32>().map_err(|e| err(&e))?;
            let r = ranges.get_mut(name).expect("inserted");
            for &x in v {
                r.0 = r.0.min(x);
                r.1 = r.1.max(x);
            }
        }
    }
    Ok(ranges)
}

/// QDQ: int8 weights per output channel, uint8 activations per tensor at the Conv and Gemm
/// inputs with the calibration ranges.
fn static_qdq(
    graph: &mut pb::GraphProto,
    ranges: &HashMap<String, (f32, f32)>,
) -> Result<(), crate::Error> {
    let old = std::mem::take(&mut graph.node);
    let mut front = vec![];
    let mut nodes = vec![];
    let mut done: HashMap<String, String> = HashMap::new();
    for mut n in old {
        if n.op_type == "Conv" || n.op_type == "Gemm" {
            dequantized_weight(graph, &n.input[1].clone(), &mut front)?;
            let x = n.input[0].clone();
            let dq = match done.get(&x) {
                Some(d) => d.clone(),
                None => {
                    let (lo, hi) = ranges
                        .get(&x)
                        .copied()
                        .ok_or_else(|| crate::Error::Onnx(format!("no range for '{x}'")))?;
                    let s = ((hi - lo) / 255.0).max(1e-8);
                    let z = (-lo / s).round().clamp(0.0, 255.0) as u8;
                    let (sn, zn, q, dq) = (
                        format!("{x}.scale"),
                        format!("{x}.zero"),
                        format!("{x}.q"),
                        format!("{x}.dq"),
                    );
                    graph.initializer.push(f32_tensor(&sn, &[], &[s]));
                    graph
                        .initializer
                        .push(tensor(&zn, &[], DataType::Uint8, vec![z]));
                    nodes.push(node(
                        "QuantizeLinear",
                        &format!("{x}.quantize"),
                        &[&x, &sn, &zn],
                        &[&q],
                        vec![],
                    ));
                    nodes.push(node(
                        "DequantizeLinear",
                        &format!("{x}.dequantize"),
                        &[&q, &sn, &zn],
                        &[&dq],
                        vec![],
                    ));
                    done.insert(x.clone(), dq.clone());
                    dq
                }
            };
            n.input[0] = dq;
        }
        nodes.push(n);
    }
    front.append(&mut nodes);
    graph.node = front;
    Ok(())
}
