//! The NVIDIA GPU backend: tract's own CUDA runtime (`tract-cuda`) runs the encoder that
//! [`super::tract::TypedEncoder`] types for the CPU, so both backends start from one graph and
//! differ only in how it is lowered. cudarc finds the device and reports it (name, memory,
//! driver). Every CUDA library is loaded at run time: this builds without CUDA, and a machine
//! without a usable GPU gets [`CudaUnavailable`], naming what is missing and how to fix it.

use super::tract::{batch_state, BatchSlot, EncoderIo, TypedEncoder};
use super::{Encoder, InferenceError, Posterior};
use crate::bundle::{Bundle, BundleError};
use tract_onnx::prelude::*;

/// The CUDA API level this build binds (cargo feature `cuda`: 12.6, `cuda13`: 13.0): any driver
/// of this level or newer runs it, with the CUDA libraries of its major version.
#[cfg(not(feature = "cuda13"))]
pub const CUDA_API: (i32, i32) = (12, 6);
#[cfg(feature = "cuda13")]
pub const CUDA_API: (i32, i32) = (13, 0);

/// What makes the GPU unusable here, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaUnavailable {
    #[error("the CUDA backend needs these libraries, which cannot be loaded: {missing}. {fix}")]
    Libraries { missing: String, fix: &'static str },
    #[error("the NVIDIA driver reports CUDA {}.{}, older than the CUDA {}.{} API this build binds: upgrade the driver (or use a build bound to a lower CUDA level)", found.0, found.1, CUDA_API.0, CUDA_API.1)]
    DriverTooOld { found: (i32, i32) },
    #[error("the NVIDIA driver loads but finds no usable GPU ({0}): check `nvidia-smi`, and that the process can see /dev/nvidia* (containers: --gpus all)")]
    NoDevice(String),
}

/// How to install each library the backend loads.
#[cfg(not(feature = "cuda13"))]
const FIX: &str = "This build binds CUDA 12 (cargo feature cuda): install the NVIDIA driver (libcuda.so.1) and CUDA 12 with cuDNN 9 (on Jetson: JetPack 6), or the PyPI wheels nvidia-cuda-runtime-cu12, nvidia-cuda-nvrtc-cu12, nvidia-cublas-cu12 and nvidia-cudnn-cu12 with their lib folders on LD_LIBRARY_PATH. Or use backend 'tract' (CPU), or 'auto' to fall back to it.";
#[cfg(feature = "cuda13")]
const FIX: &str = "This build binds CUDA 13 (cargo feature cuda13): install the NVIDIA driver (libcuda.so.1) and CUDA 13 with cuDNN 9, or the PyPI wheels of the CUDA 13 runtime, NVRTC, cuBLAS and cuDNN with their lib folders on LD_LIBRARY_PATH. Or use backend 'tract' (CPU), or 'auto' to fall back to it.";

/// The GPU the encoder runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaDevice {
    pub name: String,
    /// CUDA API version the driver supports (major, minor).
    pub driver: (i32, i32),
    pub total_memory: usize,
}

impl std::fmt::Display for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} MiB, CUDA driver {}.{})",
            self.name,
            self.total_memory >> 20,
            self.driver.0,
            self.driver.1
        )
    }
}

/// Every CUDA library the backend needs that cannot be loaded here (dlopen probes, no side
/// effect), in the order a fix would go: driver first.
pub fn missing_libraries() -> Vec<&'static str> {
    // SAFETY: cudarc's `is_culib_present` only tries to dlopen the library and caches it.
    let probes: [(&str, bool); 5] = unsafe {
        [
            (
                "libcuda (NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            (
                "libcudart (CUDA runtime)",
                cudarc::runtime::sys::is_culib_present(),
            ),
            ("libnvrtc (NVRTC)", cudarc::nvrtc::sys::is_culib_present()),
            (
                "libcublas (cuBLAS)",
                cudarc::cublas::sys::is_culib_present(),
            ),
            ("libcudnn (cuDNN)", cudarc::cudnn::sys::is_culib_present()),
        ]
    };
    probes
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect()
}

