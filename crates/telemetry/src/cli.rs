//! Command-line front ends shared by `ssmk gate` / `ssmk plot` and this crate's
//! `ssm-results` binary: the argument structs (clap) and their `run` functions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::error::{Result, TelemetryError};
use crate::gate::{compare, GateOptions};
use crate::ncu::{self, ManifestEntry};
use crate::peers::{is_peer, peer_for, ratio};
use crate::record::{BenchResult, ResultSet, TimingMethod};
use crate::roofline::{Ceilings, Floor};
use crate::traffic::cost;
use crate::workloads::{reference_workload, reference_workloads};

/// `gate`: fail when the new results regress against the baseline of their device.
#[derive(Args, Debug, Clone)]
pub struct GateArgs {
    /// Baseline result set. Default: the baseline of the new set's device,
    /// `<baselines-dir>/<slug of device.name>.json`.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Where the per-device baselines are (used without --baseline).
    #[arg(long, default_value = crate::gate::BASELINES_DIR)]
    pub baselines_dir: PathBuf,
    /// New result set.
    #[arg(long = "new")]
    pub new: PathBuf,
    /// Slow-down tolerated on top of the measured spread (0.05 = 5%).
    #[arg(long, default_value_t = 0.05)]
    pub noise: f64,
    /// Growth of measured DRAM bytes tolerated (0.02 = 2%).
    #[arg(long, default_value_t = 0.02)]
    pub bytes_tolerance: f64,
    /// Baseline results missing from the new set are notes, not failures.
    #[arg(long)]
    pub allow_missing: bool,
    /// Compare sets from different devices (times skipped).
    #[arg(long)]
    pub allow_device_change: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The baseline `args` name, or the one of `new`'s device; an error names the
/// device and the file expected when it has none.
pub fn gate_baseline(args: &GateArgs, new: &ResultSet) -> Result<(PathBuf, ResultSet)> {
    let path = match &args.baseline {
        Some(p) => p.clone(),
        None => {
            let p = crate::gate::baseline_path(&args.baselines_dir, &new.device.name);
            if !p.is_file() {
                return Err(TelemetryError::Mismatch(format!(
                    "no gate baseline for device `{}`: expected {} (adopt a reviewed result set of that card by copying it there, or pass --baseline)",
                    new.device.name,
                    p.display()
                )));
            }
            p
        }
    };
    let set = ResultSet::read(&path)?;
    Ok((path, set))
}

/// Run the gate; exit 0 on pass, 1 on a regression, 2 when an input cannot be read
/// or the device has no baseline.
pub fn run_gate(args: &GateArgs) -> ExitCode {
    let new = match ResultSet::read(&args.new) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gate: {e}");
            return ExitCode::from(2);
        }
    };
    let baseline = match gate_baseline(args, &new) {
        Ok((path, set)) => {
            println!("gate: baseline {} ({})", path.display(), set.device.name);
            set
        }
        Err(e) => {
            eprintln!("gate: {e}");
            return ExitCode::from(2);
        }
    };
    if !(args.noise >= 0.0 && args.bytes_tolerance >= 0.0) {
        eprintln!("gate: --noise and --bytes-tolerance must be non-negative");
        return ExitCode::from(2);
    }
    let opts = GateOptions {
        time_noise: args.noise,
        bytes_tolerance: args.bytes_tolerance,
        allow_missing: args.allow_missing,
        allow_device_change: args.allow_device_change,
    };
    let report = compare(&baseline, &new, &opts);
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("gate: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `plot`: SVG plots of result files.
#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// Result sets (schema version 1 or 2) or folders searched for `*.json`.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder the SVG files are written to.
    #[arg(long, default_value = "docs/plots")]
    pub out: PathBuf,
}

