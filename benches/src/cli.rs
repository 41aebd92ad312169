//! `ssmk bench` and the `bench_suite` binary: run the suites, print a table,
//! write the JSON result set; or launch each GPU case once for ncu.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ssm_core::DType;
use ssm_gpu::Gpu;
use ssm_telemetry::nvml::NvmlMonitor;
use ssm_telemetry::progress::Progress;
use ssm_telemetry::shape_arg::{parse_problem, ShapeOp};
use ssm_telemetry::sram::SmLimits;
use ssm_telemetry::Ceilings;

use crate::runner::{self, CaseOutcome, Timing};
use crate::suite::{cpu_cases, gpu_cases, reference_cases, Backend, Case};

/// Which cases to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// GPU kernels when a GPU is present, else the CPU ports.
    Auto,
    Gpu,
    Cpu,
    Reference,
    All,
}

/// Arguments of `ssmk bench` / `bench_suite`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which cases: auto (GPU if present, else CPU ports), gpu, cpu, reference, all.
    #[arg(long, value_enum, default_value_t = Suite::Auto)]
    pub suite: Suite,
    /// Trimmed sweeps (every family, fewer points).
    #[arg(long)]
    pub quick: bool,
    /// Only cases whose id contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Write the result set here (default: $SSM_RESULTS_DIR/bench_suite.json when set).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Least timed window per case, in ms.
    #[arg(long, default_value_t = 300)]
    pub min_time_ms: u64,
    /// Most timed launches per GPU case.
    #[arg(long, default_value_t = 20_000)]
    pub max_iters: usize,
    /// Seed of the inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// List the selected cases and exit.
    #[arg(long)]
    pub list: bool,
    /// Fail (exit 1) when no GPU is usable instead of running CPU cases only.
    #[arg(long)]
    pub require_gpu: bool,
    /// Launch each GPU case once (for `ncu`) and write the kernel manifest here;
    /// nothing is timed.
    #[arg(long)]
    pub ncu_manifest: Option<PathBuf>,
    /// Where the floors' ceilings come from: `measured` on this card at the start
    /// of the run (copy, bf16 MMA, exp2), or the `datasheet` table (the result set
    /// then says the floors were not measured).
    #[arg(long, value_enum, default_value_t = CeilingSource::Measured)]
    pub ceilings: CeilingSource,
    /// Time one problem of your own instead of the suite: `ssd`, `scan`, `m1-step`
    /// or `m2-step` with `--shape` (e.g. `--op ssd --shape b=2,L=4097,H=24,P=64,N=96,G=3
    /// --options all --dtype bf16 --chunk 128`); verified against the oracle, then timed,
    /// printing time, floor and % of floor like every suite case.
    #[arg(long, value_enum, requires = "shape")]
    pub op: Option<ShapeOpArg>,
    /// The shape of `--op`, `key=value` comma-separated: ssd `b,L,H,P,N[,G]`, scan
    /// `b,D,N,L[,G]`, m1-step `b,D,N[,G]`, m2-step `b,H,P,N[,G]`.
    #[arg(long, requires = "op")]
    pub shape: Option<String>,
    /// Options of `--op`: `all`, `none` or a comma list (ssd z,D,Dp,bias,softplus,s0,final;
    /// scan z,D,bias,softplus,h0,final; steps z,D,(Dp),bias,softplus).
    #[arg(long, default_value = "all")]
    pub options: String,
    /// Element type of `--op`'s inputs: f32, f16, bf16.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Chunk length of `--op ssd` (64, 128 or 256 on the GPU).
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// A peer timing file from `ci/peers/peers.py` (mamba_ssm, fla timed on this
    /// card in this run): its rows join the result set, with floors at this run's
    /// ceilings, so reports show the ratio.
    #[arg(long)]
    pub peers: Option<PathBuf>,
}

/// The operations `--op` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeOpArg {
    Ssd,
    Scan,
    #[value(name = "m1-step")]
    M1Step,
    #[value(name = "m2-step")]
    M2Step,
}

