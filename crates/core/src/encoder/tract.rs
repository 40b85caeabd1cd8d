//! The CPU backend: tract-onnx, optimised once at load time for the bundle's input shape.
//! The model checks every backend gets run in [`super::check_encoder`].

use super::{Encoder, InferenceError, Posterior};
use crate::bundle::{Bundle, BundleError, OutputRef};
use tract_onnx::prelude::*;

pub struct TractEncoder {
    plan: TypedSimplePlan,
    shape: [usize; 4],
    declared: Option<Vec<usize>>,
    mu_index: usize,
    logvar_index: usize,
}

type TypedSimplePlan = Arc<TypedRunnableModel>;

impl TractEncoder {
    pub fn load(bundle: &Bundle, threads: usize) -> Result<Self, BundleError> {
        let path = bundle.encoder_path();
        let err = |what: &str, e: &dyn std::fmt::Display| BundleError::Model {
            path: path.clone(),
            reason: format!("{what}: {e:#}"),
        };
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
        let shape = bundle.manifest.input.shape();
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

        let typed = model
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .map_err(|e| err("cannot optimise for the manifest's input shape", &e))?;
        let mut options = RunOptions::default();
        if threads > 1 {
            options.executor = Some(multithread::Executor::multithread(threads));
        }
        let plan = typed
            .into_runnable_with_options(&options)
            .map_err(|e| err("cannot plan", &e))?;
        Ok(Self {
            plan,
            shape,
            declared,
            mu_index,
            logvar_index,
        })
    }
}

impl Encoder for TractEncoder {
    fn encode(&mut self, input: &[f32]) -> Result<Posterior, InferenceError> {
        let e = |e: TractError| InferenceError(e.to_string());
        let x = Tensor::from_shape(&self.shape, input).map_err(e)?;
        let out = self.plan.run(tvec!(x.into())).map_err(e)?;
        let take = |i: usize| -> Result<Vec<f32>, InferenceError> {
            Ok(out[i]
                .try_as_plain_ram()
                .map_err(e)?
                .as_slice::<f32>()
                .map_err(e)?
                .to_vec())
        };
        Ok(Posterior {
            mu: take(self.mu_index)?,
            logvar: take(self.logvar_index)?,
        })
    }

    fn backend(&self) -> &'static str {
        "tract"
    }

    fn declared_input_shape(&self) -> Option<Vec<usize>> {
        self.declared.clone()
    }
}
