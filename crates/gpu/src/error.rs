//! The one error type of the GPU runtime.
//!
//! Every way the runtime can fail on a machine without a GPU, a driver, NVRTC or
//! the CUDA headers is a variant here: callers decide whether that means "skip"
//! or "fail", the runtime never panics on it.

use std::path::PathBuf;

/// Errors of the GPU runtime. Absence of a GPU, driver or NVRTC is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The CUDA driver library could not be loaded (no GPU machine, or no driver).
    #[error("no CUDA driver (libcuda.so.1) could be loaded: {0}")]
    NoDriver(String),
    /// The NVRTC library could not be loaded (`.ci/install-cuda.sh`, or `SSM_NVRTC_LIB_DIR`).
    #[error("no NVRTC library (libnvrtc.so.13) could be loaded: {0}")]
    NoNvrtc(String),
    /// The driver reports no CUDA device, or none with the requested ordinal.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// NVRTC rejected a kernel source.
    #[error("compiling {file}:\n{log}")]
    Compile {
        /// The kernel file NVRTC was compiling.
        file: String,
        /// NVRTC's log.
        log: String,
    },
    /// A CUDA driver call failed (its error, as the driver names it).
    #[error("CUDA driver call failed: {0}")]
    Driver(String),
    /// A kernel file named by a [`KernelSource`](crate::KernelSource) is not under the source root.
    #[error("kernel source {0} not found")]
    MissingSource(String),
    /// The CUDA toolkit headers (`cuda_bf16.h`, `cuda_fp16.h`, ...) that NVRTC 13
    /// no longer bundles were not found in any of the searched directories.
    #[error(
        "CUDA toolkit headers (cuda_bf16.h) not found; searched: {}. Set SSM_CUDA_INCLUDE \
         to a directory holding them, or run .ci/install-cuda.sh",
        display_paths(.searched)
    )]
    NoToolkitHeaders {
        /// Every directory looked in, in order.
        searched: Vec<PathBuf>,
    },
    /// An `#include "..."` in a kernel source names no file under `kernels/`.
    #[error("{from}:{line}: #include \"{include}\" not found under kernels/ ({tried})")]
    MissingInclude {
        /// The file holding the `#include`.
        from: String,
        /// Its line number.
        line: usize,
        /// The path as written.
        include: String,
        /// The paths tried.
        tried: String,
    },
    /// The kernel was compiled but has no entry point of that name (`extern "C"` missing?).
    #[error(
        "kernel {file} has no entry point `{entry}` (is it declared extern \"C\" __global__?)"
    )]
    MissingEntry {
        /// The kernel file.
        file: String,
        /// The entry point asked for.
        entry: String,
    },
    /// Reading or writing the on-disk compile cache or a source file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done (`reading budget file`, ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file (the kernel budgets) could not be read or parsed.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The kernel pack (`SSM_KERNEL_PACK`) has no module for this variant and
    /// this process cannot compile one (no NVRTC, or pack-only mode).
    #[error(transparent)]
    NotInPack(Box<crate::pack::PackMiss>),
    /// A kernel pack's manifest or one of its modules is unreadable or corrupt.
    #[error("kernel pack {path}: {message}")]
    Pack {
        /// The pack directory or the file in it.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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