impl From<ShapeOpArg> for ShapeOp {
    fn from(op: ShapeOpArg) -> ShapeOp {
        match op {
            ShapeOpArg::Ssd => ShapeOp::Ssd,
            ShapeOpArg::Scan => ShapeOp::Scan,
            ShapeOpArg::M1Step => ShapeOp::Mamba1Step,
            ShapeOpArg::M2Step => ShapeOp::Mamba2Step,
        }
    }
}

/// The one case of `--op/--shape`, on the GPU when there is one, else the CPU port.
fn custom_case(args: &BenchArgs, have_gpu: bool) -> Result<Option<Case>, String> {
    let (Some(op), Some(shape)) = (args.op, args.shape.as_deref()) else {
        return Ok(None);
    };
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::Bf16,
        other => return Err(format!("--dtype {other}: expected f32, f16 or bf16")),
    };
    let problem = parse_problem(op.into(), shape, &args.options, dtype, args.chunk)?;
    let backend = if have_gpu {
        Backend::Cuda
    } else {
        Backend::Cpu
    };
    Ok(Some(Case::new(backend, "custom", problem)))
}

/// Where a run's ceilings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CeilingSource {
    Measured,
    Datasheet,
}

fn open_gpu(require: bool) -> Result<Option<Gpu>, String> {
    match Gpu::new(0) {
        Ok(g) => Ok(Some(g)),
        Err(e) if require => Err(format!("--require-gpu, but no GPU is usable: {e}")),
        Err(e) => {
            eprintln!("NO GPU: {e}");
            Ok(None)
        }
    }
}

fn selected(args: &BenchArgs, have_gpu: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    let suite = match args.suite {
        Suite::Auto if have_gpu => Suite::Gpu,
        Suite::Auto => Suite::Cpu,
        s => s,
    };
    if matches!(suite, Suite::Gpu | Suite::All) {
        cases.extend(gpu_cases(args.quick));
    }
    if matches!(suite, Suite::Cpu | Suite::All) {
        cases.extend(cpu_cases(args.quick));
    }
    if matches!(suite, Suite::Reference | Suite::All) {
        cases.extend(reference_cases());
    }
    cases.retain(|c| c.matches(args.filter.as_deref()));
    cases
}

fn output_path(args: &BenchArgs) -> Option<PathBuf> {
    args.json.clone().or_else(|| {
        std::env::var_os("SSM_RESULTS_DIR").map(|d| PathBuf::from(d).join("bench_suite.json"))
    })
}

