//! Training frames in memory: every frame of the given drives, decoded and preprocessed by the
//! node's own code, so the detector trains on exactly the tensors it will score.

use crate::drives::for_each_frame;
use std::path::PathBuf;
use vae_ood_core::flow::FlowSpec;
use vae_ood_core::preprocess::{preprocess, InputSpec};

/// Preprocessed frames, `frame_len` values each, in drive order.
pub struct FrameSet {
    pub data: Vec<f32>,
    pub frame_len: usize,
    /// (drive, number of frames kept) in load order.
    pub drives: Vec<(PathBuf, usize)>,
}

impl FrameSet {
    /// Loads every `stride`-th frame of `drives` (image folders or bags), starting with the
    /// first. `tick` is called once per frame read.
    pub fn load(
        drives: &[PathBuf],
        spec: &InputSpec,
        stride: usize,
        tick: &dyn Fn(),
    ) -> Result<Self, crate::Error> {
        let frame_len: usize = spec.shape().iter().product();
        let mut set = FrameSet {
            data: vec![],
            frame_len,
            drives: vec![],
        };
        for drive in drives {
            let mut i = 0;
            let mut kept = 0;
            for_each_frame(drive, &mut |img| {
                if i % stride.max(1) == 0 {
                    set.data.extend(preprocess(img, spec));
                    kept += 1;
                }
                i += 1;
                tick();
                Ok(())
            })?;
            set.drives.push((drive.clone(), kept));
        }
        Ok(set)
    }

    /// The flow detector's training inputs: every drive's frames through the detector's own
    /// flow stack ([`FlowSpec::stack`], frames taken as consecutive), every `stride`-th warm
    /// stack as one sample ([`FlowSpec::encoder_input`]).
    pub fn load_flow(
        drives: &[PathBuf],
        spec: &FlowSpec,
        stride: usize,
        tick: &dyn Fn(),
    ) -> Result<Self, crate::Error> {
        let frame_len: usize = spec.encoder_shape().iter().product();
        let mut set = FrameSet {
            data: vec![],
            frame_len,
            drives: vec![],
        };
        for drive in drives {
            let mut stack = spec.stack();
            let (mut warm, mut kept) = (0, 0);
            for_each_frame(drive, &mut |img| {
                let s = stack
                    .push(img.into(), None)
                    .map_err(|e| crate::Error::Drive(format!("{}: {e}", drive.display())))?;
                if let Some(s) = s {
                    if warm % stride.max(1) == 0 {
                        set.data.extend(spec.encoder_input(&s));
                        kept += 1;
                    }
                    warm += 1;
                }
                tick();
                Ok(())
            })?;
            set.drives.push((drive.clone(), kept));
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.frame_len.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frames at `indices`, concatenated.
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(indices.len() * self.frame_len);
        for &i in indices {
            out.extend_from_slice(&self.data[i * self.frame_len..(i + 1) * self.frame_len]);
        }
        out
    }
}

/// Number of frames in the drives, for a progress bar.
pub fn count_frames(drives: &[PathBuf]) -> u64 {
    let inputs: Vec<_> = drives
        .iter()
        .map(|d| crate::eval::Input {
            path: d.clone(),
            label: crate::eval::Label::Id,
        })
        .collect();
    crate::eval::count_frames(&inputs, None) as u64
}
