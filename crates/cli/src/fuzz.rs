//! `ssmk fuzz`: differential fuzzing from random seeds, CPU and GPU.
//!
//! Each case is drawn from a case seed (`case_seed(run seed, index)`): the seed
//! picks a target (scan, SSD, decode steps, malformed parameters, CPU
//! determinism) and the input bytes, which `ssm_verify::fuzz` decodes into a
//! problem exactly as the cargo-fuzz targets do. Every implementation runs on it
//! (the CUDA ones too when a GPU is present) and is judged against the f64
//! oracle by the rule of docs/FUZZING.md. The run stops at the first finding and
//! prints the `ssmk verify ... --fuzz-case SEED` command that replays it on its
//! exact inputs (with its shape, options and dtype spelled out), or
//! `ssmk fuzz --replay SEED` for the API and determinism targets. Progress (cases,
//! elapsed, ETA) is a bar on a terminal and a plain line every 10 s otherwise.
//! With `--shape` the cases are held at one shape instead (`crate::fuzz_shape`):
//! random data, options, dtype and chunk, each finding printed as the
//! `ssmk verify ... --seed SEED` command that replays it.
//!
//! Wiring (in main.rs): `mod fuzz;`, a `Fuzz(fuzz::FuzzArgs)` variant of
//! `Command`, and `Command::Fuzz(args) => fuzz::run(&args)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ssm_gpu::Gpu;
use ssm_verify::fuzz::{
    case_seed, random_case, replay_corpus, Class, Ctx, Finding, Outcome, Target,
};

use crate::GpuMode;
use ssm_telemetry::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Stop after this many cases (whichever of --seconds and --cases comes first).
    #[arg(long)]
    pub cases: Option<u64>,
    /// GPU use: auto (default), off, require.
    #[arg(long, value_enum, default_value_t = GpuMode::Auto)]
    pub gpu: GpuMode,
    /// Seed of the run (default: time-based).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run only the case with this case seed (printed with every finding).
    #[arg(long)]
    pub replay: Option<u64>,
    /// Only these targets, comma-separated (default: all): scan_diff, ssd_diff,
    /// step_diff, api_malformed, cpu_determinism, ssd_bwd_diff, scan_bwd_diff.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Fuzz data, options, dtype and chunk at this one shape (the syntax of
    /// `ssmk verify`): an SSD shape fuzzes ssd_diff and ssd_bwd_diff, a scan shape
    /// scan_diff and scan_bwd_diff; a finding prints its `ssmk verify ... --seed`.
    #[arg(long, conflicts_with_all = ["replay", "corpus"])]
    pub shape: Option<String>,
    /// Replay every file under this folder instead of random cases: either one
    /// target's corpus (`fuzz/corpus/scan_diff`) or the folder of all of them
    /// (`fuzz/corpus`, one subfolder per target).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Write the input of a finding to this folder (`<target>-<case seed>.bin`),
    /// ready to add to `fuzz/corpus/<target>/`.
    #[arg(long)]
    pub artifact_dir: Option<PathBuf>,
}

impl Default for FuzzArgs {
    fn default() -> Self {
        FuzzArgs {
            seconds: 60.0,
            cases: None,
            gpu: GpuMode::Auto,
            seed: None,
            replay: None,
            targets: Vec::new(),
            shape: None,
            corpus: None,
            artifact_dir: None,
        }
    }
}

fn open_gpu(mode: GpuMode) -> Result<Option<Gpu>, String> {
    let off = "fuzzing the CPU implementations only";
    mode.open(
        off,
        "the CUDA implementations are NOT fuzzed in this run",
        true,
    )
}

fn selected_targets(names: &[String]) -> Result<Vec<Target>, String> {
    let all = parse_targets(names)?;
    Ok(if all.is_empty() {
        Target::ALL.to_vec()
    } else {
        all
    })
}

/// The targets named (none when none are).
fn parse_targets(names: &[String]) -> Result<Vec<Target>, String> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    names
        .iter()
        .map(|n| {
            Target::from_name(n.trim()).ok_or_else(|| {
                let all: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                format!("unknown target `{n}` (targets: {})", all.join(", "))
            })
        })
        .collect()
}