/// Run `ssmk bench`. Exit 0 when every selected case was measured or skipped
/// for a stated reason, 1 when any failed, 2 on a usage or output error.
pub fn run(args: &BenchArgs) -> ExitCode {
    let gpu = match open_gpu(args.require_gpu || args.ncu_manifest.is_some()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cases = match custom_case(args, gpu.is_some()) {
        Ok(Some(case)) => vec![case],
        Ok(None) => selected(args, gpu.is_some()),
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for c in &cases {
            println!("{}  [{}]", c.id(), c.problem.label());
        }
        return ExitCode::SUCCESS;
    }
    if let (Some(path), Some(gpu)) = (&args.ncu_manifest, gpu.as_ref()) {
        return write_manifest(gpu, &cases, args.seed, path);
    }
    if gpu.is_none() && cases.iter().any(|c| c.backend == Backend::Cuda) {
        eprintln!(
            "SKIPPED: every CUDA case ({} of them): no GPU on this machine",
            cases.iter().filter(|c| c.backend == Backend::Cuda).count()
        );
    }
    let nvml = match gpu.as_ref().map(|_| NvmlMonitor::open(0)) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            eprintln!("NVML: {e} (no clocks, power, energy or throttle data in this run)");
            None
        }
        None => None,
    };
    let timing = Timing {
        min_time: Duration::from_millis(args.min_time_ms),
        max_iters: args.max_iters,
        ..Timing::default()
    };
    let mut set = runner::new_result_set(
        gpu.as_ref(),
        nvml.as_ref(),
        concat!("ssm-benches ", env!("CARGO_PKG_VERSION")),
    );
    if let Some(g) = &gpu {
        println!("{}", g.describe());
        if args.ceilings == CeilingSource::Measured {
            let (measured, notes) = crate::ceilings::measure(g);
            set.ceilings = measured;
            set.run.notes.extend(notes);
        }
    }
    let ceilings = set.ceilings.clone();
    println!("ceilings: {}", ceilings_line(&ceilings));
    for note in &set.run.notes {
        println!("  {note}");
    }
    // The card's per-SM limits for the SRAM/occupancy records (never a baked-in card).
    let limits = match gpu.as_ref().map(|g| g.limits()) {
        Some(Ok(l)) => SmLimits::from_device(&l),
        Some(Err(e)) => {
            eprintln!("bench: reading the device's limits: {e}");
            return ExitCode::FAILURE;
        }
        None => SmLimits::H100_SXM,
    };
    println!(
        "kernels {} | commit {}",
        set.run.kernels_hash,
        set.run.commit.as_deref().unwrap_or("unknown")
    );
    let mut failed = 0;
    let mut progress = Progress::new("cases", cases.len() as u64);
    for (done, case) in cases.iter().enumerate() {
        progress.set(done as u64, &case.id());
        let outcome = match (case.backend, gpu.as_ref()) {
            (Backend::Cuda, Some(g)) => runner::measure_gpu(
                g,
                nvml.as_ref(),
                case,
                &timing,
                args.seed,
                &ceilings,
                &limits,
            ),
            (Backend::Cuda, None) => CaseOutcome::Skipped("no GPU".into()),
            _ => runner::measure_cpu(case, &timing, args.seed, &ceilings),
        };
        match outcome {
            CaseOutcome::Measured(r) => {
                progress.println(&format!(
                    "{:<60} {:>10.4} ms  {:>5.1}% of floor  {:>7.0} GB/s  {}{}",
                    r.id,
                    r.timing.median_ms,
                    100.0 * r.roofline.fraction_of_floor,
                    r.throughput.model_gb_per_s,
                    r.verification.as_ref().map_or(
                        "oracle (not checked)".to_string(),
                        |v| format!("verified {:.1e}/{:.1e}", v.rel_l2, v.budget)
                    ),
                    if r.throttled { "  THROTTLED" } else { "" }
                ));
                set.results.push(*r);
            }
            CaseOutcome::Skipped(why) => {
                progress.println(&format!("SKIPPED {}: {why}", case.id()));
                set.run.notes.push(format!("skipped {}: {why}", case.id()));
            }
            CaseOutcome::Failed(why) => {
                progress.println(&format!("FAILED {}: {why}", case.id()));
                set.run.notes.push(format!("FAILED {}: {why}", case.id()));
                failed += 1;
            }
        }
    }
    progress.set(cases.len() as u64, "done");
    progress.finish();
    if let Some(path) = &args.peers {
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                ssm_telemetry::peers::import(&text, &path.display().to_string(), &ceilings)
                    .map_err(|e| e.to_string())
            }) {
            Ok(rows) => {
                println!("peers: {} rows from {}", rows.len(), path.display());
                set.add_peers(rows);
            }
            Err(e) => {
                eprintln!("bench: --peers {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    println!();
    print!("{}", ssm_telemetry::cli::summary_table(&set));
    if let Some(path) = output_path(args) {
        if let Err(e) = set.write(&path) {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
        println!("wrote {} ({} results)", path.display(), set.results.len());
    }
    if failed > 0 {
        eprintln!("bench: {failed} cases FAILED");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_manifest(gpu: &Gpu, cases: &[Case], seed: u64, path: &PathBuf) -> ExitCode {
    let (manifest, skipped) = runner::profile_once(gpu, cases, seed);
    for (id, why) in &skipped {
        eprintln!("profile-once: not launched {id}: {why}");
    }
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("bench: writing {}: {e}", path.display());
        return ExitCode::from(2);
    }
    println!(
        "profile-once: {} cases launched once, manifest {}",
        manifest.len(),
        path.display()
    );
    ExitCode::SUCCESS
}

/// One line saying what the floors rest on.
fn ceilings_line(c: &Ceilings) -> String {
    format!(
        "copy {:.2} TB/s, bf16 MMA {:.0} TFLOP/s, exp2 {:.2} T/s ({}{})",
        c.hbm_bytes_per_s / 1e12,
        c.mma_flops_per_s / 1e12,
        c.exp_per_s / 1e12,
        if c.measured {
            "measured: "
        } else {
            "NOT measured: "
        },
        c.source
    )
}
