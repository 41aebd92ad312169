//! GPU runtime on cudarc: device context and stream, NVRTC compile with an on-disk
//! cache, hot reload of kernel sources, typed (poisonable) buffers, CUDA-event
//! timing and per-kernel resource reports (with and without a GPU).
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
//!
//! Without a GPU: [`Compiler`] + [`report_variants`] compile [`KernelVariant`]s
//! with NVRTC alone and report ptxas's resource use; [`budget`] checks them
//! against `kernels/budgets.toml`. Tests use [`test_gpu_or_skip`].
//!
//! [`decode`]: the decode-step launcher of both families, generic over
//! [`decode::DecodeFamily`] (each kernel crate supplies its family).
//!
//! Environment: `SSM_KERNEL_DIR` (hot reload), `SSM_KERNEL_CACHE` (cache dir or
//! `off`), `SSM_CUDA_INCLUDE` (toolkit headers), `SSM_NVRTC_LIB_DIR`,
//! `SSM_CUDA_ARCH` (`sm_80`/`sm_86`/`sm_89`/`sm_90`/`sm_90a`/`compute_90`),
//! `SSM_NVRTC_FLAGS`, `SSM_KERNEL_PACK` (kernels compiled ahead of time, see
//! [`pack`]), `SSM_KERNEL_PACK_ONLY`, `SSM_REQUIRE_GPU`, `SSM_ALLOW_NO_NVRTC`.
//! See the crate README.

#![warn(missing_docs)]

pub mod budget;
pub mod cache;
pub mod compile;
pub mod decode;
mod device;
mod error;
pub mod limits;
pub mod nvrtc;
pub mod pack;
pub mod probes;
pub mod ptxas;
pub mod selftest;
pub mod source;
pub mod testing;
pub mod timing;
pub mod toolkit;
pub mod tree_hash;
pub mod variants;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_kernels.rs"));
}

pub use cudarc;

pub use compile::{CompileOutput, Compiler, ModuleOrigin};
pub use device::{ContextId, DeviceElement, Gpu, Kernel, KernelResources};
pub use embedded::{EMBEDDED_FILES, KERNELS_HASH};
pub use error::GpuError;
pub use limits::DeviceLimits;
pub use nvrtc::Arch;
pub use pack::KernelPack;
pub use ptxas::PtxasFunction;
pub use source::{KernelSource, SourceRoot};
pub use testing::{
    precompile, test_compiler_or_skip, test_cxx_or_skip, test_gpu_or_skip, test_seed,
};
pub use timing::Timing;
pub use variants::{report_variant, report_variants, KernelVariant, VariantReport};
