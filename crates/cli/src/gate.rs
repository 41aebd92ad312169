//! `ssmk gate --baseline A.json --new B.json`: the regression gate.
//!
//! Exits 1 when any kernel of the new result set is slower than its baseline
//! beyond `--noise` (5%) plus the measured spread, uses more registers or shared
//! memory, spills more, or moves more measured DRAM bytes (beyond
//! `--bytes-tolerance`, 2%); 2 when an input cannot be read. The logic is
//! `ssm_telemetry::gate`; result files of any accepted producer are read
//! (`ssm_telemetry::compat`).

use std::process::ExitCode;

/// The gate's arguments (`--baseline`, `--new`, `--noise`, `--bytes-tolerance`,
/// `--allow-missing`, `--allow-device-change`, `--json`).
pub use ssm_telemetry::cli::GateArgs as Args;

pub fn run(args: &Args) -> ExitCode {
    ssm_telemetry::cli::run_gate(args)
}
