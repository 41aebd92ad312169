//! `ssmk verify`: the verification table, on the suite's shapes or (`ssmk verify
//! ssd|scan|step --shape ...`, [`crate::custom`]) on one the user types.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use ssm_gpu::Gpu;
use ssm_verify::check::CheckRow;
use ssm_verify::suite::{self, SuiteOptions};

use crate::backward;
use crate::custom::{self, Custom};
use crate::GpuMode;
use ssm_telemetry::progress::Progress;

/// `ssmk verify [OPTIONS] [ssd|scan|step ...]`.
#[derive(Args, Debug)]
pub struct VerifyCommand {
    #[command(flatten)]
    pub flags: VerifyArgs,
    #[command(subcommand)]
    pub op: Option<CustomOp>,
}

/// One problem of the user's shape instead of the suite.
#[derive(Subcommand, Debug, Clone)]
pub enum CustomOp {
    /// The Mamba-2 SSD forward, e.g. `--shape b=2,L=4097,H=24,P=64,N=96,G=3
    /// --options all --dtype bf16 --impl cuda,cpu --chunk 128`.
    Ssd(custom::SsdArgs),
    /// The Mamba-1 selective scan, e.g. `--shape b=4,D=5120,N=16,L=4096`.
    Scan(custom::ScanArgs),
    /// A decode step, e.g. `--family m2 --shape b=256,H=80,P=64,N=128`.
    Step(custom::StepArgs),
}

#[derive(Args, Debug, Default)]
pub struct VerifyArgs {
    /// GPU use: auto (default), off, require.
    #[arg(long, value_enum, default_value_t = GpuMode::Auto)]
    pub gpu: GpuMode,
    /// Add the full-size docs/DESIGN.md workloads (meant for the GPU machine).
    #[arg(long)]
    pub full: bool,
    /// Seed of the random inputs (fresh inputs: pass a new seed; default is time-based).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write every row as JSON to this path.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn open_gpu(mode: GpuMode) -> Result<Option<Gpu>, String> {
    let cpu_only = "running the CPU implementations only";
    let missing = format!("the CUDA implementations are NOT verified in this run; {cpu_only}");
    mode.open(cpu_only, &missing, false)
}

/// `ssmk verify`, with or without a custom shape.
pub fn run_command(cmd: &VerifyCommand) -> ExitCode {
    match &cmd.op {
        None => run(&cmd.flags),
        Some(op) => {
            let custom = match op.clone() {
                CustomOp::Ssd(a) => Custom::Ssd(a),
                CustomOp::Scan(a) => Custom::Scan(a),
                CustomOp::Step(a) => Custom::Step(a),
            };
            run_custom(&cmd.flags, &custom)
        }
    }
}

