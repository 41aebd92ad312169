//! `ssmk`: the kernel author's command.
//!
//! With no arguments it runs the project's main job: verify every available
//! implementation (CPU ports, and CUDA kernels when a GPU is present) against the
//! f64 oracle on a suite of shapes and print the table.

mod backward;
mod bench;
mod custom;
mod fuzz;
mod fuzz_shape;
mod gate;
mod kernels;
mod resources;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ssmk",
    version,
    about = "Verify, measure and inspect the SSM kernels",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `ssmk [OPTIONS]` is `ssmk verify [OPTIONS]`.
    #[command(flatten)]
    verify: verify::VerifyArgs,
}

/// Whether to use the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum GpuMode {
    /// Use a GPU when one is present, say so loudly when not.
    #[default]
    Auto,
    /// CPU implementations only.
    Off,
    /// Fail when no GPU is present (the device script uses this).
    Require,
}

impl GpuMode {
    /// GPU 0 under this mode (`announce`d when it opens): none with `--gpu
    /// off`, saying `off_note`; when none opens, an error with `--gpu require`
    /// and otherwise none, saying `missing_note`.
    pub fn open(
        self,
        off_note: &str,
        missing_note: &str,
        announce: bool,
    ) -> Result<Option<ssm_gpu::Gpu>, String> {
        if self == GpuMode::Off {
            eprintln!("GPU: off (--gpu off): {off_note}");
            return Ok(None);
        }
        match ssm_gpu::Gpu::new(0) {
            Ok(gpu) => {
                if announce {
                    eprintln!("GPU: {}", gpu.describe());
                }
                Ok(Some(gpu))
            }
            Err(e) if self == GpuMode::Require => {
                Err(format!("--gpu require, but no GPU is usable: {e}"))
            }
            Err(e) => {
                eprintln!("NO GPU: {e}");
                eprintln!("NO GPU: {missing_note}");
                Ok(None)
            }
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Verify every available implementation against the f64 oracle (the default),
    /// on the suite's shapes or, with `ssd|scan|step --shape ...`, on yours.
    Verify(verify::VerifyCommand),
    /// Compile every kernel variant with NVRTC (no GPU needed) and print registers,
    /// spills, stack and shared memory against kernels/budgets.toml.
    Resources(resources::ResourcesArgs),
    /// Kernel packs: every kernel variant compiled ahead of time, for running
    /// without NVRTC (`kernels pack` builds one, `kernels check` proves coverage).
    Kernels(kernels::KernelsArgs),
    /// Differential fuzzing from random seeds: every implementation (CUDA too with a
    /// GPU) against the oracle; stops at the first finding with a replayable seed.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmark every implementation and write the versioned JSON result set.
    Bench(bench::Args),
    /// Gate a new result set against the baseline of its device (or --baseline);
    /// non-zero exit on a regression.
    Gate(gate::Args),
    /// Draw the SVG plots (time and fraction of roofline against L, bytes measured
    /// vs minimum) from result sets.
    Plot(ssm_telemetry::cli::PlotArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or(Command::Verify(verify::VerifyCommand {
            flags: cli.verify,
            op: None,
        }));
    match command {
        Command::Verify(cmd) => verify::run_command(&cmd),
        Command::Resources(args) => resources::run(&args),
        Command::Kernels(args) => kernels::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Gate(args) => gate::run(&args),
        Command::Plot(args) => ssm_telemetry::cli::run_plot(&args),
    }
}
