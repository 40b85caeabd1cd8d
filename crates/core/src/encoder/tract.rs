//! The CPU backend: tract-onnx, optimised once at load time for the bundle's input shape, run
//! through one reused state (a fresh state per frame allocates every op's state again, a
//! measurable share of a sub-millisecond encoder). The model checks every backend gets run in
//! [`super::check_encoder`].

use super::{Encoder, InferenceError, Posterior};
use crate::bundle::{Bundle, BundleError, OutputRef};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
use tract_onnx::tract_core::transform::ModelTransform;

pub struct TractEncoder {
    state: TypedSimpleState,
    io: EncoderIo,
    /// How this encoder was planned, to plan it again for a batch of frames.
    how: Planning,
    /// The plan for the last batch size other than 1 ([`Encoder::encode_batch`]).
    batched: BatchSlot<TypedSimpleState>,
}

#[derive(Clone)]
struct Planning {
    bundle: Bundle,
    threads: usize,
    patch: bool,
    half: bool,
}

impl TractEncoder {
    /// Loads the bundle's encoder for its input shape, with this crate's faster kernels
    /// swapped in where they compute the same thing ([`super::pool`]).
    pub fn load(bundle: &Bundle, threads: usize) -> Result<Self, BundleError> {
        Self::load_with(bundle, threads, true, false)
    }

    /// Loads the encoder exactly as tract lowers it, with none of our kernels: the baseline
    /// benchmarks and parity tests compare [`Self::load`] with.
    pub fn load_unpatched(bundle: &Bundle, threads: usize) -> Result<Self, BundleError> {
        Self::load_with(bundle, threads, false, false)
    }

    /// Loads the encoder to compute in half precision (f16 weights and activations), as the
    /// GPU runs an fp16 encoder. x86 has no fast f16 kernels, so this is slow here: it is the
    /// CPU reference of the GPU's fp16 arithmetic, for parity tests.
    pub fn load_half(bundle: &Bundle, threads: usize) -> Result<Self, BundleError> {
        Self::load_with(bundle, threads, false, true)
    }

    /// Whether the ONNX file stores its weights as float16 (an fp16 candidate of `vae-ood
    /// quantize`): tract computes it in f32, as the cuda backend does unless asked for f16
    /// (`cuda-fp16`).
    pub fn fp16_weights(&self) -> bool {
        self.io.fp16_weights
    }

    fn load_with(
        bundle: &Bundle,
        threads: usize,
        patch: bool,
        half: bool,
    ) -> Result<Self, BundleError> {
        let how = Planning {
            bundle: bundle.clone(),
            threads,
            patch,
            half,
        };
        let (state, io) = how.plan(1)?;
        Ok(Self {
            state,
            io,
            how,
            batched: vec![],
        })
    }
}

impl Planning {
    /// The encoder typed for `batch` frames per run, optimised and ready to run.
    fn plan(&self, batch: usize) -> Result<(TypedSimpleState, EncoderIo), BundleError> {
        let mut t = TypedEncoder::load_batch(&self.bundle, batch)?;
        let err = model_error(&self.bundle);
        if self.half {
            t = t
                .into_half()
                .map_err(|e| err("cannot translate to half precision", &e))?;
        }
        let TypedEncoder { model, io } = t;
        let mut typed = model;
        if self.patch {
            super::pool::swap_max_pools(&mut typed)
                .map_err(|e| err("cannot swap in the 2x2 max pooling", &e))?;
        }
        let typed = typed
            .into_optimized()
            .map_err(|e| err("cannot optimise for the manifest's input shape", &e))?;
        let state = typed
            .into_runnable_with_options(&run_options(self.threads))
            .and_then(|plan| plan.spawn())
            .map_err(|e| err("cannot plan", &e))?;
        Ok((state, io))
    }
}

/// A bundle's encoder parsed, checked against its manifest and typed for its input shape:
/// what every tract runtime (the CPU's, CUDA's) starts from before lowering it its own way.
pub(crate) struct TypedEncoder {
    pub model: TypedModel,
    pub io: EncoderIo,
}

