//! `ssm-results`: work with benchmark result files without the full `ssmk` CLI
//! (the same front ends as `ssmk gate` / `ssmk plot`).
//!
//! ```text
//! ssm-results gate --baseline A.json --new B.json     # exit 1 on a regression
//! ssm-results plot benches/results --out docs/plots  # SVG plots
//! ssm-results merge-ncu --results r.json --ncu ncu.csv --manifest m.json
//! ssm-results merge-peers --results r.json --peers peers.json
//! ssm-results show r.json                            # one line per result, peer ratio
//! ssm-results readme-table r.json                    # the README status table
//! ssm-results floors --results r.json               # docs/DESIGN.md §6 floors at its ceilings
//! ssm-results floors --device "NVIDIA H200"          # ... at that card's datasheet figures
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssm_telemetry::cli;

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
    /// Fail when the new results regress against the baseline of their device.
    Gate(cli::GateArgs),
    /// Write SVG plots of result files.
    Plot(cli::PlotArgs),
    /// Attach ncu's measured DRAM bytes to a result set.
    MergeNcu(cli::MergeNcuArgs),
    /// File a peer timing file from the same device run into a result set.
    MergePeers(cli::MergePeersArgs),
    /// Print a result file as a table (ours with the paired peer and ratio).
    Show(cli::ShowArgs),
    /// Print the README status table (markdown) from a result set.
    ReadmeTable(cli::ReadmeTableArgs),
    /// Print the roofline floors of docs/DESIGN.md §6's workloads at a result set's
    /// ceilings, or at the datasheet figures of a named card.
    Floors(cli::FloorsArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Gate(args) => cli::run_gate(&args),
        Command::Plot(args) => cli::run_plot(&args),
        Command::MergeNcu(args) => cli::run_merge_ncu(&args),
        Command::MergePeers(args) => cli::run_merge_peers(&args),
        Command::Show(args) => cli::run_show(&args),
        Command::ReadmeTable(args) => cli::run_readme_table(&args),
        Command::Floors(args) => cli::run_floors(&args),
    }
}