pub fn run(args: &FuzzArgs) -> ExitCode {
    match run_inner(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `Ok(true)`: no finding.
fn run_inner(args: &FuzzArgs) -> Result<bool, String> {
    if let Some(shape) = &args.shape {
        // Usage errors (shape, targets) before a GPU is opened.
        let targets = crate::fuzz_shape::targets_for(shape, &parse_targets(&args.targets)?)?;
        let gpu = open_gpu(args.gpu)?;
        return crate::fuzz_shape::run(args, shape, &targets, gpu.as_ref());
    }
    let targets = selected_targets(&args.targets)?;
    let gpu = open_gpu(args.gpu)?;
    let ctx = Ctx { gpu: gpu.as_ref() };
    if let Some(dir) = &args.corpus {
        return replay_folder(dir, &targets, &ctx);
    }
    if let Some(case) = args.replay {
        let (target, bytes) = random_case(case, &Target::ALL);
        println!(
            "ssmk fuzz: replaying case {case} ({target}, {} bytes)",
            bytes.len()
        );
        return Ok(match target.run(&bytes, &ctx) {
            Ok(outcome) => {
                println!("passed: {}", describe(&outcome));
                true
            }
            Err(f) => {
                report(&f, case, &bytes, args.artifact_dir.as_deref());
                false
            }
        });
    }
    let (seed, mut clock) = RunClock::start(args, "", &targets);
    let mut totals: BTreeMap<Target, (u64, Outcome)> = BTreeMap::new();
    let mut ran = 0u64;
    let mut index = 0u64;
    while clock.more(ran) {
        let case = case_seed(seed, index);
        index += 1;
        let (target, bytes) = random_case(case, &Target::ALL);
        if !targets.contains(&target) {
            continue;
        }
        ran += 1;
        match target.run(&bytes, &ctx) {
            Ok(outcome) => {
                let entry = totals.entry(target).or_default();
                entry.0 += 1;
                entry.1.absorb(&outcome);
            }
            Err(f) => {
                print_totals(&totals, clock.finish());
                report(&f, case, &bytes, args.artifact_dir.as_deref());
                return Ok(false);
            }
        }
        clock.tick(ran);
    }
    print_totals(&totals, clock.finish());
    Ok(no_finding(ran, gpu.is_none(), ""))
}

/// The last lines of a run without a finding (`at`: what follows the count).
pub(crate) fn no_finding(ran: u64, cpu_only: bool, at: &str) -> bool {
    if cpu_only {
        println!("(CPU implementations only)");
    }
    println!("no finding in {ran} cases{at}");
    true
}

/// The clock of a random run, for `ssmk fuzz` and `ssmk fuzz --shape`: `--seconds`
/// of wall time or, with `--cases`, that many cases, shown by a progress bar
/// (counting cases, or seconds for a timed run).
pub(crate) struct RunClock {
    budget: Duration,
    start: Instant,
    cases: Option<u64>,
    progress: Progress,
}

impl RunClock {
    /// The run's seed (`--seed`, else the time) and its clock, after the banner
    /// line naming the seed, `what` (`shape ..., ` or nothing), the targets, the
    /// budget and the kernels.
    pub(crate) fn start(args: &FuzzArgs, what: &str, targets: &[Target]) -> (u64, RunClock) {
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
        println!(
            "ssmk fuzz: seed {seed}, {what}targets {}, {} s{}, kernels {}",
            names.join(","),
            args.seconds,
            args.cases
                .map_or(String::new(), |c| format!(" or {c} cases")),
            ssm_gpu::KERNELS_HASH
        );
        let budget = Duration::from_secs_f64(args.seconds.max(0.0));
        let progress = match args.cases {
            Some(c) => Progress::new("cases", c),
            None => Progress::new("seconds", budget.as_secs().max(1)),
        };
        let clock = RunClock {
            budget,
            start: Instant::now(),
            cases: args.cases,
            progress,
        };
        (seed, clock)
    }

    /// Whether another case runs after `ran`.
    pub(crate) fn more(&self, ran: u64) -> bool {
        self.start.elapsed() < self.budget && self.cases.is_none_or(|c| ran < c)
    }

    /// The bar after `ran` cases without a finding.
    pub(crate) fn tick(&mut self, ran: u64) {
        let done = if self.cases.is_some() {
            ran
        } else {
            self.start.elapsed().as_secs().min(self.budget.as_secs())
        };
        self.progress.set(done, &format!("{ran} cases, no finding"));
    }

    /// Ends the bar; the run's wall time.
    pub(crate) fn finish(&self) -> Duration {
        self.progress.finish();
        self.start.elapsed()
    }
}

/// Replay a corpus folder: `dir` itself when its name is a target, else each
/// target's subfolder.
fn replay_folder(dir: &Path, targets: &[Target], ctx: &Ctx<'_>) -> Result<bool, String> {
    let own = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(Target::from_name);
    let folders: Vec<(Target, PathBuf)> = match own {
        Some(t) => vec![(t, dir.to_path_buf())],
        None => targets.iter().map(|&t| (t, dir.join(t.name()))).collect(),
    };
    let mut clean = true;
    for (target, folder) in folders {
        let (outcome, findings) = replay_corpus(target, &folder, ctx)
            .map_err(|e| format!("reading {}: {e}", folder.display()))?;
        let n = ssm_verify::fuzz::corpus_files(&folder).len();
        println!(
            "{target}: {n} inputs from {}: {}",
            folder.display(),
            describe(&outcome)
        );
        for (path, f) in &findings {
            println!("FINDING in {}:\n{f}", path.display());
        }
        clean &= findings.is_empty();
    }
    Ok(clean)
}

fn describe(o: &Outcome) -> String {
    let mut parts: Vec<String> = Class::ALL
        .iter()
        .filter_map(|c| o.checked.get(c).map(|n| format!("{n} {c:?}")))
        .collect();
    if o.declined > 0 {
        parts.push(format!("{} declined by CUDA", o.declined));
    }
    if o.skipped_large > 0 {
        parts.push(format!("{} skipped (too large to run)", o.skipped_large));
    }
    if parts.is_empty() {
        "nothing checked".into()
    } else {
        format!("checks: {}", parts.join(", "))
    }
}

fn print_totals(totals: &BTreeMap<Target, (u64, Outcome)>, elapsed: Duration) {
    println!("{:<16} {:>8}  results", "target", "cases");
    for (target, (cases, outcome)) in totals {
        println!("{:<16} {:>8}  {}", target.name(), cases, describe(outcome));
    }
    println!("({:.1} s)", elapsed.as_secs_f64());
}

fn report(f: &Finding, case: u64, bytes: &[u8], artifact_dir: Option<&Path>) {
    println!("FINDING (case seed {case}):\n{f}");
    match crate::custom::fuzz_replay_command(f.target, case, bytes) {
        Some(cmd) => println!("replay: {cmd}"),
        None => println!("replay: ssmk fuzz --replay {case}"),
    }
    if let Some(dir) = artifact_dir {
        let path = dir.join(format!("{}-{case}.bin", f.target.name()));
        match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, bytes)) {
            Ok(()) => println!("input written to {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_unknown_names_are_errors() {
        assert_eq!(selected_targets(&[]).unwrap().len(), Target::ALL.len());
        let one = selected_targets(&["ssd_diff".into()]).unwrap();
        assert_eq!(one, vec![Target::Ssd]);
        assert!(selected_targets(&["nope".into()]).is_err());
    }

    #[test]
    fn a_short_cpu_run_finds_nothing() {
        let args = FuzzArgs {
            seconds: 30.0,
            cases: Some(40),
            gpu: GpuMode::Off,
            seed: Some(11),
            ..FuzzArgs::default()
        };
        assert_eq!(run_inner(&args), Ok(true));
    }
}