/// What a loaded encoder knows of its graph whatever runs it: the input shape, where mu and
/// logvar come out, and its cost; every tract runtime's encoder keeps one.
pub(crate) struct EncoderIo {
    /// The input shape of one run: `batch` frames of the manifest's input.
    pub shape: [usize; 4],
    /// Multiply-accumulates per frame.
    pub macs: u64,
    /// The input shape the ONNX file declares, when concrete.
    pub declared: Option<Vec<usize>>,
    pub mu_index: usize,
    pub logvar_index: usize,
    /// The ONNX file stores its weights as float16 (`vae-ood quantize --precision fp16`).
    pub fp16_weights: bool,
    /// The graph computes in f16: inputs are cast to it, outputs back to f32.
    pub half: bool,
}

impl EncoderIo {
    /// Runs one input through `run` (a runtime's state) and takes the posterior from its
    /// outputs.
    pub fn encode(
        &self,
        input: &[f32],
        run: impl FnOnce(TVec<TValue>) -> TractResult<TVec<TValue>>,
    ) -> Result<Posterior, InferenceError> {
        let mut p = self.encode_batch(&[input], run)?;
        Ok(p.remove(0))
    }

    /// Runs `inputs` (as many as the plan's batch) through `run` in one call and splits the
    /// outputs into one posterior per input, in order.
    pub fn encode_batch(
        &self,
        inputs: &[&[f32]],
        run: impl FnOnce(TVec<TValue>) -> TractResult<TVec<TValue>>,
    ) -> Result<Vec<Posterior>, InferenceError> {
        let e = |e: TractError| InferenceError(e.to_string());
        let n = inputs.len();
        if n != self.shape[0] {
            return Err(InferenceError(format!(
                "{n} inputs for a plan of batch {}",
                self.shape[0]
            )));
        }
        let mut x = match inputs {
            [one] => Tensor::from_shape(&self.shape, one),
            _ => Tensor::from_shape(&self.shape, &inputs.concat()),
        }
        .map_err(e)?;
        if self.half {
            x = x.cast_to::<f16>().map_err(e)?.into_owned();
        }
        let out = run(tvec!(x.into())).map_err(e)?;
        let rows = |i: usize| -> Result<Vec<Vec<f32>>, InferenceError> {
            let t = out[i].cast_to::<f32>().map_err(e)?;
            let view = t.try_as_plain_ram().map_err(e)?;
            let all = view.as_slice::<f32>().map_err(e)?;
            Ok(all
                .chunks_exact(all.len() / n)
                .map(<[f32]>::to_vec)
                .collect())
        };
        Ok(rows(self.mu_index)?
            .into_iter()
            .zip(rows(self.logvar_index)?)
            .map(|(mu, logvar)| Posterior { mu, logvar })
            .collect())
    }
}

/// Plans for batches, by size: (size, (state, its [`EncoderIo`])), most recently used first.
pub(crate) type BatchSlot<S> = Vec<(usize, (S, EncoderIo))>;

/// The most batch sizes planned at once: a node batches at most one frame per camera, so sizes
/// run from 2 to the number of cameras; beyond this the least recently used plan is dropped.
const BATCH_PLANS: usize = 8;

/// The state (and its [`EncoderIo`]) that runs batches of `n` frames, planned by `plan` when
/// there is none for that size yet. Plans are kept per size (a node with several cameras
/// batches however many frames are waiting), the most recently used first.
pub(crate) fn batch_state<S>(
    slot: &mut BatchSlot<S>,
    n: usize,
    plan: impl FnOnce() -> Result<(S, EncoderIo), BundleError>,
) -> Result<&mut (S, EncoderIo), InferenceError> {
    match slot.iter().position(|(b, _)| *b == n) {
        Some(i) => slot[..=i].rotate_right(1),
        None => {
            let state =
                plan().map_err(|e| InferenceError(format!("cannot plan a batch of {n}: {e}")))?;
            slot.truncate(BATCH_PLANS - 1);
            slot.insert(0, (n, state));
        }
    }
    Ok(&mut slot[0].1)
}

