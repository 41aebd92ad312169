//! GPU runtime on cudarc: device context and stream, NVRTC compile with an on-disk
//! cache, hot reload of kernel sources, typed (poisonable) buffers, CUDA-event
//! timing and per-kernel resource reports.
//!
//! API SURFACE (agreed between the kernel crates; implementations may add to it but
//! not change these signatures without updating every caller):
//!
//! ```ignore
//! let gpu = Gpu::new(0)?;                                   // typed error without GPU/driver/NVRTC
//! static SRC: KernelSource = kernel_source!("mamba1/decode.cu");
//! let k = gpu.kernel(&SRC, "mamba1_decode_f32", &[("N", "16".into())])?;
//! let x = gpu.upload(&host)?;   let mut out = gpu.alloc_poisoned::<f32>(n)?;
//! unsafe { gpu.stream().launch_builder(&k.func).arg(&x).arg(&mut out).launch(cfg) }?;
//! let host_out = gpu.download(&out)?;
//! let t = gpu.time(5, 50, || { /* launch */ Ok(()) })?;   // CUDA events, median
//! ```

use std::sync::Arc;

pub use cudarc;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr};

/// Errors of the GPU runtime. Absence of a GPU, driver or NVRTC is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no CUDA driver (libcuda.so.1) could be loaded: {0}")]
    NoDriver(String),
    #[error("no NVRTC library (libnvrtc.so.13) could be loaded: {0}")]
    NoNvrtc(String),
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("compiling {file}:\n{log}")]
    Compile { file: String, log: String },
    #[error("CUDA driver call failed: {0}")]
    Driver(String),
    #[error("kernel source {0} not found")]
    MissingSource(String),
}

impl From<GpuError> for ssm_core::SsmError {
    fn from(e: GpuError) -> Self {
        ssm_core::SsmError::Backend(e.to_string())
    }
}

/// A kernel source file under `kernels/`, embedded at build time and optionally
/// re-read from disk (hot reload, see the crate README / `SSM_KERNEL_DIR`).
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// Path relative to `kernels/`, e.g. `"mamba1/decode.cu"`.
    pub path: &'static str,
    /// The text embedded with `include_str!`.
    pub embedded: &'static str,
}

/// Embed `kernels/<path>` from a crate directly under `crates/`.
#[macro_export]
macro_rules! kernel_source {
    ($path:literal) => {
        $crate::KernelSource {
            path: $path,
            embedded: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../kernels/",
                $path
            )),
        }
    };
}

/// Resource use of a loaded kernel, read through function attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelResources {
    pub registers: u32,
    pub static_smem_bytes: u32,
    pub local_bytes: u32,
    pub max_threads_per_block: u32,
    pub max_dynamic_smem_bytes: u32,
}

/// A compiled, loaded kernel entry point.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub func: CudaFunction,
    pub name: String,
    pub resources: KernelResources,
}

/// Median and spread of CUDA-event timings, in milliseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples: Vec<f64>,
}

/// Element types that can live in device buffers.
pub trait DeviceElement: ssm_core::Element + DeviceRepr + cudarc::driver::ValidAsZeroBits {
    /// A value written over fresh output buffers so that unwritten elements are caught.
    const POISON: Self;
}

/// One device, its context and the stream every launch goes to.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Gpu {
    pub fn new(_ordinal: usize) -> Result<Self, GpuError> {
        todo!("gpu helper implements this")
    }
    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Compile (through the on-disk cache) and load `entry` from `src` with `-D` defines.
    pub fn kernel(
        &self,
        _src: &KernelSource,
        _entry: &str,
        _defines: &[(&str, String)],
    ) -> Result<Kernel, GpuError> {
        todo!("gpu helper implements this")
    }
    pub fn upload<T: DeviceElement>(&self, _host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        todo!("gpu helper implements this")
    }
    /// Allocate `len` elements filled with `T::POISON`.
    pub fn alloc_poisoned<T: DeviceElement>(&self, _len: usize) -> Result<CudaSlice<T>, GpuError> {
        todo!("gpu helper implements this")
    }
    pub fn download<T: DeviceElement>(&self, _dev: &CudaSlice<T>) -> Result<Vec<T>, GpuError> {
        todo!("gpu helper implements this")
    }
    /// Time `launch` with CUDA events: `warmup` untimed runs, then `iters` timed ones.
    pub fn time(
        &self,
        _warmup: usize,
        _iters: usize,
        _launch: impl FnMut() -> Result<(), GpuError>,
    ) -> Result<Timing, GpuError> {
        todo!("gpu helper implements this")
    }
}

impl DeviceElement for f32 {
    const POISON: Self = f32::NAN;
}
impl DeviceElement for f64 {
    const POISON: Self = f64::NAN;
}
impl DeviceElement for half::f16 {
    const POISON: Self = half::f16::NAN;
}
impl DeviceElement for half::bf16 {
    const POISON: Self = half::bf16::NAN;
}
