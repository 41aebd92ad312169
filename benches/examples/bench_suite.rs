//! `bench_suite`: the benchmark runner as a standalone binary, for the device
//! machine (no cargo there; `ci/device-prepare.sh` bundles `bench_*` examples and
//! `ci/bench.sh` drives it). The same runner is `ssmk bench`.
//!
//! ```text
//! bench_suite [--suite auto|gpu|cpu|reference|all] [--quick] [--filter S] [--json PATH]
//! bench_suite --ncu-manifest m.json [...]        # launch each GPU case once, for ncu
//! bench_suite merge-ncu --results r.json --ncu ncu.csv --manifest m.json
//! bench_suite plot benches/results --out docs/plots
//! bench_suite show r.json
//! bench_suite gate --baseline A.json --new B.json
//! ```
//! With no arguments it runs the GPU suite (or the CPU ports without a GPU) and
//! writes `$SSM_RESULTS_DIR/bench_suite.json` when that variable is set.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssm_benches::cli::{run, BenchArgs};
use ssm_telemetry::cli as results;

#[derive(Parser)]
#[command(
    name = "bench_suite",
    version,
    about = "Benchmark every implementation; write versioned JSON results"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Attach ncu's measured DRAM bytes to a result set.
    MergeNcu(results::MergeNcuArgs),
    /// Write SVG plots of result files.
    Plot(results::PlotArgs),
    /// Print result files as tables.
    Show(results::ShowArgs),
    /// Fail when the new results regress against the baseline.
    Gate(results::GateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.bench),
        Some(Command::MergeNcu(a)) => results::run_merge_ncu(&a),
        Some(Command::Plot(a)) => results::run_plot(&a),
        Some(Command::Show(a)) => results::run_show(&a),
        Some(Command::Gate(a)) => results::run_gate(&a),
    }
}
