//! Model checks every backend gets before a detector reports ready: the declared input shape,
//! one dry run, and the latent count. A bundle that fails them fails at load time with a
//! message naming the fix, never mid-drive.

use super::Encoder;
use crate::bundle::{BundleError, Manifest};

/// A concrete input shape declared by the model must agree with the manifest's input spec.
pub fn check_declared_shape(declared: &[usize], manifest: &Manifest) -> Result<(), BundleError> {
    let shape = manifest.encoder_input_shape();
    if declared != shape {
        return Err(BundleError::ShapeMismatch(format!(
            "the ONNX input is {declared:?} but the manifest's input spec gives {shape:?} (check input width/height, channel_order and layout)"
        )));
    }
    Ok(())
}

/// Runs the checks on a loaded encoder: declared shape, then one dry run on a zero input,
/// whose output sizes must match `latents.count`.
pub fn check_encoder(encoder: &mut dyn Encoder, manifest: &Manifest) -> Result<(), BundleError> {
    if let Some(declared) = encoder.declared_input_shape() {
        check_declared_shape(&declared, manifest)?;
    }
    let zeros = vec![0f32; manifest.encoder_input_shape().iter().product()];
    let post = encoder.encode(&zeros).map_err(BundleError::DryRun)?;
    let n = manifest.latents.count;
    if post.mu.len() != n || post.logvar.len() != n {
        return Err(BundleError::ShapeMismatch(format!(
            "the encoder gives {} mu and {} logvar values per frame; the manifest says latents.count = {n}",
            post.mu.len(),
            post.logvar.len()
        )));
    }
    Ok(())
}
