//! `ssm-results`: work with benchmark result files without the full `ssmk` CLI
//! (the same front ends as `ssmk gate` / `ssmk plot`).
//!
//! ```text
//! ssm-results gate --baseline A.json --new B.json     # exit 1 on a regression
//! ssm-results plot benches/results --out docs/plots  # SVG plots
//! ssm-results merge-ncu --results r.json --ncu ncu.csv --manifest m.json
//! ssm-results show r.json                            # one line per result
//! ssm-results floors                                 # design.md §6 floors table
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssm_telemetry::cli;
use ssm_telemetry::Ceilings;

#[derive(Parser)]
#[command(
    name = "ssm-results",
    version,
    about = "Gate, plot, merge and show benchmark results"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fail when the new results regress against the baseline.
    Gate(cli::GateArgs),
    /// Write SVG plots of result files.
    Plot(cli::PlotArgs),
    /// Attach ncu's measured DRAM bytes to a result set.
    MergeNcu(cli::MergeNcuArgs),
    /// Print a result file as a table.
    Show(cli::ShowArgs),
    /// Print the roofline floors of design.md §6's workloads.
    Floors,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Gate(args) => cli::run_gate(&args),
        Command::Plot(args) => cli::run_plot(&args),
        Command::MergeNcu(args) => cli::run_merge_ncu(&args),
        Command::Show(args) => cli::run_show(&args),
        Command::Floors => {
            print!("{}", cli::floors_table(&Ceilings::H100_SXM));
            ExitCode::SUCCESS
        }
    }
}
