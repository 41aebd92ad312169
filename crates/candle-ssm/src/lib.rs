//! candle ops for the state-space-model kernels of this workspace.
//!
//! - [`ssd`]: the Mamba-2 SSD forward ([`SsdForward`]) with its backward through
//!   candle's autograd, on CPU tensors (the chunked f32 CPU port,
//!   `mamba2_ssd::ssd_forward` / `ssd_backward` with `Backend::Cpu`).
//! - [`reference`]: the SSD and the Mamba-1 scan written with plain candle
//!   tensor ops (the sequential recurrence), for tests and for checking a port.
//!
//! Not yet here (issue 16 item 5): the CUDA path (feature `cuda` only enables
//! `candle-core/cuda` so far; CUDA tensors get candle's "no cuda
//! implementation" error), the Mamba-1 scan op and the decode-step ops.
//! Element types: f32, f16 and bf16 for the sequence tensors; `A`, `D` and
//! `dt_bias` are used in f32 (other float types are converted, through autograd).

mod grad;
pub mod reference;
pub mod ssd;
mod util;

pub use ssd::SsdForward;
