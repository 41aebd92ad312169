//! `bench_decode_graph`: what one decode step costs when a server replays it
//! from a CUDA graph, against launching it on a stream (issue 16: at most 3 µs
//! per step at b = 1 replayed from a graph on the H200).
//!
//! For each decode case (the suite's `decode-b1`, bf16: Mamba-1 D_in 5120 N 16,
//! Mamba-2 H 80 P 64 N 128; `--batch` for others) it builds the case with the
//! harness (`ssm_benches::gpu::prepare`), checks the first step against the f64
//! oracle, then measures, all with CUDA events after warm-up:
//! - `stream, event pair`: each launch between its own pair of events (the
//!   suite's method);
//! - `stream, back to back`: `--steps` launches between two events, divided;
//! - `graph replay`: `--steps` launches captured in one graph (on a stream of
//!   its own, event tracking off), replayed `--iters` times, divided.
//!
//! `--state-dtypes f32,bf16` (default `f32`) times each case once per state
//! type: the state cache stored as that type (Mamba-2's v6; Mamba-1's state is
//! f32 only, its other rows are skipped with a note), the same tiling otherwise,
//! so one run reports f32 and bf16 state side by side. `--tilings` also lists
//! the bf16- and f16-state candidates.
//!
//! After the replays every output must still be finite (a replayed launch that
//! wrote garbage shows). Prints a table; `--json PATH` writes the numbers with
//! the device, the commit and the kernel hash. Exits 1 when a check fails, 2 on
//! setup errors; `--target-us X` makes a graph-replay median above X µs a
//! failure too.
//!
//! ```text
//! bench_decode_graph [--batch 1] [--steps 64] [--iters 200] [--json out.json] [--target-us 3] [--tilings] [--state-dtypes f32,bf16]
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ssm_benches::events::{time_batch, EventPairs};
use ssm_benches::gpu::{
    decode_default_label, prepare, prepare_decode_state, prepare_decode_tilings, GpuWork,
};
use ssm_benches::suite::{Backend, Case};
use ssm_core::DType;
use ssm_gpu::cudarc::driver::CudaContext;
use ssm_gpu::{Gpu, GpuError};
use ssm_telemetry::workloads::{mamba1_decode, mamba2_decode};

#[derive(Parser)]
#[command(
    name = "bench_decode_graph",
    about = "Decode steps replayed from CUDA graphs"
)]
struct Args {
    /// Batch of the decode step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Launches per graph (and per back-to-back batch).
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// Timed graph replays (and event pairs: `iters * steps`, at most 20000).
    #[arg(long, default_value_t = 200)]
    iters: usize,
    /// Write the results here as JSON (default: `$SSM_RESULTS_DIR/decode-graph.json`
    /// when that is set).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Fail when a graph-replay median exceeds this many microseconds.
    #[arg(long)]
    target_us: Option<f64>,
    /// Also replay every tiling the family's `candidates()` lists (each
    /// checked against the f64 oracle first), to find the fastest one at this
    /// batch.
    #[arg(long)]
    tilings: bool,
    /// The state cache's storage types to time, comma-separated (f32, bf16,
    /// f16): each case once per type, with the tiling it launches at this batch.
    #[arg(long, default_value = "f32", value_delimiter = ',', value_parser = parse_dtype)]
    state_dtypes: Vec<DType>,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::Bf16),
        "f16" => Ok(DType::F16),
        _ => Err(format!("state dtype {s:?}: expected f32, bf16 or f16")),
    }
}

/// The case's work with its state stored as `state` (f32: what the suite
/// times), and the kernel label it launches.
fn make_work(
    gpu: &Gpu,
    case: &Case,
    state: DType,
) -> Result<(String, Box<dyn GpuWork>), ssm_core::SsmError> {
    if state == DType::F32 {
        let work = prepare(gpu, case, 1)?;
        Ok((decode_default_label(case).unwrap_or_default(), work))
    } else {
        prepare_decode_state(gpu, case, 1, state)
    }
}

#[derive(serde::Serialize)]
struct Row {
    case: String,
    /// The state cache's storage type.
    state_dtype: DType,
    /// The kernel variant the case launches by default at this batch.
    tiling: String,
    stream_event_pair_us: f64,
    stream_back_to_back_us: f64,
    graph_replay_us: f64,
    graph_replay_min_us: f64,
    steps_per_graph: usize,
    replays: usize,
    oracle_rel_l2: f64,
    oracle_budget: f64,
    /// With `--tilings`: (tiling, graph replay median us) of each candidate.
    tiling_sweep: Vec<(String, f64)>,
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("bench_decode_graph: {what}: {e}");
    ExitCode::from(2)
}

