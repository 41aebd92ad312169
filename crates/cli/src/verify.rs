//! `ssmk verify`: the verification table.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use ssm_gpu::Gpu;
use ssm_verify::suite::{self, SuiteOptions};

use crate::GpuMode;

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
    if mode == GpuMode::Off {
        eprintln!("GPU: off (--gpu off): running the CPU implementations only");
        return Ok(None);
    }
    match Gpu::new(0) {
        Ok(gpu) => Ok(Some(gpu)),
        Err(e) if mode == GpuMode::Require => {
            Err(format!("--gpu require, but no GPU is usable: {e}"))
        }
        Err(e) => {
            eprintln!("NO GPU: {e}");
            eprintln!("NO GPU: the CUDA implementations are NOT verified in this run; running the CPU implementations only");
            Ok(None)
        }
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
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
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
    let rows = match suite::run(&opts, |row| println!("{}", suite::table_line(row))) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: the oracle rejected a suite problem: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = rows.iter().filter(|r| !r.passed()).count();
    println!(
        "{} rows, {} passed, {} failed in {:.1} s{}",
        rows.len(),
        rows.len() - failed,
        failed,
        start.elapsed().as_secs_f64(),
        if gpu.is_none() {
            " (CPU only: no GPU)"
        } else {
            ""
        }
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "seed": seed,
            "kernels_hash": ssm_gpu::KERNELS_HASH,
            "gpu": gpu.is_some(),
            "rows": rows,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
