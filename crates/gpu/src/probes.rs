//! Probe kernels that measure the card rather than compute a model
//! (`kernels/bench/ceilings.cu`): the benchmark harness runs them once per run
//! to measure the ceilings every floor uses (`ssm-benches`' `ceilings`).

use crate::{kernel_source, KernelSource, KernelVariant};

/// The ceiling probes, embedded at build time.
pub static CEILINGS_SOURCE: KernelSource = kernel_source!("bench/ceilings.cu");

/// Entry point of the MUFU ex2 rate probe:
/// `ssm_ceiling_exp2(float* out, float seed, long long iters)`, one float of
/// `out` per thread of the grid.
pub const CEILING_EXP2_ENTRY: &str = "ssm_ceiling_exp2";

/// Independent exp2 chains per thread of the probe (`CEILING_CHAINS`).
pub const CEILING_EXP2_CHAINS: u32 = 8;

/// The probes as budgeted variants (compiled without a GPU by the tests and by
/// `ssmk resources`).
pub fn ceiling_variants() -> Vec<KernelVariant> {
    vec![KernelVariant::new(
        "bench.ceiling_exp2",
        CEILINGS_SOURCE,
        CEILING_EXP2_ENTRY,
        vec![("CEILING_CHAINS", CEILING_EXP2_CHAINS.to_string())],
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exp2_probe_compiles_without_spills_or_shared_memory() {
        let Some(compiler) = crate::test_compiler_or_skip("the_exp2_probe_compiles") else {
            return;
        };
        for variant in ceiling_variants() {
            let report = crate::report_variant(&compiler, &variant, crate::Arch::Sm90).unwrap();
            let r = &report.resources;
            assert_eq!(r.spill_bytes(), 0, "{r:?}");
            assert_eq!(r.smem_bytes, 0, "{r:?}");
            // 8 chains and the loop state: few registers, so every SM fills up.
            assert!(r.registers <= 32, "{r:?}");
        }
    }
}