/// A [`BundleError::Model`] about the bundle's encoder file.
fn model_error(bundle: &Bundle) -> impl Fn(&str, &dyn std::fmt::Display) -> BundleError {
    let path = bundle.encoder_path();
    move |what, e| BundleError::Model {
        path: path.clone(),
        reason: format!("{what}: {e:#}"),
    }
}

impl TypedEncoder {
    /// The encoder typed for `batch` frames per run (the encoders' graphs keep the batch axis
    /// apart: convolutions, then a flatten from axis 1).
    pub fn load_batch(bundle: &Bundle, batch: usize) -> Result<Self, BundleError> {
        let path = bundle.encoder_path();
        let err = model_error(bundle);
        let model = tract_onnx::onnx()
            .model_for_path(&path)
            .map_err(|e| err("cannot parse ONNX", &e))?;

        let inputs = model
            .input_outlets()
            .map_err(|e| err("no inputs", &e))?
            .len();
        if inputs != 1 {
            return Err(err(
                "unsupported graph",
                &format!("the encoder has {inputs} inputs, expected exactly 1 (the image)"),
            ));
        }
        let mut shape = bundle.manifest.encoder_input_shape();
        shape[0] = batch.max(1);
        let declared = model.input_fact(0).map_err(|e| err("no input fact", &e))?;
        let declared: Option<Vec<usize>> = declared
            .shape
            .as_concrete_finite()
            .ok()
            .flatten()
            .map(|d| d.to_vec());
        // Before optimising for the manifest's shape, which would hide a conflicting one.
        if let Some(d) = &declared {
            super::check_declared_shape(d, &bundle.manifest)?;
        }

        let labels: Vec<String> = model
            .output_outlets()
            .map_err(|e| err("no outputs", &e))?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or("").to_string())
            .collect();
        let find = |which: &str, r: &OutputRef| -> Result<usize, BundleError> {
            match r {
                OutputRef::Index { index } if *index < labels.len() => Ok(*index),
                OutputRef::Name { name } if labels.iter().any(|l| l == name) => {
                    Ok(labels.iter().position(|l| l == name).unwrap())
                }
                _ => Err(BundleError::ShapeMismatch(format!(
                    "{which} output {r} is not among the encoder's outputs {labels:?}"
                ))),
            }
        };
        let mu_index = find("mu", &bundle.manifest.outputs.mu)?;
        let logvar_index = find("logvar", &bundle.manifest.outputs.logvar)?;

        let model = model
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_typed())
            .map_err(|e| err("cannot type for the manifest's input shape", &e))?;
        // Before decluttering, which folds the casts of float16 weights into f32 constants.
        let fp16_weights = model.nodes().iter().any(|n| {
            n.op_as::<tract_onnx::tract_core::ops::konst::Const>()
                .is_some_and(|c| c.val().datum_type() == f16::datum_type())
        });
        let model = model
            .into_decluttered()
            .map_err(|e| err("cannot type for the manifest's input shape", &e))?;
        let macs = multiply_accumulates(&model).map_err(|e| err("cannot count MACs", &e))?;
        Ok(Self {
            model,
            io: EncoderIo {
                shape,
                macs: macs / shape[0] as u64,
                declared,
                mu_index,
                logvar_index,
                fp16_weights,
                half: false,
            },
        })
    }

    /// The same encoder computing in half precision: weights, activations, input and outputs
    /// in f16 ([`EncoderIo::encode_batch`] casts at both ends).
    pub fn into_half(mut self) -> TractResult<Self> {
        FloatPrecisionTranslator::new(f32::datum_type(), f16::datum_type())
            .transform(&mut self.model)?;
        self.io.half = true;
        Ok(self)
    }
}

/// Time spent in one node of the optimised graph, summed over profiled runs.
#[derive(Debug, Clone)]
pub struct NodeTime {
    pub name: String,
    /// The optimised op (e.g. `OptMatMul`, `LeakyRelu`), as tract names it.
    pub op: String,
    pub seconds: f64,
}

