//! A fast 2x2, stride-2 max pooling for tract, swapped in at load time.
//!
//! The paper's encoder family pools after every convolution. tract lowers ONNX `MaxPool` to a
//! generic patch-walking kernel (`OptMaxPool`) that took 45 % of the default encoder's time
//! on this project's machine (`vae-ood bench-encoders --profile`), as much as all its
//! convolutions. For the one geometry the family uses (2x2 window, stride 2, NCHW, no
//! padding that matters, even height and width) the result is the maximum of four
//! neighbours, which a plain loop over rows computes at memory speed. [`swap_max_pools`]
//! replaces exactly those nodes and leaves every other pooling to tract.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Max pooling over 2x2 windows with stride 2 on an NCHW f32 tensor of even height and width.
/// NaN handling follows `f32::max` (a NaN loses against a number); an encoder that produces
/// NaN is caught after inference either way.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct MaxPool2x2;

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "MaxPool2x2".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let &[n, c, h, w] = x.shape() else {
            bail!("MaxPool2x2 expects NCHW, got shape {:?}", x.shape());
        };
        let (oh, ow) = (h / 2, w / 2);
        let mut out = Tensor::zero::<f32>(&[n, c, oh, ow])?;
        {
            let src = x.try_as_plain_ram()?;
            let src = src.as_slice::<f32>()?;
            let mut dst = out.try_as_plain_ram_mut()?;
            let dst = dst.as_slice_mut::<f32>()?;
            pool_planes(src, dst, h, w);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        ensure!(s.rank() == 4, "MaxPool2x2 expects a rank-4 input");
        Ok(tvec!(f32::fact([
            s[0].clone(),
            s[1].clone(),
            s[2].clone() / 2,
            s[3].clone() / 2
        ])))
    }

    as_op!();
}

/// Pools every `h`x`w` plane of `src` into the `h/2`x`w/2` planes of `dst`.
fn pool_planes(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    let (oh, ow) = (h / 2, w / 2);
    for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
        for (y, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let r0 = &plane[2 * y * w..][..2 * ow];
            let r1 = &plane[(2 * y + 1) * w..][..2 * ow];
            for ((o, a), b) in out_row
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                *o = a[0].max(a[1]).max(b[0].max(b[1]));
            }
        }
    }
}

/// Replaces every `MaxPool` node of a typed model that [`MaxPool2x2`] computes identically
/// (2x2 window, stride 2, no dilation, NCHW, no index output, zero padding, even concrete
/// height and width, f32) and returns how many it replaced.
pub fn swap_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(pool) = node.op_as::<MaxPool>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        let spec = &pool.pool_spec;
        let zero = |v: &[usize]| v.iter().all(|&p| p == 0);
        let unpadded = match &spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => {
                zero(b) && zero(a)
            }
            _ => false,
        };
        let even = fact
            .shape
            .as_concrete()
            .is_some_and(|s| s.len() == 4 && s[2] % 2 == 0 && s[3] % 2 == 0);
        if pool.with_index_outputs.is_some()
            || fact.datum_type != f32::datum_type()
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.as_slice() != [2, 2]
            || spec.strides.as_deref() != Some(&[2, 2][..])
            || spec.dilations.as_deref().is_some_and(|d| d != [1, 1])
            || !unpadded
            || !even
        {
            continue;
        }
        // The shape tract's own op gives must be ours too.
        let theirs = pool.output_facts(&[fact])?;
        let ours = MaxPool2x2.output_facts(&[fact])?;
        if theirs[0].shape != ours[0].shape {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, MaxPool2x2)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_each_plane_by_its_2x2_maxima() {
        // Two 2x4 planes.
        let src = [
            1.0, 5.0, -1.0, -2.0, //
            3.0, 2.0, -3.0, -0.5, //
            0.0, 0.0, 9.0, 8.0, //
            0.0, 7.0, 8.0, 9.5,
        ];
        let mut dst = [0f32; 4];
        pool_planes(&src, &mut dst, 2, 4);
        assert_eq!(dst, [5.0, -0.5, 7.0, 9.5]);
    }
}
