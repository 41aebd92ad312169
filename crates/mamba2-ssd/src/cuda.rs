//! CUDA launcher for the SSD forward pass (kernels: `kernels/mamba2/ssd_fused.cu`,
//! `kernels/mamba2/ssd_simt.cu`; design notes and measurements:
//! `docs/kernels/mamba2-ssd.md`).
//!
//! Two entry points:
//! - [`ssd_forward_cuda`] / [`ssd_forward_cuda_with`]: host slices in, host vectors
//!   out (upload, launch into poisoned outputs, download).
//! - [`SsdPlan`]: compile once, then launch on device-resident buffers
//!   ([`SsdDeviceInputs`], [`SsdDeviceOutputs`]) as often as needed (benchmarks).
//!
//! Modules: [`config`] picks the kernel and its compile-time defines, [`work`]
//! builds the table of sequences and segments the blocks walk, [`plan`] holds the
//! device-side state and does the launches.

pub mod backward;
pub mod config;
pub mod plan;
pub mod work;

pub use config::{
    CudaOptions, DMode, FusedTiling, KernelChoice, KernelConfig, KernelPath, Segmentation,
    SsdFeatures, CHUNK_SIZES,
};
pub use plan::{SsdDeviceInputs, SsdDeviceOutputs, SsdInputViews, SsdOutputViews, SsdPlan};

use ssm_core::mamba2::{SsdDims, SsdParams};
use ssm_core::{DType, Element, Result, ScanOutput};
use ssm_gpu::{DeviceElement, DeviceLimits, Gpu, KernelVariant};

/// The forward pass on the GPU with the default [`CudaOptions`].
pub fn ssd_forward_cuda<T: DeviceElement>(
    gpu: &Gpu,
    p: &SsdParams<'_, T>,
) -> Result<ScanOutput<T, f32>> {
    ssd_forward_cuda_with(gpu, p, &CudaOptions::default())
}

/// The forward pass on the GPU: inputs are copied to the device, outputs are
/// written into NaN-poisoned buffers and copied back.
pub fn ssd_forward_cuda_with<T: DeviceElement>(
    gpu: &Gpu,
    p: &SsdParams<'_, T>,
    opts: &CudaOptions,
) -> Result<ScanOutput<T, f32>> {
    let layout = p.validate()?;
    // Non-finite inputs are not supported here: a NaN/Inf input (Inf in C, say) can
    // poison the final states on the GPU where the oracle keeps them finite (found
    // by `ssmk fuzz`, case seed 3258114134765900356). Decline with the argument named.
    if let Err(e) = p.with_check_finite(true).validate() {
        return Err(config::unsupported(format!("non-finite inputs ({e})")));
    }
    if p.x.is_empty() {
        // No tokens (L = 0): nothing to launch; every final state is the initial one.
        return Ok(empty_sequence_output(p, layout.num_seqs));
    }
    let plan = SsdPlan::new(gpu, p, opts)?;
    let inputs = SsdDeviceInputs::upload(gpu, p)?;
    let mut outputs = plan.alloc_outputs::<T>(gpu)?;
    plan.launch(gpu, &inputs, &mut outputs)?;
    let out = gpu.download(&outputs.out)?;
    let final_states = outputs
        .final_states
        .as_ref()
        .map(|s| gpu.download(s))
        .transpose()?;
    let result = ScanOutput { out, final_states };
    if T::DTYPE == DType::F16 {
        check_f16_range(p, &result)?;
    }
    Ok(result)
}

fn empty_sequence_output<T: Element>(p: &SsdParams<'_, T>, num_seqs: usize) -> ScanOutput<T, f32> {
    let (heads, head_dim, d_state) = (p.dims.heads, p.dims.head_dim, p.dims.d_state);
    let final_states = p.return_final_states.then(|| match p.initial_states {
        Some(s0) => s0.to_vec(),
        None => vec![0.0; num_seqs * heads * head_dim * d_state],
    });
    ScanOutput {
        out: Vec::new(),
        final_states,
    }
}