impl TractEncoder {
    /// Runs the encoder `runs` times on `input`, timing every node of the optimised graph:
    /// where an encoder's time goes (`vae-ood bench-encoders --profile`).
    pub fn profile(&mut self, input: &[f32], runs: usize) -> Result<Vec<NodeTime>, InferenceError> {
        let e = |e: TractError| InferenceError(e.to_string());
        let model = self.state.model().clone();
        let mut times = vec![0f64; model.nodes().len()];
        for _ in 0..runs {
            let x = Tensor::from_shape(&self.io.shape, input).map_err(e)?;
            self.state
                .run_plan_with_eval(tvec!(x.into()), |ctx, state, node, inputs| {
                    let t = std::time::Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                    times[node.id] += t.elapsed().as_secs_f64();
                    r
                })
                .map_err(e)?;
        }
        Ok(model
            .nodes()
            .iter()
            .zip(times)
            .map(|(n, seconds)| NodeTime {
                name: n.name.clone(),
                op: n.op.name().to_string(),
                seconds,
            })
            .collect())
    }
}

impl Encoder for TractEncoder {
    fn encode(&mut self, input: &[f32]) -> Result<Posterior, InferenceError> {
        self.io.encode(input, |x| self.state.run(x))
    }

    /// Several frames in one run of a plan for that batch size (planned at the first such
    /// call, then kept while the batch size stays the same).
    fn encode_batch(&mut self, inputs: &[&[f32]]) -> Result<Vec<Posterior>, InferenceError> {
        let n = inputs.len();
        if n <= 1 {
            return inputs.iter().map(|x| self.encode(x)).collect();
        }
        let how = &self.how;
        let (state, io) = batch_state(&mut self.batched, n, || how.plan(n))?;
        io.encode_batch(inputs, |x| state.run(x))
    }

    fn backend(&self) -> &'static str {
        "tract"
    }

    fn declared_input_shape(&self) -> Option<Vec<usize>> {
        self.io.declared.clone()
    }

    fn multiply_accumulates(&self) -> Option<u64> {
        Some(self.io.macs)
    }
}

/// One thread runs inline; more get tract's multithreaded executor.
fn run_options(threads: usize) -> RunOptions {
    let mut options = RunOptions::default();
    if threads > 1 {
        options.executor = Some(multithread::Executor::multithread(threads));
    }
    options
}

/// Multiply-accumulates per run of a typed model, as tract's own cost model counts them
/// (convolutions, matrix products).
fn multiply_accumulates(model: &TypedModel) -> TractResult<u64> {
    let mut macs = 0u64;
    for node in model.eval_order()? {
        let node = &model.nodes()[node];
        let inputs = model.node_input_facts(node.id)?;
        for (cost, n) in node.op.cost(&inputs)? {
            if matches!(cost, tract_onnx::tract_core::ops::Cost::FMA(_)) {
                macs += u64::try_from(n.to_i64()?).unwrap_or(0);
            }
        }
    }
    Ok(macs)
}

/// The achievable single-precision throughput of tract's matrix kernels on this machine, in
/// multiply-accumulates per second: a `size`x`size` by `size`x`size` product through the same
/// optimiser and executor an encoder gets (best of `runs`). The roofline `vae-ood
/// bench-encoders` sets each encoder's throughput against.
pub fn gemm_peak(size: usize, threads: usize, runs: usize) -> TractResult<f64> {
    use tract_onnx::tract_core::ops::einsum::EinSum;
    let mut model = TypedModel::default();
    let a = model.add_source("a", f32::fact([size, size]))?;
    let b = Tensor::from_shape(
        &[size, size],
        &(0..size * size)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect::<Vec<f32>>(),
    )?;
    let b = model.add_const("b", b)?;
    let c = model.wire_node(
        "gemm",
        EinSum::new("mk,kn->mn".parse()?, f32::datum_type()),
        &[a, b],
    )?;
    model.select_output_outlets(&c)?;
    let mut state = model
        .into_optimized()?
        .into_runnable_with_options(&run_options(threads))?
        .spawn()?;
    let x: TValue = Tensor::from_shape(&[size, size], &vec![0.5f32; size * size])?.into();
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) + 1 {
        let t = std::time::Instant::now();
        state.run(tvec!(x.clone()))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((size * size * size) as f64 / best)
}