/// The first GPU, if the driver, the libraries and a device are all there.
pub fn probe() -> Result<CudaDevice, CudaUnavailable> {
    let missing = missing_libraries();
    if !missing.is_empty() {
        return Err(CudaUnavailable::Libraries {
            missing: missing.join(", "),
            fix: FIX,
        });
    }
    let mut version = 0i32;
    // SAFETY: the driver library is present (probed above); the call only writes `version`.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if rc != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(CudaUnavailable::NoDevice(format!(
            "cuDriverGetVersion: {rc:?}"
        )));
    }
    let driver = (version / 1000, (version % 1000) / 10);
    if driver < CUDA_API {
        return Err(CudaUnavailable::DriverTooOld { found: driver });
    }
    let no_device = |e: cudarc::driver::DriverError| CudaUnavailable::NoDevice(e.to_string());
    if cudarc::driver::CudaContext::device_count().map_err(no_device)? < 1 {
        return Err(CudaUnavailable::NoDevice("0 devices".into()));
    }
    let ctx = cudarc::driver::CudaContext::new(0).map_err(no_device)?;
    Ok(CudaDevice {
        name: ctx.name().map_err(no_device)?,
        driver,
        total_memory: ctx.total_mem().map_err(no_device)?,
    })
}

/// The encoder on the GPU: convolutions, GEMMs and activations run as tract-cuda kernels; an op
/// it does not translate stays on the CPU, with copies around it. `half` (backend `cuda-fp16`)
/// computes in f16; otherwise f32, also for weights stored in float16 (`vae-ood quantize
/// --precision fp16`), which tract widens at load time.
pub struct CudaEncoder {
    state: Box<dyn State>,
    io: EncoderIo,
    device: CudaDevice,
    bundle: Bundle,
    half: bool,
    /// The plan for the last batch size other than 1 ([`Encoder::encode_batch`]).
    batched: BatchSlot<Box<dyn State>>,
}

impl CudaEncoder {
    pub fn load(bundle: &Bundle, half: bool) -> Result<Self, BundleError> {
        let device = probe().map_err(|e| BundleError::Backend(e.to_string()))?;
        let (state, io) = prepare(bundle, &device, 1, half)?;
        Ok(Self {
            state,
            io,
            device,
            bundle: bundle.clone(),
            half,
            batched: vec![],
        })
    }

    /// Whether the encoder computes in half precision.
    pub fn is_half(&self) -> bool {
        self.io.half
    }
}

/// The bundle's encoder typed for `batch` frames per run and lowered to the GPU.
fn prepare(
    bundle: &Bundle,
    device: &CudaDevice,
    batch: usize,
    half: bool,
) -> Result<(Box<dyn State>, EncoderIo), BundleError> {
    let mut t = TypedEncoder::load_batch(bundle, batch)?;
    let err = |what: &str, e: TractError| {
        BundleError::Backend(format!(
            "cuda backend on {device}: {what} {}: {e:#}",
            bundle.encoder_path().display()
        ))
    };
    if half {
        t = t
            .into_half()
            .map_err(|e| err("cannot translate to half precision", e))?;
    }
    // Links tract-cuda (its runtime registers itself by name) and checks the libraries the
    // way its runtime will.
    tract_cuda::utils::ensure_cuda_runtime_dependencies("tract-cuda")
        .map_err(|e| err("cannot start tract-cuda for", e))?;
    let runtime = tract_onnx::tract_core::runtime::runtime_for_name("cuda")
        .map_err(|e| err("no CUDA runtime for", e))?
        .ok_or_else(|| {
            BundleError::Backend("tract-cuda's runtime is not registered in this build".into())
        })?;
    let state = runtime
        .prepare(t.model)
        .and_then(|plan| plan.spawn())
        .map_err(|e| err("cannot prepare", e))?;
    Ok((state, t.io))
}

impl Encoder for CudaEncoder {
    fn encode(&mut self, input: &[f32]) -> Result<Posterior, InferenceError> {
        self.io.encode(input, |x| self.state.run(x))
    }

    /// Several frames in one launch sequence (planned at the first call of a batch size, then
    /// kept while it stays the same): the GPU's time per run barely grows with the batch.
    fn encode_batch(&mut self, inputs: &[&[f32]]) -> Result<Vec<Posterior>, InferenceError> {
        let n = inputs.len();
        if n <= 1 {
            return inputs.iter().map(|x| self.encode(x)).collect();
        }
        let (bundle, device, half) = (&self.bundle, &self.device, self.half);
        let (state, io) = batch_state(&mut self.batched, n, || prepare(bundle, device, n, half))?;
        io.encode_batch(inputs, |x| state.run(x))
    }

    fn backend(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        if self.io.half {
            format!("{} in fp16", self.device)
        } else {
            self.device.to_string()
        }
    }

    fn declared_input_shape(&self) -> Option<Vec<usize>> {
        self.io.declared.clone()
    }

    fn multiply_accumulates(&self) -> Option<u64> {
        Some(self.io.macs)
    }
}
