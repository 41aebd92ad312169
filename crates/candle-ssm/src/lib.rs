//! candle ops for the state-space-model kernels of this workspace.
//!
//! - [`ssd`]: the Mamba-2 SSD forward ([`SsdForward`]) with its backward
//!   through candle's autograd.
//! - [`scan`]: the Mamba-1 selective scan ([`SelectiveScan`]) with its backward.
//! - [`decode`]: the decode steps of both families ([`Mamba2Step`],
//!   [`Mamba1Step`]), forward only.
//! - [`reference`]: the SSD and the Mamba-1 scan written with plain candle
//!   tensor ops (the sequential recurrence), for tests and for checking a port.
//!
//! CPU tensors run the f32 CPU ports (`Backend::Cpu` of `mamba2_ssd` and
//! `mamba1_scan`). With the `cuda` feature, CUDA tensors run our CUDA kernels on
//! candle's own stream (`ssm_gpu::Gpu::from_stream`), reading the inputs
//! zero-copy from candle's storage (layout offsets honoured); see `cuda.rs`.
//! Element types: f32, f16 and bf16 for the sequence tensors; `A`, `D`,
//! `dt_bias` and states are used in f32 (other float types are converted,
//! through autograd).

#![warn(missing_docs)]

#[cfg(feature = "cuda")]
mod cuda;
pub mod decode;
mod grad;
mod op;
pub mod reference;
pub mod scan;
pub mod ssd;
mod util;

pub use decode::{Mamba1Step, Mamba2Step};
pub use scan::SelectiveScan;
pub use ssd::SsdForward;