fn seed_of(args: &VerifyArgs) -> u64 {
    args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Exit status 2: the command line was wrong (nothing was verified).
fn usage_error(e: &str) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn run_custom(args: &VerifyArgs, cmd: &Custom) -> ExitCode {
    if args.full {
        return usage_error(
            "--full adds the suite's full-size workloads; with a --shape it has no meaning",
        );
    }
    // Parse everything before opening a GPU, so that a typo costs nothing.
    if let Err(e) = cmd.validate() {
        return usage_error(&e);
    }
    let common = cmd.common();
    // A GPU only when a CUDA implementation is asked for (or a fuzz case replays,
    // whose target runs the CUDA implementations where it can).
    let gpu = if cmd.wants_gpu() {
        match open_gpu(common.gpu.unwrap_or(args.gpu)) {
            Ok(g) => g,
            Err(e) => return usage_error(&e),
        }
    } else {
        None
    };
    let seed = common.seed.unwrap_or_else(|| seed_of(args));
    if let Some(case) = common.fuzz_case {
        return match custom::replay_fuzz_case(cmd, case, gpu.as_ref()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => usage_error(&e),
        };
    }
    println!(
        "ssmk verify: seed {seed} (replay with --seed {seed}), kernels {}",
        ssm_gpu::KERNELS_HASH
    );
    if cmd.backward() {
        return run_backward(args, cmd, gpu.as_ref(), seed);
    }
    println!("{}", suite::table_header());
    let start = Instant::now();
    let rows = match custom::run(cmd, gpu.as_ref(), seed) {
        Ok(rows) => rows,
        Err(e) => return usage_error(&e),
    };
    for row in &rows {
        println!("{}", suite::table_line(row));
    }
    finish(args, &rows, start, seed, gpu.is_some())
}

/// `--backward`: the gradient table, its summary, the JSON file, the exit status.
fn run_backward(args: &VerifyArgs, cmd: &Custom, gpu: Option<&Gpu>, seed: u64) -> ExitCode {
    println!("{}", backward::table_header());
    let start = Instant::now();
    let rows = match custom::run_backward(cmd, gpu, seed) {
        Ok(rows) => rows,
        Err(e) => return usage_error(&e),
    };
    for row in &rows {
        println!("{}", backward::table_line(row));
    }
    let failed = rows.iter().filter(|r| !r.passed).count();
    let cuda_asked = cmd.common().impls.iter().any(|i| i.trim() == "cuda");
    let note = match (cmd, cuda_asked, gpu.is_some()) {
        (Custom::Ssd(_), true, _) => " (SSD CUDA backward NOT verified: not in this build)",
        (_, true, false) => " (CPU only: no GPU)",
        _ => "",
    };
    print_summary("gradients", rows.len(), failed, start, note);
    let json_rows: Vec<_> = rows.iter().map(backward::GradRow::json).collect();
    if !write_run_json(args, seed, ("backward", true.into()), json_rows.into()) {
        return ExitCode::FAILURE;
    }
    if failed == 0 && !rows.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn run(args: &VerifyArgs) -> ExitCode {
    let gpu = match open_gpu(args.gpu) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seed = seed_of(args);
    println!(
        "ssmk verify: seed {seed} (replay with --seed {seed}), kernels {}",
        ssm_gpu::KERNELS_HASH
    );
    println!("{}", suite::table_header());
    let start = Instant::now();
    let opts = SuiteOptions {
        gpu: gpu.as_ref(),
        full: args.full,
        seed,
    };
    let mut progress = Progress::new("problems", suite::problem_count(&opts) as u64);
    let rows = suite::run_with_progress(&opts, |row, done, _| {
        progress.println(&suite::table_line(row));
        progress.set(done as u64, &row.implementation);
    });
    progress.finish();
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: the oracle rejected a suite problem: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(args, &rows, start, seed, gpu.is_some())
}

/// The last line of a run: `N <what>, P passed, F failed in T s<note>`.
fn print_summary(what: &str, total: usize, failed: usize, start: Instant, note: &str) {
    println!(
        "{total} {what}, {} passed, {failed} failed in {:.1} s{note}",
        total - failed,
        start.elapsed().as_secs_f64(),
    );
}

/// With `--json`, write the run (its seed, the kernels' hash, `key: value`
/// and the rows) as pretty JSON; `false` (after saying why) when that fails.
fn write_run_json(
    args: &VerifyArgs,
    seed: u64,
    (key, value): (&str, serde_json::Value),
    rows: serde_json::Value,
) -> bool {
    let Some(path) = &args.json else {
        return true;
    };
    let mut doc = serde_json::Map::new();
    doc.insert("seed".into(), seed.into());
    doc.insert("kernels_hash".into(), ssm_gpu::KERNELS_HASH.into());
    doc.insert(key.into(), value);
    doc.insert("rows".into(), rows);
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: writing {}: {e}", path.display());
            false
        }
    }
}

/// The summary line, the JSON file, and the exit status.
fn finish(args: &VerifyArgs, rows: &[CheckRow], start: Instant, seed: u64, gpu: bool) -> ExitCode {
    let failed = rows.iter().filter(|r| !r.passed()).count();
    let note = if !gpu { " (CPU only: no GPU)" } else { "" };
    print_summary("rows", rows.len(), failed, start, note);
    let json_rows = serde_json::to_value(rows).unwrap_or_default();
    if !write_run_json(args, seed, ("gpu", gpu.into()), json_rows) {
        return ExitCode::FAILURE;
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
