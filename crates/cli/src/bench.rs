//! `ssmk bench`: benchmark every implementation and write the versioned JSON
//! result set (timing, roofline fraction, SRAM, NVML clocks/power/energy,
//! throttling). The runner is `ssm_benches::cli`; on the device machine the same
//! runner ships as the `bench_suite` binary that `ci/bench.sh` drives (with the
//! ncu pass for measured DRAM bytes).

use std::process::ExitCode;

/// `--suite auto|gpu|cpu|reference|all`, `--quick`, `--filter`, `--json`,
/// `--min-time-ms`, `--max-iters`, `--seed`, `--list`, `--require-gpu`, `--ncu-manifest`.
pub use ssm_benches::cli::BenchArgs as Args;

pub fn run(args: &Args) -> ExitCode {
    ssm_benches::cli::run(args)
}
