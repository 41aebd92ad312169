//! Every implementation of each operation, behind one enum per operation, so that
//! each one enters the same comparisons.
//!
//! All results are widened to f64 (`ScanOutput<f64, f64>`) for comparison.

use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::{Result, ScanOutput, SsmError};
use ssm_gpu::{DeviceElement, Gpu};

use crate::gen::{Mamba1Inputs, SsdInputs, StepInputs};

fn need_gpu(gpu: Option<&Gpu>) -> Result<&Gpu> {
    gpu.ok_or_else(|| SsmError::Backend("no GPU available for a CUDA implementation".into()))
}

/// Implementations of the Mamba-1 selective scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanImpl {
    /// The f64 oracle (`ssm_reference::selective_scan`).
    Reference,
    /// The L-blocked f32 CPU port.
    CpuBlocked {
        /// Steps per L-block.
        block_len: usize,
    },
    /// The fused CUDA kernel.
    Cuda,
    /// The fused CUDA kernel with an explicit work split (`ssmk verify scan --kernel-opt`).
    CudaTuned(mamba1_scan::cuda::ScanTuning),
}

impl ScanImpl {
    /// The name in reports (`m1 cpu blocked/64`, ...).
    pub fn name(&self) -> String {
        match self {
            ScanImpl::Reference => "m1 reference f64".into(),
            ScanImpl::CpuBlocked { block_len } => format!("m1 cpu blocked/{block_len}"),
            ScanImpl::Cuda => "m1 cuda scan".into(),
            ScanImpl::CudaTuned(_) => "m1 cuda scan (tuned)".into(),
        }
    }

    /// The CUDA implementation (run twice and compared bit for bit).
    pub fn is_cuda(&self) -> bool {
        matches!(self, ScanImpl::Cuda | ScanImpl::CudaTuned(_))
    }

    /// Window over which this implementation exponentiates differences of f32
    /// cumulative sums (the `K` of the tolerance model); step-wise recurrences have none.
    pub fn log_decay_window(&self) -> Option<usize> {
        None
    }

    /// Run on `inputs` and widen the result to f64; the CUDA forms need `gpu`
    /// (a typed error without one).
    pub fn run<T: DeviceElement>(
        &self,
        inputs: &Mamba1Inputs<'_, T>,
        gpu: Option<&Gpu>,
    ) -> Result<ScanOutput<f64, f64>> {
        let p = inputs.params();
        match *self {
            ScanImpl::Reference => ssm_reference::selective_scan(&p),
            ScanImpl::CpuBlocked { block_len } => {
                let opts = mamba1_scan::CpuOptions { block_len };
                Ok(mamba1_scan::selective_scan(&p, mamba1_scan::Backend::Cpu(opts))?.to_f64())
            }
            ScanImpl::Cuda => {
                let backend = mamba1_scan::Backend::Cuda(need_gpu(gpu)?);
                Ok(mamba1_scan::selective_scan(&p, backend)?.to_f64())
            }
            ScanImpl::CudaTuned(tuning) => {
                Ok(
                    mamba1_scan::cuda::selective_scan_cuda_tuned(need_gpu(gpu)?, &p, tuning)?
                        .to_f64(),
                )
            }
        }
    }
}

/// Implementations of the Mamba-2 SSD forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsdImpl {
    /// The f64 recurrence (`ssm_reference::ssd_recurrence`): the oracle.
    Recurrence,
    /// The f64 quadratic (masked attention) form, independent of the recurrence.
    Quadratic,
    /// The 5-step chunked f32 CPU port.
    CpuChunked {
        /// Chunk length Q.
        chunk: usize,
    },
    /// The CUDA kernel.
    Cuda,
    /// The CUDA kernel with explicit options (chunk, kernel choice, stages, ...:
    /// `ssmk verify ssd --chunk --kernel-opt`).
    CudaWith(mamba2_ssd::cuda::CudaOptions),
}

/// Largest chunk a CUDA SSD kernel may use; bounds its tolerance window.
pub const CUDA_SSD_MAX_CHUNK: usize = 256;

impl SsdImpl {
    /// The name in reports (`ssd cpu chunked/64`, ...).
    pub fn name(&self) -> String {
        match self {
            SsdImpl::Recurrence => "ssd recurrence f64".into(),
            SsdImpl::Quadratic => "ssd quadratic f64".into(),
            SsdImpl::CpuChunked { chunk } => format!("ssd cpu chunked/{chunk}"),
            SsdImpl::Cuda => "ssd cuda".into(),
            SsdImpl::CudaWith(o) => format!("ssd cuda/{}", o.chunk_size),
        }
    }

    /// A CUDA implementation (run twice and compared bit for bit).
    pub fn is_cuda(&self) -> bool {
        matches!(self, SsdImpl::Cuda | SsdImpl::CudaWith(_))
    }

