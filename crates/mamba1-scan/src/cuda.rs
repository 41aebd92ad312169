//! CUDA launcher for the forward kernel (`kernels/mamba1/scan_fwd.cu`).
//!
//! - [`selective_scan_cuda`]: host slices in, host vectors out (outputs are
//!   poisoned on the device first, so an unwritten element cannot pass a test).
//! - [`ScanPlan`] + [`ScanBuffers`]: the device-resident path for benchmarks
//!   (compile once, launch many times on buffers that stay on the GPU).
//! - [`selective_scan_backward_cuda`], [`ScanBwdPlan`]: the backward
//!   (`kernels/mamba1/scan_bwd.cu`, module `backward`).
//! - [`scan_kernel_variants`]: the compiled forms, for resource reports and budgets.
//!
//! The kernel design, the floors and the measured versions are in
//! `docs/kernels/mamba1-scan.md`.

mod backward;
mod config;
mod launch;

pub use backward::{
    selective_scan_backward_cuda, selective_scan_backward_cuda_with, BwdConfig, BwdOptions,
    ScanBwdPlan, ScanBwdWorkspace, ScanGradBuffers, Sweep,
};
pub use config::{ScanConfig, ScanOptions, ScanProblem, ScanTuning, MAX_D_STATE};
pub use launch::{ScanBuffers, ScanPlan, ScanViews};

use ssm_core::mamba1::{Mamba1Dims, SelectiveScanParams};
use ssm_core::{DType, Result, ScanOutput};
use ssm_gpu::{DeviceElement, DeviceLimits, Gpu, KernelVariant};

/// The forward scan on `gpu` with the kernel's default tuning.
pub fn selective_scan_cuda<T: DeviceElement>(
    gpu: &Gpu,
    p: &SelectiveScanParams<'_, T>,
) -> Result<ScanOutput<T, f32>> {
    selective_scan_cuda_tuned(gpu, p, ScanTuning::default())
}

/// The forward scan with an explicit work split (tests cover every split).
pub fn selective_scan_cuda_tuned<T: DeviceElement>(
    gpu: &Gpu,
    p: &SelectiveScanParams<'_, T>,
    tuning: ScanTuning,
) -> Result<ScanOutput<T, f32>> {
    let problem = ScanProblem::of(p)?;
    if problem.dims.seqlen == 0 {
        // Nothing to scan: an empty output, and the initial states unchanged.
        // Still reject what the kernel would reject, so L = 0 is no loophole.
        ScanConfig::new(&problem, tuning, &gpu.limits()?)?;
        return Ok(empty_sequence_output(&problem, p));
    }
    let plan = ScanPlan::new(gpu, &problem, tuning)?;
    let mut bufs = launch::ScanBuffers::upload(gpu, p)?;
    plan.launch(gpu, &mut bufs)?;
    let out = gpu.download(&bufs.out)?;
    // Host offsets were validated above; this also catches a corrupted upload.
    plan.take_device_error(gpu)?;
    let final_states = bufs
        .final_states
        .as_ref()
        .map(|s| gpu.download(s))
        .transpose()?;
    Ok(ScanOutput { out, final_states })
}

fn empty_sequence_output<T: DeviceElement>(
    problem: &ScanProblem,
    p: &SelectiveScanParams<'_, T>,
) -> ScanOutput<T, f32> {
    let final_states = problem.return_final_states.then(|| match p.initial_states {
        Some(h0) => h0.to_vec(),
        None => vec![0.0; problem.state_len()],
    });
    ScanOutput {
        out: Vec::new(),
        final_states,
    }
}

/// The kernel forms the crate launches for the reference workloads and the
/// tests' corner shapes, for `ssmk resources` and the register/smem budgets.
pub fn scan_kernel_variants() -> Vec<KernelVariant> {
    let m1 = |dtype, d_state, seqlen, grouped: bool, all_options: bool| ScanProblem {
        dtype,
        dims: Mamba1Dims::new(1, 64, d_state, seqlen),
        b_groups: grouped.then_some(1),
        c_groups: grouped.then_some(1),
        has_d: all_options,
        has_z: all_options,
        has_delta_bias: all_options,
        delta_softplus: all_options,
        has_initial_states: false,
        return_final_states: true,
        varlen_seqs: None,
    };
    let problems = [
        // The M1 workloads (bf16, N = 16, every option), then the other dtypes.
        m1(DType::Bf16, 16, 4096, true, true),
        m1(DType::F16, 16, 4096, true, true),
        m1(DType::F32, 16, 4096, true, true),
        // Bare options, constant B/C, unaligned L, odd and largest N.
        m1(DType::Bf16, 16, 4096, true, false),
        m1(DType::Bf16, 16, 4096, false, true),
        m1(DType::Bf16, 16, 4095, true, true),
        m1(DType::F32, 5, 4095, true, true),
        m1(DType::Bf16, 256, 4096, true, true),
        m1(DType::F32, 256, 4096, true, true),
    ];
    // The H100/H200 (sm_90) limits: the budgets are theirs.
    let mut variants: Vec<KernelVariant> = problems
        .iter()
        .filter_map(|problem| {
            ScanConfig::new(problem, ScanTuning::default(), &DeviceLimits::H100_SXM).ok()
        })
        .map(|config| config.variant())
        .collect();
    // The training forwards (checkpoints for the backward, BwdOptions::
    // forward_checkpoints) of the M1 workloads in bf16 and f32.
    for problem in &problems[..3] {
        let limits = &DeviceLimits::H100_SXM;
        if let (Ok(fwd), Ok(bwd)) = (
            ScanConfig::new(problem, ScanTuning::default(), limits),
            BwdConfig::new(problem, limits),
        ) {
            if let Ok(training) = fwd.with_checkpoints(problem, bwd.tile) {
                variants.push(training.variant());
            }
        }
    }
    // The backward: the M1 workloads, f32, bare options, constant B/C, odd and largest N.
    let backward = [
        m1(DType::Bf16, 16, 4096, true, true),
        m1(DType::F32, 16, 4096, true, true),
        m1(DType::Bf16, 16, 4096, true, false),
        m1(DType::Bf16, 16, 4096, false, true),
        m1(DType::F32, 5, 4095, true, true),
        m1(DType::Bf16, 256, 4096, true, true),
    ];
    for problem in &backward {
        if let Ok(config) = BwdConfig::new(problem, &DeviceLimits::H100_SXM) {
            variants.extend(config.variants());
        }
    }
    variants
}

impl ScanConfig {
    /// This configuration as a [`KernelVariant`] (label `mamba1.scan_fwd.<label>`).
    pub fn variant(&self) -> KernelVariant {
        KernelVariant::new(
            format!("mamba1.scan_fwd.{}", self.label()),
            launch::SCAN_SOURCE,
            launch::SCAN_ENTRY,
            self.defines(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_labels_are_unique() {
        let variants = scan_kernel_variants();
        assert!(ssm_gpu::variants::duplicate_labels(&variants).is_empty());
        assert!(
            variants.len() >= 9 + 6 * 4,
            "every listed problem has a configuration"
        );
    }

    // The resources of these variants (registers, spills, stack, shared memory,
    // compiler warnings) are checked against kernels/budgets.toml, the one place
    // that states them (a budgeted spill, like the 5-blocks-per-SM sweep's, is
    // written there with its reason), by crates/verify/tests/kernel_budgets.rs.
}
