//! The one error type of the GPU runtime.
//!
//! Every way the runtime can fail on a machine without a GPU, a driver, NVRTC or
//! the CUDA headers is a variant here: callers decide whether that means "skip"
//! or "fail", the runtime never panics on it.

use std::path::PathBuf;

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
    /// The CUDA toolkit headers (`cuda_bf16.h`, `cuda_fp16.h`, ...) that NVRTC 13
    /// no longer bundles were not found in any of the searched directories.
    #[error(
        "CUDA toolkit headers (cuda_bf16.h) not found; searched: {}. Set SSM_CUDA_INCLUDE \
         to a directory holding them, or run .ci/install-cuda.sh",
        display_paths(.searched)
    )]
    NoToolkitHeaders { searched: Vec<PathBuf> },
    /// An `#include "..."` in a kernel source names no file under `kernels/`.
    #[error("{from}:{line}: #include \"{include}\" not found under kernels/ ({tried})")]
    MissingInclude {
        from: String,
        line: usize,
        include: String,
        tried: String,
    },
    /// The kernel was compiled but has no entry point of that name (`extern "C"` missing?).
    #[error(
        "kernel {file} has no entry point `{entry}` (is it declared extern \"C\" __global__?)"
    )]
    MissingEntry { file: String, entry: String },
    /// Reading or writing the on-disk compile cache or a source file failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file (the kernel budgets) could not be read or parsed.
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    /// The kernel pack (`SSM_KERNEL_PACK`) has no module for this variant and
    /// this process cannot compile one (no NVRTC, or pack-only mode).
    #[error(transparent)]
    NotInPack(Box<crate::pack::PackMiss>),
    /// A kernel pack's manifest or one of its modules is unreadable or corrupt.
    #[error("kernel pack {path}: {message}")]
    Pack { path: PathBuf, message: String },
    /// A caller passed an argument the runtime cannot act on (zero timing iterations, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(nothing)".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<cudarc::driver::DriverError> for GpuError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::Driver(format!("{e:?}"))
    }
}

impl From<GpuError> for ssm_core::SsmError {
    fn from(e: GpuError) -> Self {
        ssm_core::SsmError::Backend(e.to_string())
    }
}

impl GpuError {
    /// True when the error says this machine has no usable GPU stack (driver,
    /// device, NVRTC or headers), as opposed to a bug in a kernel or a caller.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            GpuError::NoDriver(_)
                | GpuError::NoNvrtc(_)
                | GpuError::NoDevice(_)
                | GpuError::NoToolkitHeaders { .. }
        )
    }
}