    /// Window over which this implementation exponentiates differences of f32
    /// cumulative sums (the `K` of the tolerance model): its chunk length;
    /// `None` for the f64 forms.
    pub fn log_decay_window(&self) -> Option<usize> {
        match *self {
            SsdImpl::Recurrence | SsdImpl::Quadratic => None,
            SsdImpl::CpuChunked { chunk } => Some(chunk),
            SsdImpl::Cuda => Some(CUDA_SSD_MAX_CHUNK),
            SsdImpl::CudaWith(o) => Some(o.chunk_size),
        }
    }

    /// Run on `inputs` and widen the result to f64; the CUDA forms need `gpu`
    /// (a typed error without one).
    pub fn run<T: DeviceElement>(
        &self,
        inputs: &SsdInputs<'_, T>,
        gpu: Option<&Gpu>,
    ) -> Result<ScanOutput<f64, f64>> {
        let p = inputs.params();
        match *self {
            SsdImpl::Recurrence => ssm_reference::ssd_recurrence(&p),
            SsdImpl::Quadratic => ssm_reference::ssd_quadratic(&p),
            SsdImpl::CpuChunked { chunk } => {
                let opts = mamba2_ssd::CpuOptions { chunk_size: chunk };
                Ok(mamba2_ssd::ssd_forward(&p, mamba2_ssd::Backend::Cpu(opts))?.to_f64())
            }
            SsdImpl::Cuda => {
                let backend = mamba2_ssd::Backend::Cuda(need_gpu(gpu)?);
                Ok(mamba2_ssd::ssd_forward(&p, backend)?.to_f64())
            }
            SsdImpl::CudaWith(opts) => {
                Ok(mamba2_ssd::cuda::ssd_forward_cuda_with(need_gpu(gpu)?, &p, &opts)?.to_f64())
            }
        }
    }
}

/// Which family a decode step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Mamba-1: channels `D_in`, A `(D_in, N)`.
    Mamba1,
    /// Mamba-2: heads `H` of `P` rows, A `(H)`.
    Mamba2,
}

/// Implementations of the decode steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepImpl {
    /// The f64 oracle (`ssm_reference`'s decode steps).
    Reference,
    /// The f32 CPU decode step.
    Cpu,
    /// The CUDA decode kernel.
    Cuda,
}

impl StepImpl {
    /// The name in reports (`m2 step cuda`, ...).
    pub fn name(&self, family: Family) -> String {
        let f = match family {
            Family::Mamba1 => "m1",
            Family::Mamba2 => "m2",
        };
        match self {
            StepImpl::Reference => format!("{f} step reference f64"),
            StepImpl::Cpu => format!("{f} step cpu"),
            StepImpl::Cuda => format!("{f} step cuda"),
        }
    }

    /// Run one step; returns the output and the whole updated state cache, in f64.
    pub fn run<T: DeviceElement>(
        &self,
        family: Family,
        inputs: &StepInputs<'_, T>,
        gpu: Option<&Gpu>,
    ) -> Result<ScanOutput<f64, f64>> {
        let state0 = &inputs.data.state;
        if *self == StepImpl::Reference {
            let mut state: Vec<f64> = state0.iter().map(|&s| s as f64).collect();
            let out = match family {
                Family::Mamba1 => ssm_reference::mamba1_step(&inputs.mamba1(), &mut state)?,
                Family::Mamba2 => ssm_reference::mamba2_step(&inputs.mamba2(), &mut state)?,
            };
            return Ok(ScanOutput {
                out: out.out,
                final_states: Some(state),
            });
        }
        let gpu = match self {
            StepImpl::Cpu => None,
            _ => Some(need_gpu(gpu)?),
        };
        let mamba1 = || inputs.mamba1();
        let mamba2 = || inputs.mamba2();
        decode_step(family, mamba1, mamba2, &mut state0.clone(), gpu)
    }
}

/// One decode step of `family` with the parameters `mamba1` or `mamba2` build,
/// on the CPU (`gpu` is `None`) or on `gpu`, updating `state` in place: the
/// output widened to f64, the updated cache as the final states.
pub fn decode_step<'p, T: DeviceElement>(
    family: Family,
    mamba1: impl FnOnce() -> Mamba1StepParams<'p, T>,
    mamba2: impl FnOnce() -> Mamba2StepParams<'p, T>,
    state: &mut [f32],
    gpu: Option<&Gpu>,
) -> Result<ScanOutput<f64, f64>> {
    let out = match family {
        Family::Mamba1 => {
            let backend = gpu.map_or(mamba1_scan::Backend::Cpu(Default::default()), |g| {
                mamba1_scan::Backend::Cuda(g)
            });
            mamba1_scan::decode_step(&mamba1(), state, backend)?.out
        }
        Family::Mamba2 => {
            let backend = gpu.map_or(mamba2_ssd::Backend::Cpu(Default::default()), |g| {
                mamba2_ssd::Backend::Cuda(g)
            });
            mamba2_ssd::decode_step(&mamba2(), state, backend)?.out
        }
    };
    Ok(ScanOutput {
        out: ssm_core::element::widen(&out),
        final_states: Some(state.iter().map(|&s| s as f64).collect()),
    })
}
