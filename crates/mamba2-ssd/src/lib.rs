//! Mamba-2 SSD chunked algorithm (docs/DESIGN.md §1.2).
//!
//! One public API per operation, shared by the CPU path and the CUDA path: pass a
//! [`Backend`]. Both validate the same parameter struct from `ssm-core` and return
//! outputs in the input element type (accumulation is f32 in both), with final
//! states in f32.
//!
//! - [`backward_cpu`]: the chunked backward in f32 (recompute, reverse state passing, per-chunk gradients), deterministic.
//! - [`cpu`]: The 5-step chunked SSD in f32 (cumsum, intra-chunk, chunk state, state passing, inter-chunk output), multi-threaded over (batch, head).
//! - [`decode_cpu`]: the f32 decode step (docs/DESIGN.md §1.3).
//! - [`cuda`]: the CUDA launcher for the forward kernel.
//! - [`decode_cuda`]: the CUDA decode-step launcher.

#![warn(missing_docs)]

pub mod backward_cpu;
pub mod cpu;
pub mod cuda;
pub mod decode_cpu;
pub mod decode_cuda;

/// The README's API example, compiled and run as a doctest so that it stays true
/// (`cargo test -p mamba2-ssd --doc`). Every fenced `rust` block of README.md runs.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExample;

use ssm_core::decode::Mamba2StepParams;
use ssm_core::mamba2::SsdParams;
use ssm_core::{Result, ScanOutput, SsdGrads, StepOutput};
use ssm_gpu::{DeviceElement, Gpu};

/// Options of the CPU port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    /// Chunk length Q of the chunked algorithm (any value >= 1; > L is fine).
    pub chunk_size: usize,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions { chunk_size: 256 }
    }
}

/// Where an operation runs.
#[derive(Clone, Copy)]
pub enum Backend<'g> {
    /// The multi-threaded f32 CPU port of the kernel algorithm.
    Cpu(CpuOptions),
    /// The CUDA kernel on this device (inputs are copied over and outputs back).
    Cuda(&'g Gpu),
}

/// The forward pass on the chosen backend.
pub fn ssd_forward<T: DeviceElement>(
    p: &SsdParams<'_, T>,
    backend: Backend<'_>,
) -> Result<ScanOutput<T, f32>> {
    match backend {
        Backend::Cpu(opts) => cpu::ssd_chunked(p, opts.chunk_size),
        Backend::Cuda(gpu) => cuda::ssd_forward_cuda(gpu, p),
    }
}

/// The backward pass on the chosen backend: the gradients of the loss with respect
/// to every differentiable input of `p`, given `d_out` `(b, L, H, P)` and, when the
/// forward returns final states, optionally `d_final_states` `(b or num_seqs, H,
/// P, N)` (docs/BACKWARD-SSD.md). The forward saves nothing for it: the chunk
/// states are recomputed. Tensor gradients come back in `T`, parameter and
/// initial-state gradients in f32.
///
/// `Backend::Cuda` runs `kernels/mamba2/ssd_bwd.cu` (deterministic, f32
/// arithmetic; docs/kernels/mamba2-ssd-bwd.md).
pub fn ssd_backward<T: DeviceElement>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    backend: Backend<'_>,
) -> Result<SsdGrads<T, f32>> {
    match backend {
        Backend::Cpu(opts) => {
            backward_cpu::ssd_backward_chunked(p, d_out, d_final_states, opts.chunk_size)
        }
        // The chunk length of the CUDA backward is its default (64); callers that
        // want another use cuda::backward::ssd_backward_cuda directly.
        Backend::Cuda(gpu) => cuda::backward::ssd_backward_cuda(
            gpu,
            p,
            d_out,
            d_final_states,
            cuda::backward::DEFAULT_BWD_CHUNK,
        ),
    }
}

/// One decode step on the chosen backend; `state` is updated in place.
///
/// `state` is the f32 cache `(cache_rows, H, P, N)`; the output is `(b, H, P)` in
/// `T`. A shape that does not match `p` is a typed error naming the argument.
///
/// ```
/// use mamba2_ssd::{decode_step, Backend, CpuOptions};
/// use ssm_core::decode::Mamba2StepParams;
///
/// let (b, h, p, n, g) = (1, 2, 2, 4, 1);
/// let (x, dt) = (vec![1.0f32; b * h * p], vec![0.5f32; b * h]);
/// let a = vec![-1.0f32; h];
/// let (bm, cm) = (vec![1.0f32; b * g * n], vec![1.0f32; b * g * n]);
/// let step = Mamba2StepParams::new(b, h, p, n, g, &x, &dt, &a, &bm, &cm);
/// let mut state = vec![0.0f32; b * h * p * n];
/// let y = decode_step(&step, &mut state, Backend::Cpu(CpuOptions::default())).unwrap();
/// // From a zero state: S = dt x B^T, y = S C = dt x (B . C) = 0.5 * 1 * 4.
/// assert!(y.out.iter().all(|&v| (v - 2.0).abs() < 1e-6));
/// assert!(state.iter().all(|&s| (s - 0.5).abs() < 1e-6));
/// // A cache of the wrong size is an error, not a panic.
/// assert!(decode_step(&step, &mut state[1..], Backend::Cpu(CpuOptions::default())).is_err());
/// ```
pub fn decode_step<T: DeviceElement>(
    p: &Mamba2StepParams<'_, T>,
    state: &mut [f32],
    backend: Backend<'_>,
) -> Result<StepOutput<T>> {
    match backend {
        Backend::Cpu(_) => decode_cpu::decode_step_cpu(p, state),
        Backend::Cuda(gpu) => {
            decode_cuda::decode_step_cuda::<decode_cuda::Mamba2Decode, T>(gpu, p, state)
        }
    }
}

/// Every compiled form (source, entry point, defines) of this crate's CUDA
/// kernels, for `ssmk resources` and the budget check in
/// `crates/verify/tests/kernel_budgets.rs`. Each label needs an entry in
/// `kernels/budgets.toml`.
pub fn kernel_variants() -> Vec<ssm_gpu::KernelVariant> {
    let mut variants = cuda::ssd_kernel_variants();
    variants.extend(cuda::backward::ssd_bwd_kernel_variants());
    variants.extend(decode_cuda::decode_kernel_variants());
    variants
}