/// The fused kernel feeds the tensor cores f16 operands built from f32 values (the
/// masked, decayed C B^T tile and the state). Past the f16 range these become Inf
/// and the output non-finite; report that instead of returning it.
fn check_f16_range<T: Element>(p: &SsdParams<'_, T>, r: &ScanOutput<T, f32>) -> Result<()> {
    let out_bad = r.out.iter().any(|v| !v.to_f64().is_finite());
    let states_bad = r
        .final_states
        .as_ref()
        .is_some_and(|s| s.iter().any(|v| !v.is_finite()));
    if !(out_bad || states_bad) {
        return Ok(());
    }
    let finite = |s: &[T]| s.iter().all(|v| v.to_f64().is_finite());
    let finite32 = |s: &[f32]| s.iter().all(|v| v.is_finite());
    let inputs_finite = finite(p.x)
        && finite(p.dt)
        && finite(p.b)
        && finite(p.c)
        && p.z.is_none_or(finite)
        && finite32(p.a)
        && p.initial_states.is_none_or(finite32);
    if inputs_finite {
        return Err(config::unsupported(
            "these f16 inputs: an intermediate (the state or a decayed C B^T entry) or the \
             output leaves the f16 range; use bf16 or f32 inputs"
                .into(),
        ));
    }
    Ok(())
}

/// Every compiled form of the SSD forward kernels that the crate launches at the
/// reference shapes (docs/DESIGN.md §6), with every option on; labels are the keys of
/// `kernels/budgets.toml`.
pub fn ssd_kernel_variants() -> Vec<KernelVariant> {
    let opts = CudaOptions::default();
    let features = SsdFeatures::all();
    // Two heads per group: the C B^T tiles are shared, as in every reference workload.
    let dims = |d_state, head_dim| SsdDims::new(1, 1, 2, head_dim, d_state, 1);
    // The variants and budgets are those of the H100/H200 (sm_90): the limits
    // decide fused vs SIMT, the blocks per SM and the SSD_MAX_SMEM define.
    let limits = &DeviceLimits::H100_SXM;
    let mut variants = Vec::new();
    let mut push = |dtype: DType, n: usize, p: usize, o: &CudaOptions, prepass: bool| {
        if let Ok(c) = KernelConfig::select(dtype, &dims(n, p), features, o, limits) {
            variants.push(c.variant(false));
            if prepass {
                variants.push(c.variant(true));
            }
            if c.uses_chunk_cb()
                && !variants
                    .iter()
                    .any(|v| v.label == c.chunk_cb_variant().label)
            {
                variants.push(c.chunk_cb_variant());
            }
        }
    };
    for dtype in [DType::Bf16, DType::F16] {
        push(dtype, 128, 64, &opts, true);
    }
    push(DType::Bf16, 128, 128, &opts, false);
    push(DType::Bf16, 256, 64, &opts, false);
    push(
        DType::Bf16,
        128,
        64,
        &CudaOptions { stages: 2, ..opts },
        false,
    );
    // C B^T formed in-block (heads alone in their group, and chunks of 128/256).
    let in_block = CudaOptions {
        shared_cb: Some(false),
        ..opts
    };
    push(DType::Bf16, 128, 64, &in_block, false);
    push(DType::F32, 128, 64, &opts, true);
    // The reference workloads' forward without final states: the state update
    // without its hi/lo split is different code (and a different register schedule).
    let no_final = SsdFeatures {
        final_states: false,
        ..features
    };
    for (p, prepass) in [(64, true), (128, false)] {
        if let Ok(c) = KernelConfig::select(DType::Bf16, &dims(128, p), no_final, &opts, limits) {
            let mut passes = vec![false];
            if prepass {
                passes.push(true);
            }
            for state_only in passes {
                let v = c.variant(state_only);
                variants.push(KernelVariant {
                    label: format!("{}.no_final", v.label),
                    ..v
                });
            }
        }
    }
    variants
}

// The resources of these variants (registers, shared memory, spills, stack,
// compiler warnings) are checked against kernels/budgets.toml, the one place
// that states them, by crates/verify/tests/kernel_budgets.rs.