/// Every `*.json` under `path` (or `path` itself), sorted.
fn json_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| TelemetryError::io(path, e))?;
    for entry in entries {
        let p = entry.map_err(|e| TelemetryError::io(path, e))?.path();
        if p.is_dir() {
            files.extend(json_files(&p)?);
        } else if p.extension().is_some_and(|e| e == "json") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// `plot`: write the SVGs; exit 0, or 2 on an unreadable input or output.
pub fn run_plot(args: &PlotArgs) -> ExitCode {
    let mut sets = Vec::new();
    for input in &args.inputs {
        let files = match json_files(input) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("plot: {e}");
                return ExitCode::from(2);
            }
        };
        for file in files {
            match ResultSet::read(&file) {
                Ok(set) => sets.push(set),
                // Folders hold other JSON too (manifests, verify tables): say and go on.
                Err(e) => eprintln!("plot: skipping {}: {e}", file.display()),
            }
        }
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("plot: {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let results: usize = sets.iter().map(|s| s.results.len()).sum();
    for (name, svg) in crate::plot::plots(&sets) {
        let path = args.out.join(&name);
        if let Err(e) = std::fs::write(&path, svg) {
            eprintln!("plot: {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("wrote {}", path.display());
    }
    println!("{} result sets, {results} results", sets.len());
    ExitCode::SUCCESS
}

/// `merge-ncu`: attach ncu's DRAM bytes to a result set.
#[derive(Args, Debug, Clone)]
pub struct MergeNcuArgs {
    /// The result set (this schema) to update.
    #[arg(long)]
    pub results: PathBuf,
    /// ncu's CSV output (`--csv`, details or raw page).
    #[arg(long)]
    pub ncu: PathBuf,
    /// The manifest the bench binary wrote with `--ncu-manifest`.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Where to write the merged set (default: overwrite `--results`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `merge-ncu`'s work: read the result set, ncu's CSV and the manifest, attach
/// each result's measured DRAM bytes and write the set (to `--out`, else in
/// place). Returns how many results got bytes.
pub fn merge_ncu(args: &MergeNcuArgs) -> Result<usize> {
    let mut set = ResultSet::read(&args.results)?;
    let csv = std::fs::read_to_string(&args.ncu).map_err(|e| TelemetryError::io(&args.ncu, e))?;
    let launches = ncu::parse_csv(&csv, &args.ncu.display().to_string())?;
    let manifest_text = std::fs::read_to_string(&args.manifest)
        .map_err(|e| TelemetryError::io(&args.manifest, e))?;
    let manifest: Vec<ManifestEntry> = serde_json::from_str(&manifest_text)
        .map_err(|e| TelemetryError::parse(args.manifest.display().to_string(), e.to_string()))?;
    let attached = ncu::attach(&mut set, &launches, &manifest)?;
    set.run.notes.push(format!(
        "DRAM bytes: ncu --clock-control none, {} launches, attached to {attached} results",
        launches.len()
    ));
    set.write(args.out.as_ref().unwrap_or(&args.results))?;
    Ok(attached)
}

/// `merge-ncu`: [`merge_ncu`], exit 0 or 1 with the error.
pub fn run_merge_ncu(args: &MergeNcuArgs) -> ExitCode {
    match merge_ncu(args) {
        Ok(n) => {
            println!("merge-ncu: DRAM bytes attached to {n} results");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("merge-ncu: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `merge-peers`: file a peer timing file (ci/peers/peers.py) taken in the same
/// device run into a result set, with floors at that set's ceilings.
#[derive(Args, Debug, Clone)]
pub struct MergePeersArgs {
    /// The result set (this schema) to update.
    #[arg(long)]
    pub results: PathBuf,
    /// The peer timing file (`ssm-peer-timings`).
    #[arg(long)]
    pub peers: PathBuf,
    /// Where to write the merged set (default: overwrite `--results`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `merge-peers`: file the peers into the set (to `--out`, else in place); exit
/// 0 or 1 with the error.
pub fn run_merge_peers(args: &MergePeersArgs) -> ExitCode {
    let merged = ResultSet::read(&args.results).and_then(|mut set| {
        let text =
            std::fs::read_to_string(&args.peers).map_err(|e| TelemetryError::io(&args.peers, e))?;
        let n = set.add_peer_file(&text, &args.peers.display().to_string())?;
        set.write(args.out.as_ref().unwrap_or(&args.results))?;
        Ok(n)
    });
    match merged {
        Ok(n) => {
            println!("merge-peers: {n} peer results filed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("merge-peers: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `floors`: the floors of docs/DESIGN.md §6's workloads at some ceilings.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct FloorsArgs {
    /// Use the ceilings recorded in this result set (measured in its run, or its
    /// datasheet fallback).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Use the datasheet figures of this card (a CUDA device name, e.g. "NVIDIA H200").
    #[arg(long)]
    pub device: Option<String>,
}

/// `floors`: print the floors table; exit 0, or 2 on an unreadable input.
pub fn run_floors(args: &FloorsArgs) -> ExitCode {
    let ceilings = match (&args.results, &args.device) {
        (Some(path), _) => match ResultSet::read(path) {
            Ok(set) => set.ceilings,
            Err(e) => {
                eprintln!("floors: {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(name)) => Ceilings::datasheet(name),
        (None, None) => {
            eprintln!("floors: pass --results SET.json or --device NAME");
            return ExitCode::from(2);
        }
    };
    print!("{}", floors_table(&ceilings));
    ExitCode::SUCCESS
}

/// The floors of docs/DESIGN.md §6's workloads, as a markdown table, with the
/// ceilings' source on the first line.
pub fn floors_table(ceilings: &Ceilings) -> String {
    let mut out = format!("Ceilings ({}): {}\n\n", ceilings.kind(), ceilings.source);
    out += concat!(
        "| workload | shape | min bytes | bytes floor | MMA floor | exp floor | floor (limiter) | mamba_ssm (H100) / floor |\n",
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for w in reference_workloads() {
        let c = cost(&w.problem);
        let f = Floor::of(&c, ceilings);
        out += &format!(
            "| {} | {} | {:.1} MB | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms ({}) | {:.1}x |\n",
            w.name,
            w.problem.label(),
            c.bytes() as f64 / 1e6,
            f.bytes_ms,
            f.mma_ms,
            f.exp_ms,
            f.floor_ms,
            f.limiter,
            w.mamba_ssm_ms / f.floor_ms
        );
    }
    out
}

/// `show`: one line per result.
#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// Result sets (schema version 1 or 2).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// `show`: print each input's summary table; exit 2 if any input is unreadable.
pub fn run_show(args: &ShowArgs) -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for input in &args.inputs {
        match ResultSet::read(input) {
            Ok(set) => print!("{}", summary_table(&set)),
            Err(e) => {
                eprintln!("show: {e}");
                status = ExitCode::from(2);
            }
        }
    }
    status
}

/// A fixed-width table of a result set: our results with the paired peer's
/// median and the ratio (peer / ours, above 1: ours is faster), then the peers.
pub fn summary_table(set: &ResultSet) -> String {
    let mut out = format!(
        "{} | commit {} | kernels {} | {}\nceilings ({}): {}\n",
        set.device.name,
        set.run
            .commit
            .as_deref()
            .map_or("?", |c| &c[..c.len().min(12)]),
        &set.run.kernels_hash[..set.run.kernels_hash.len().min(12)],
        set.run.tool,
        set.ceilings.kind(),
        set.ceilings.source
    );
    out += &format!(
        "{:<62} {:>10} {:>7} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9} {:>7} {:>5}\n",
        "id",
        "median ms",
        "spread",
        "floor ms",
        "of floor",
        "GB/s",
        "meas/min",
        "verified",
        "peer ms",
        "ratio",
        "thr"
    );
    let (peers, ours): (Vec<&BenchResult>, Vec<&BenchResult>) =
        set.results.iter().partition(|r| is_peer(r));
    for r in ours {
        let peer = peer_for(set, r);
        out += &format!(
            "{} {:>8.0} {:>9} {:>8} {:>9} {:>7} {:>5}\n",
            timing_columns(r),
            r.throughput.model_gb_per_s,
            r.hbm
                .measured_over_model
                .map_or("-".to_string(), |x| format!("{x:.2}")),
            r.verification
                .as_ref()
                .map_or("-", |v| if v.passed { "yes" } else { "FAILED" }),
            peer.map_or("-".to_string(), |p| format!("{:.4}", p.timing.median_ms)),
            peer.map_or("-".to_string(), |p| format!("{:.2}x", ratio(r, p))),
            if r.throttled { "YES" } else { "no" }
        );
    }
    if !peers.is_empty() {
        out += "peers (timed by ci/peers in the same run):\n";
        for r in peers {
            out += &format!(
                "{}{}\n",
                timing_columns(r),
                r.note
                    .as_deref()
                    .map_or(String::new(), |n| format!("  ({n})"))
            );
        }
    }
    out
}

/// The columns every row of the summary starts with: id, median, spread,
/// floor and fraction of the floor.
fn timing_columns(r: &BenchResult) -> String {
    format!(
        "{:<62} {:>10.4} {:>6.1}% {:>9.4} {:>8.1}%",
        r.id,
        r.timing.median_ms,
        100.0 * r.timing.spread,
        r.roofline.floor_ms,
        100.0 * r.roofline.fraction_of_floor,
    )
}

/// `readme-table`: the README status table from a result set.
#[derive(Args, Debug, Clone)]
pub struct ReadmeTableArgs {
    /// The result set (this schema).
    pub set: PathBuf,
}

/// `readme-table`: print the README table; exit 0, or 2 on an unreadable set.
pub fn run_readme_table(args: &ReadmeTableArgs) -> ExitCode {
    match ResultSet::read(&args.set) {
        Ok(set) => {
            print!("{}", readme_table(&set));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("readme-table: {e}");
            ExitCode::from(2)
        }
    }
}

/// The README's status table (markdown) from a result set: one row per bf16 GPU
/// result of ours on a docs/DESIGN.md §6 workload or with a paired peer, in the set's
/// order, with the floor at the set's ceilings and the peer's time and ratio;
/// then the peers' other passes (forward+backward) that none of ours pairs with.
/// A caption line names the device, commit and ceilings.
pub fn readme_table(set: &ResultSet) -> String {
    let short = |s: &str| s[..s.len().min(8)].to_string();
    let mut out = format!(
        "{}, commit {}, kernels {}; floors at {} ceilings: {}\n\n",
        set.device.name,
        set.run.commit.as_deref().map_or("?".to_string(), short),
        short(&set.run.kernels_hash),
        set.ceilings.kind(),
        set.ceilings.source
    );
    out += "| workload | shape | pass | ours ms | floor ms (limiter) | of floor | peer | peer ms | peer / ours |\n";
    out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    let floor = |r: &BenchResult| format!("{:.3} ({})", r.roofline.floor_ms, r.roofline.limiter);
    let mut paired = Vec::new();
    for r in &set.results {
        if is_peer(r)
            || r.timing.method != TimingMethod::CudaEvents
            || r.problem.dtype() != ssm_core::DType::Bf16
        {
            continue;
        }
        let peer = peer_for(set, r);
        if peer.is_none() && reference_workload(&r.workload).is_none() {
            continue;
        }
        if let Some(p) = peer {
            paired.push(p.id.as_str());
        }
        out += &format!(
            "| {} | {} | {} | {:.3} | {} | {:.0}% | {} | {} | {} |\n",
            r.workload,
            r.problem.label(),
            r.pass,
            r.timing.median_ms,
            floor(r),
            100.0 * r.roofline.fraction_of_floor,
            peer.map_or("-".to_string(), |p| format!("`{}`", p.implementation)),
            peer.map_or("-".to_string(), |p| format!("{:.3}", p.timing.median_ms)),
            peer.map_or("-".to_string(), |p| format!("{:.2}x", ratio(r, p))),
        );
    }
    for p in set
        .results
        .iter()
        .filter(|p| {
            is_peer(p)
                && p.pass != crate::problem::Pass::Forward
                && !paired.contains(&p.id.as_str())
        })
        .filter(|p| p.problem.dtype() == ssm_core::DType::Bf16)
    {
        out += &format!(
            "| {} | {} | {} | - | {} | - | `{}` | {:.3} | - |\n",
            p.workload,
            p.problem.label(),
            p.pass,
            floor(p),
            p.implementation,
            p.timing.median_ms
        );
    }
    out
}
