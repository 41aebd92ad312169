//! `ssmk gate --new B.json [--baseline A.json]`: the regression gate.
//!
//! Without `--baseline` the new set is gated against the baseline of the device
//! it ran on, `benches/results/baselines/<slug of device.name>.json`
//! (`--baselines-dir` to look elsewhere); a device without one is an error
//! naming it. Exits 1 when any kernel of the new result set is slower than its
//! baseline beyond `--noise` (5%) plus the measured spread, uses more registers
//! or shared memory, spills more, moves more measured DRAM bytes (beyond
//! `--bytes-tolerance`, 2%), or failed its check against the oracle; 2 when an
//! input cannot be read or the device has no baseline. Peer results (mamba_ssm)
//! only make notes. The logic is `ssm_telemetry::gate`; result sets of schema
//! version 1 and 2 are read.

use std::process::ExitCode;

/// The gate's arguments (`--new`, `--baseline`, `--baselines-dir`, `--noise`,
/// `--bytes-tolerance`, `--allow-missing`, `--allow-device-change`, `--json`).
pub use ssm_telemetry::cli::GateArgs as Args;

pub fn run(args: &Args) -> ExitCode {
    ssm_telemetry::cli::run_gate(args)
}
