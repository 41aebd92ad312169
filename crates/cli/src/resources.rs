//! `ssmk resources`: every CUDA kernel variant compiled with NVRTC (no GPU
//! needed) and ptxas's report of it (registers, static shared memory, spills,
//! stack frame, barriers) next to its limits in `kernels/budgets.toml`.
//!
//! Exit status: 0 when every variant compiles within its budget, 1 when one is
//! over budget, unbudgeted or failing to compile, 2 when NVRTC or the CUDA
//! headers are missing. Sources and budgets are the embedded copies, or those
//! under `SSM_KERNEL_DIR` (hot reload).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use ssm_gpu::budget::{check, BudgetCheck, BudgetFile, Verdict};
use ssm_gpu::variants::duplicate_labels;
use ssm_gpu::{report_variants, Arch, Compiler, KernelVariant};

#[derive(Args, Debug, Default)]
pub struct ResourcesArgs {
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Compile for this target instead of the budget file's (sm_80, sm_86, sm_89, sm_90, sm_90a);
    /// the limits are still those of the budget file.
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<Arch>,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    let arch: Arch = s.parse()?;
    if arch.is_virtual() {
        // PTX has no ptxas report: ptxas runs in the driver, at load time.
        return Err(format!(
            "{arch} is PTX, which ptxas compiles only in the driver: there is no resource \
             report to read; pick a real target (sm_80, sm_86, sm_89, sm_90, sm_90a)"
        ));
    }
    Ok(arch)
}

/// Every variant of every kernel crate, plus the runtime's self-test kernels.
pub fn all_kernel_variants() -> Vec<KernelVariant> {
    let mut variants = ssm_gpu::selftest::selftest_variants();
    variants.extend(ssm_gpu::probes::ceiling_variants());
    variants.extend(mamba1_scan::kernel_variants());
    variants.extend(mamba2_ssd::kernel_variants());
    variants
}

pub fn run(args: &ResourcesArgs) -> ExitCode {
    let compiler = match Compiler::from_env() {
        Ok(compiler) => compiler,
        Err(e) => {
            eprintln!("error: cannot compile kernels here: {e}");
            return ExitCode::from(2);
        }
    };
    let budgets = match BudgetFile::from_root(compiler.source_root()) {
        Ok(budgets) => budgets,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let arch = args.arch.unwrap_or(budgets.arch);
    let variants = all_kernel_variants();
    let results = report_variants(&compiler, &variants, arch);
    let mut outcome = check(results, &budgets, duplicate_labels(&variants));
    outcome.arch = arch;
    let kernels_hash = compiler
        .source_root()
        .kernels_hash()
        .unwrap_or_else(|e| format!("unknown ({e})"));

    // Written without println! so that a closed pipe (`| head`) is not a panic.
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(stdout, "{:#}", to_json(&outcome, &compiler, &kernels_hash));
    } else {
        let _ = writeln!(stdout, "{}\nkernels {kernels_hash}", compiler.describe());
        let _ = write!(stdout, "{}", outcome.render_table());
        for failure in outcome.failures() {
            eprintln!("FAIL {failure}");
        }
    }
    if arch != budgets.arch {
        eprintln!(
            "note: compiled for {arch}, limits are stated for {}",
            budgets.arch
        );
    }
    if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn to_json(outcome: &BudgetCheck, compiler: &Compiler, kernels_hash: &str) -> serde_json::Value {
    let rows: Vec<_> = outcome
        .rows
        .iter()
        .map(|row| {
            let (verdict, problems) = match &row.verdict {
                Verdict::Within => ("ok", vec![]),
                Verdict::Exceeded(broken) => ("over_budget", broken.clone()),
                Verdict::NoBudget => ("no_budget", vec![]),
                Verdict::Failed(why) => ("compile_failed", vec![why.clone()]),
            };
            json!({
                "label": row.label,
                "report": row.report,
                "budget": row.budget,
                "verdict": verdict,
                "problems": problems,
            })
        })
        .collect();
    json!({
        "arch": outcome.arch,
        "kernels_hash": kernels_hash,
        "nvrtc": compiler.nvrtc().map(|n| n.version_string()),
        "compiler": compiler.describe(),
        "passed": outcome.passed(),
        "variants": rows,
        "stale_budget_entries": outcome.stale,
        "duplicate_labels": outcome.duplicates,
    })
}
