//! Mamba-1 fused selective scan (docs/DESIGN.md §1.1).
//!
//! One public API per operation, shared by the CPU path and the CUDA path: pass a
//! [`Backend`]. Both validate the same parameter struct from `ssm-core` and return
//! outputs in the input element type (accumulation is f32 in both), with final
//! states in f32.
//!
//! - [`cpu`]: The L-blocked f32 port of the CUDA scan: the state is carried in registers (here: locals) from one L-block to the next, multi-threaded over (batch, channel).
//! - [`backward_cpu`]: the L-blocked f32 backward (reverse sweep per L-block from checkpointed states, deterministic reductions), behind [`selective_scan_backward`].
//! - [`decode_cpu`]: the f32 decode step (docs/DESIGN.md §1.3).
//! - [`cuda`]: the CUDA launcher for the forward kernel.
//! - [`decode_cuda`]: the CUDA decode-step launcher.

#![warn(missing_docs)]

pub mod backward_cpu;
pub mod cpu;
pub mod cuda;
pub mod decode_cpu;
pub mod decode_cuda;

use ssm_core::decode::Mamba1StepParams;
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Result, ScanGrads, ScanOutput, StepOutput};
use ssm_gpu::{DeviceElement, Gpu};

/// Options of the CPU port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    /// Steps per L-block (the kernel's time tile); the state is carried between blocks.
    pub block_len: usize,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions { block_len: 256 }
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
///
/// Layouts are mamba_ssm's: `u`, `delta`, `z` and the output `(b, D_in, L)`, `A`
/// `(D_in, N)`, grouped B and C `(b, G, N, L)` (or constant `(D_in, N)`), final
/// states `(b or num_seqs, D_in, N)` in f32. A shape that does not match is a
/// typed error naming the argument and the expected shape.
///
/// Two decode steps continue exactly where the scan's final state leaves off:
///
/// ```
/// use mamba1_scan::{decode_step, selective_scan, Backend, CpuOptions};
/// use ssm_core::decode::Mamba1StepParams;
/// use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
///
/// let (d_in, n, len) = (2, 2, 4);
/// let dims = Mamba1Dims { batch: 1, d_inner: d_in, d_state: n, seqlen: len };
/// let u: Vec<f32> = (0..d_in * len).map(|i| 0.25 * i as f32).collect(); // (b, D_in, L)
/// let delta = vec![0.5f32; d_in * len];
/// let a = vec![-1.0f32, -0.5, -2.0, -1.0]; // (D_in, N)
/// let bc = vec![1.0f32; n * len]; // (b, G = 1, N, L)
/// let grouped = BcInput::Grouped { groups: 1, data: &bc };
/// let cpu = Backend::Cpu(CpuOptions::default());
///
/// // The whole sequence, and its first half with the final state returned.
/// let whole = SelectiveScanParams::new(dims, &u, &delta, &a, grouped, grouped);
/// let full = selective_scan(&whole, cpu).unwrap();
/// // Every (row, L) tensor keeps the first L / 2 steps of each row.
/// let half = |v: &[f32]| -> Vec<f32> { v.chunks(len).flat_map(|r| r[..len / 2].to_vec()).collect() };
/// let (u2, delta2, bc2) = (half(&u), half(&delta), half(&bc));
/// let dims2 = Mamba1Dims { seqlen: len / 2, ..dims };
/// let g2 = BcInput::Grouped { groups: 1, data: &bc2 };
/// let first = SelectiveScanParams::new(dims2, &u2, &delta2, &a, g2, g2)
///     .with_final_states(true);
/// let out = selective_scan(&first, cpu).unwrap();
/// let mut state = out.final_states.unwrap(); // (b, D_in, N): the decode cache
///
/// // Steps t = 2, 3 on the cache: x (b, D_in), B and C (b, G, N).
/// for t in len / 2..len {
///     let x: Vec<f32> = (0..d_in).map(|d| u[d * len + t]).collect();
///     let dt = vec![0.5f32; d_in];
///     let ones = vec![1.0f32; n];
///     let step = Mamba1StepParams::new(1, d_in, n, 1, &x, &dt, &a, &ones, &ones);
///     let y = decode_step(&step, &mut state, cpu).unwrap();
///     for d in 0..d_in {
///         assert!((y.out[d] - full.out[d * len + t]).abs() < 1e-4);
///     }
/// }
/// ```
pub fn selective_scan<T: DeviceElement>(
    p: &SelectiveScanParams<'_, T>,
    backend: Backend<'_>,
) -> Result<ScanOutput<T, f32>> {
    match backend {
        Backend::Cpu(opts) => cpu::selective_scan_blocked(p, opts.block_len),
        Backend::Cuda(gpu) => cuda::selective_scan_cuda(gpu, p),
    }
}

/// The backward of [`selective_scan`] on the chosen backend: the gradients of
/// `sum(d_out * out) + sum(d_final_states * final_states)` with respect to
/// every input of `p` (docs/BACKWARD-MAMBA1.md).
///
/// `d_out` is `(b, D_in, L)` in the input type; `d_final_states` (f32,
/// `(b or num_seqs, D_in, N)`) only when `p` returns final states (`None`
/// is zero). Gradients of tensor inputs come back in `T`, those of the f32
/// parameters and initial states in f32, each in its input's layout; reruns
/// are bit-identical. Nothing from the forward is needed: the states are
/// recomputed from checkpoints at L-block boundaries. Shape errors name the
/// gradient (`d_out`, `d_final_states`) and its expected shape. The CUDA
/// backend runs `kernels/mamba1/scan_bwd.cu` (checkpoints every tile, reverse
/// sweep, fixed-order reductions: no atomics); N above 256 is
/// [`ssm_core::SsmError::Unsupported`].
pub fn selective_scan_backward<T: DeviceElement>(
    p: &SelectiveScanParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    backend: Backend<'_>,
) -> Result<ScanGrads<T, f32>> {
    match backend {
        Backend::Cpu(opts) => {
            backward_cpu::selective_scan_backward_blocked(p, d_out, d_final_states, opts.block_len)
        }
        Backend::Cuda(gpu) => cuda::selective_scan_backward_cuda(gpu, p, d_out, d_final_states),
    }
}

/// One decode step on the chosen backend; `state` is updated in place.
///
/// `state` is the f32 cache `(cache_rows, D_in, N)`; x, dt and z are `(b, D_in)`,
/// B and C `(b, G, N)`, and the output `(b, D_in)` in `T`. The example at
/// [`selective_scan`] continues a scan with it.
pub fn decode_step<T: DeviceElement>(
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f32],
    backend: Backend<'_>,
) -> Result<StepOutput<T>> {
    match backend {
        Backend::Cpu(_) => decode_cpu::decode_step_cpu(p, state),
        Backend::Cuda(gpu) => {
            decode_cuda::decode_step_cuda::<decode_cuda::Mamba1Decode, T>(gpu, p, state)
        }
    }
}

/// Every compiled form (source, entry point, defines) of this crate's CUDA
/// kernels, for `ssmk resources` and the budget check in
/// `crates/verify/tests/kernel_budgets.rs`. Each label needs an entry in
/// `kernels/budgets.toml`.
pub fn kernel_variants() -> Vec<ssm_gpu::KernelVariant> {
    let mut variants = cuda::scan_kernel_variants();
    variants.extend(decode_cuda::decode_kernel_variants());
    variants
}