/// A `Gpu` whose launches can be captured: its own stream, and cudarc's
/// cross-stream event tracking off (a capture cannot wait on events recorded
/// outside it).
fn graph_gpu() -> Result<Gpu, GpuError> {
    let ctx: Arc<CudaContext> = CudaContext::new(0)?;
    // SAFETY: every buffer this Gpu makes is used on its one stream only.
    unsafe { ctx.disable_event_tracking() };
    Gpu::from_stream(ctx.new_stream()?)
}

fn launcher<'a>(
    work: &'a mut dyn GpuWork,
    gpu: &'a Gpu,
) -> impl FnMut() -> Result<(), GpuError> + 'a {
    move || {
        work.launch(gpu)
            .map_err(|e| GpuError::InvalidArgument(e.to_string()))
    }
}

/// (tiling, graph-replay median µs per step) of each candidate.
type Sweep = Vec<(String, f64)>;

/// Graph-replay median per step of every candidate tiling of `case`'s family,
/// each checked against the f64 oracle first and its outputs checked finite
/// after the replays. A tiling that fails (or cannot be launched or captured)
/// is reported in the second list and timed as NaN; the others still run.
fn sweep_tilings(gpu: &Gpu, case: &Case, args: &Args) -> Result<(Sweep, Vec<String>), String> {
    let works = prepare_decode_tilings(gpu, case, 1).map_err(|e| e.to_string())?;
    let (mut sweep, mut errors) = (Vec::new(), Vec::new());
    for (tiling, mut work) in works {
        let timed = (|| -> Result<f64, String> {
            let check = work.verify(gpu).map_err(|e| e.to_string())?;
            if !check.passed {
                return Err(format!(
                    "FAILED the f64 oracle: rel L2 {:.3e} > {:.3e}",
                    check.rel_l2, check.budget
                ));
            }
            let t = gpu
                .time_graph(10, args.iters, args.steps, launcher(work.as_mut(), gpu))
                .map_err(|e| e.to_string())?;
            match work.bad_outputs(gpu).map_err(|e| e.to_string())? {
                0 => Ok(t.median_ms * 1e3),
                n => Err(format!("{n} non-finite outputs after the graph replays")),
            }
        })();
        match timed {
            Ok(us) => sweep.push((tiling, us)),
            Err(e) => {
                errors.push(format!("{tiling}: {e}"));
                sweep.push((tiling, f64::NAN));
            }
        }
    }
    Ok((sweep, errors))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stream_gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => return setup_error("no GPU", e),
    };
    let graph_gpu = match graph_gpu() {
        Ok(g) => g,
        Err(e) => return setup_error("a Gpu on a capturable stream", e),
    };
    let cases = [
        Case::new(
            Backend::Cuda,
            format!("decode-b{}", args.batch),
            mamba1_decode(args.batch, 5120, 16, DType::Bf16),
        ),
        Case::new(
            Backend::Cuda,
            format!("decode-b{}", args.batch),
            mamba2_decode(args.batch, 80, 64, 128, DType::Bf16),
        ),
    ];
    println!(
        "{} | commit {} | kernels {}",
        stream_gpu.describe(),
        option_env!("SSM_GIT_COMMIT").unwrap_or("(see manifest)"),
        &ssm_gpu::KERNELS_HASH[..12]
    );
    let mut rows = Vec::new();
    let mut failed = false;
    let runs = cases
        .iter()
        .flat_map(|case| args.state_dtypes.iter().map(move |&state| (case, state)));
    for (case, state) in runs {
        let name = match state {
            DType::F32 => format!("{}/{}", case.id(), case.workload),
            s => format!("{}/{} state {s}", case.id(), case.workload),
        };
        if state != DType::F32
            && matches!(case.problem, ssm_telemetry::problem::Problem::Mamba1Step(_))
        {
            println!("{name}: skipped (the Mamba-1 decode state is f32 only)");
            continue;
        }
        // Stream launches, as the suite times them.
        let (tiling_label, mut work) = match make_work(&stream_gpu, case, state) {
            Ok(w) => w,
            Err(e) => return setup_error(&name, e),
        };
        let check = match work.verify(&stream_gpu) {
            Ok(v) => v,
            Err(e) => return setup_error(&format!("{name}: verify"), e),
        };
        if !check.passed {
            eprintln!(
                "{name}: FAILED the f64 oracle: rel L2 {:.3e} > {:.3e}",
                check.rel_l2, check.budget
            );
            failed = true;
            continue;
        }
        let timed = (args.iters * args.steps).min(20_000);
        let result = (|| -> Result<(f64, f64), GpuError> {
            for _ in 0..10 {
                work.launch(&stream_gpu)
                    .map_err(|e| GpuError::InvalidArgument(e.to_string()))?;
            }
            let pairs = EventPairs::new(&stream_gpu, timed)?;
            let mut samples = pairs.time(&stream_gpu, work.as_mut())?;
            samples.sort_by(f64::total_cmp);
            let per_pair = samples[samples.len() / 2];
            let batches = (0..args.iters.min(100))
                .map(|_| {
                    Ok(
                        time_batch(&stream_gpu, work.as_mut(), args.steps as u64)?.as_secs_f64()
                            * 1e3
                            / args.steps as f64,
                    )
                })
                .collect::<Result<Vec<f64>, GpuError>>()?;
            let mut batches = batches;
            batches.sort_by(f64::total_cmp);
            Ok((per_pair, batches[batches.len() / 2]))
        })();
        let (per_pair, back_to_back) = match result {
            Ok(r) => r,
            Err(e) => return setup_error(&format!("{name}: stream timing"), e),
        };

        // The same case on the capturable stream, replayed from a graph.
        let mut gwork = match make_work(&graph_gpu, case, state) {
            Ok((_, w)) => w,
            Err(e) => return setup_error(&format!("{name} (graph)"), e),
        };
        match gwork.verify(&graph_gpu) {
            Ok(v) if v.passed => {}
            Ok(v) => {
                eprintln!(
                    "{name} (graph Gpu): FAILED the f64 oracle: rel L2 {:.3e}",
                    v.rel_l2
                );
                failed = true;
                continue;
            }
            Err(e) => return setup_error(&format!("{name} (graph): verify"), e),
        }
        let graph = graph_gpu.time_graph(
            10,
            args.iters,
            args.steps,
            launcher(gwork.as_mut(), &graph_gpu),
        );
        let graph = match graph {
            Ok(t) => t,
            Err(e) => return setup_error(&format!("{name}: graph replay"), e),
        };
        match gwork.bad_outputs(&graph_gpu) {
            Ok(0) => {}
            Ok(n) => {
                eprintln!("{name}: {n} non-finite outputs after the graph replays");
                failed = true;
            }
            Err(e) => return setup_error(&format!("{name}: outputs"), e),
        }
        let row = Row {
            case: name,
            state_dtype: state,
            tiling: tiling_label,
            stream_event_pair_us: per_pair * 1e3,
            stream_back_to_back_us: back_to_back * 1e3,
            graph_replay_us: graph.median_ms * 1e3,
            graph_replay_min_us: graph.min_ms * 1e3,
            steps_per_graph: args.steps,
            replays: args.iters,
            oracle_rel_l2: check.rel_l2,
            oracle_budget: check.budget,
            tiling_sweep: Vec::new(),
        };
        let mut row = row;
        // The sweep once per case (it lists the 16-bit-state candidates too).
        if args.tilings && state == args.state_dtypes[0] {
            match sweep_tilings(&graph_gpu, case, &args) {
                Ok((sweep, errors)) => {
                    for e in &errors {
                        eprintln!("{}: tiling sweep: {e}", row.case);
                    }
                    failed |= !errors.is_empty();
                    row.tiling_sweep = sweep;
                }
                Err(e) => {
                    eprintln!("{}: tiling sweep: {e}", row.case);
                    failed = true;
                }
            }
        }
        if let Some(target) = args.target_us {
            if row.graph_replay_us > target {
                eprintln!(
                    "{}: graph replay {:.2} us per step is over the {target} us target",
                    row.case, row.graph_replay_us
                );
                failed = true;
            }
        }
        rows.push(row);
    }
    println!(
        "{:<36} {:>14} {:>14} {:>14} {:>10}",
        "case", "event pair us", "back2back us", "graph us", "graph min"
    );
    for r in &rows {
        println!(
            "{:<36} {:>14.2} {:>14.2} {:>14.2} {:>10.2}  {}",
            r.case,
            r.stream_event_pair_us,
            r.stream_back_to_back_us,
            r.graph_replay_us,
            r.graph_replay_min_us,
            r.tiling
        );
    }
    for r in &rows {
        for (tiling, us) in &r.tiling_sweep {
            println!("  {:<34} graph {us:>8.2} us  {tiling}", r.case);
        }
    }
    // On the device machine the results directory collects it (ci/device-run.sh).
    let json = args.json.clone().or_else(|| {
        std::env::var_os("SSM_RESULTS_DIR")
            .map(|d| std::path::Path::new(&d).join("decode-graph.json"))
    });
    if let Some(path) = &json {
        let doc = serde_json::json!({
            "device": stream_gpu.device_name(),
            "kernels_hash": ssm_gpu::KERNELS_HASH,
            "method": "CUDA events after 10 warm-up launches; graph: steps launches captured once, replayed iters times, median per step",
            "rows": rows,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            return setup_error(&format!("writing {}", path.display()), e);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
