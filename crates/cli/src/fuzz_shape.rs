//! `ssmk fuzz --shape ...`: fuzz random data and options at one fixed shape.
//!
//! The shape is parsed by the verifier's shape parser (the syntax of `ssmk
//! verify`), which also tells the family: an SSD shape (`b,L,H,P,N[,G]`) fuzzes
//! `ssd_diff` and `ssd_bwd_diff`, a scan shape (`b,D,N,L[,G]`) `scan_diff` and
//! `scan_bwd_diff` (`--targets` narrows that to one of them). The decode steps,
//! `api_malformed` and `cpu_determinism` do not take a fixed shape: their cases
//! draw their own.
//!
//! Each case seed picks the element type, the options and the chunk (SSD) or
//! time block (scan), and seeds the data; the case then runs exactly as the
//! `ssmk verify <op> --shape ... --seed SEED` command it prints with a finding
//! (the same code path, so that command replays it on its exact inputs). The
//! replay is `--seed` and not `--fuzz-case`: a `--fuzz-case` seed names a case
//! of the shape-drawing fuzz targets, which cannot be held at a shape.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::DType;
use ssm_gpu::Gpu;
use ssm_telemetry::shape_arg::{parse_problem, ShapeOp};
use ssm_verify::fuzz::{case_seed, Target};

use crate::custom::{Custom, ScanArgs, ShapeArgs, SsdArgs};
use crate::fuzz::{no_finding, FuzzArgs, RunClock};

/// The targets that accept a fixed shape, by family.
const SSD_TARGETS: [Target; 2] = [Target::Ssd, Target::SsdBackward];
const SCAN_TARGETS: [Target; 2] = [Target::Scan, Target::ScanBackward];

/// The targets a fixed `shape` fuzzes: those of its family, narrowed to
/// `asked` when given (each must be of that family).
pub fn targets_for(shape: &str, asked: &[Target]) -> Result<Vec<Target>, String> {
    let ssd = parse_problem(ShapeOp::Ssd, shape, "none", DType::F32, 64);
    let scan = parse_problem(ShapeOp::Scan, shape, "none", DType::F32, 64);
    let family: &[Target] = match (&ssd, &scan) {
        (Ok(_), _) => &SSD_TARGETS,
        (_, Ok(_)) => &SCAN_TARGETS,
        (Err(a), Err(b)) => {
            return Err(format!(
                "--shape is neither an SSD nor a scan shape:\n  as ssd: {a}\n  as scan: {b}"
            ))
        }
    };
    if asked.is_empty() {
        return Ok(family.to_vec());
    }
    if let Some(bad) = asked.iter().find(|t| !family.contains(t)) {
        let names: Vec<&str> = family.iter().map(|t| t.name()).collect();
        return Err(format!(
            "--targets: {bad} does not take this --shape (a fixed shape fuzzes ssd_diff and \
             ssd_bwd_diff with an SSD shape, scan_diff and scan_bwd_diff with a scan shape; \
             this shape's: {})",
            names.join(", ")
        ));
    }
    Ok(asked.to_vec())
}

/// One drawn case: the command line of `ssmk verify` it is.
#[derive(Clone, Debug)]
pub struct ShapeCase {
    pub target: Target,
    pub custom: Custom,
    pub seed: u64,
}

impl ShapeCase {
    /// Draw case `case` of `targets` at `shape`, running CUDA too when `cuda`.
    pub fn draw(case: u64, shape: &str, targets: &[Target], cuda: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(case);
        let target = targets[rng.random_range(0..targets.len())];
        let dtype = [DType::F32, DType::F16, DType::Bf16][rng.random_range(0..3)];
        let backward = matches!(target, Target::SsdBackward | Target::ScanBackward);
        let ssd = matches!(target, Target::Ssd | Target::SsdBackward);
        let mut on: Vec<&str> = Vec::new();
        let mut maybe = |rng: &mut StdRng, name: &'static str| {
            if rng.random_bool(0.5) {
                on.push(name);
            }
        };
        maybe(&mut rng, "z");
        maybe(&mut rng, "bias");
        maybe(&mut rng, "softplus");
        maybe(&mut rng, "final");
        if ssd {
            maybe(&mut rng, "s0");
            match rng.random_range(0..3) {
                0 => on.push("D"),
                1 => on.push("Dp"),
                _ => {}
            }
        } else {
            maybe(&mut rng, "h0");
            maybe(&mut rng, "D");
        }
        let options = if on.is_empty() {
            "none".to_string()
        } else {
            on.join(",")
        };
        // The SSD has no CUDA backward in this build; the scan's runs on the GPU.
        let impls = if cuda && !(backward && ssd) {
            vec!["cpu".to_string(), "cuda".to_string()]
        } else {
            vec!["cpu".to_string()]
        };
        let common = ShapeArgs {
            shape: shape.to_string(),
            options,
            dtype,
            impls,
            kernel_opts: Vec::new(),
            fuzz_case: None,
            seed: Some(case),
            gpu: None,
        };
        let custom = if ssd {
            Custom::Ssd(SsdArgs {
                common,
                // The chunk lengths of the CUDA kernel (the CPU port's too).
                chunk: [64, 128, 256][rng.random_range(0..3)],
                backward,
            })
        } else {
            Custom::Scan(ScanArgs {
                common,
                block_len: [1, 16, 64, 256, 1024][rng.random_range(0..5)],
                backward,
            })
        };
        ShapeCase {
            target,
            custom,
            seed: case,
        }
    }

    /// The `ssmk verify` command that replays this case.
    pub fn command(&self) -> String {
        let c = self.custom.common();
        let (op, extra) = match &self.custom {
            Custom::Ssd(a) => ("ssd", format!(" --chunk {}", a.chunk)),
            Custom::Scan(a) => ("scan", format!(" --block-len {}", a.block_len)),
            Custom::Step(_) => ("step", String::new()),
        };
        format!(
            "ssmk verify {op} --shape {} --options {} --dtype {}{extra} --impl {}{} --seed {}",
            c.shape,
            c.options,
            c.dtype,
            c.impls.join(","),
            if self.custom.backward() {
                " --backward"
            } else {
                ""
            },
            self.seed
        )
    }

    /// Run the case as `ssmk verify` would: `Ok(rows)` when every row passes,
    /// `Err(rows or the error)` otherwise (a panic is a finding too).
    pub fn run(&self, gpu: Option<&Gpu>) -> Result<usize, Vec<String>> {
        let run = || -> Result<Vec<(bool, String)>, String> {
            if self.custom.backward() {
                Ok(crate::custom::run_backward(&self.custom, gpu, self.seed)?
                    .iter()
                    .map(|r| (r.passed, crate::backward::table_line(r)))
                    .collect())
            } else {
                Ok(crate::custom::run(&self.custom, gpu, self.seed)?
                    .iter()
                    .map(|r| (r.passed(), ssm_verify::suite::table_line(r)))
                    .collect())
            }
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(rows)) if rows.iter().all(|(ok, _)| *ok) => Ok(rows.len()),
            Ok(Ok(rows)) => Err(rows
                .into_iter()
                .filter(|(ok, _)| !ok)
                .map(|(_, l)| l)
                .collect()),
            Ok(Err(e)) => Err(vec![format!("error: {e}")]),
            Err(p) => Err(vec![format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )]),
        }
    }
}

/// `ssmk fuzz --shape`: `Ok(true)` when no case fails.
pub fn run(
    args: &FuzzArgs,
    shape: &str,
    targets: &[Target],
    gpu: Option<&Gpu>,
) -> Result<bool, String> {
    let targets = targets_for(shape, targets)?;
    // The shape itself must be one the verifier takes (a usage error, not a finding).
    ShapeCase::draw(0, shape, &targets, false)
        .custom
        .validate()?;
    let (seed, mut clock) = RunClock::start(args, &format!("shape {shape}, "), &targets);
    let mut totals: BTreeMap<Target, (u64, usize)> = BTreeMap::new();
    let mut ran = 0u64;
    while clock.more(ran) {
        let case = case_seed(seed, ran);
        ran += 1;
        let drawn = ShapeCase::draw(case, shape, &targets, gpu.is_some());
        match drawn.run(gpu) {
            Ok(rows) => {
                let e = totals.entry(drawn.target).or_default();
                e.0 += 1;
                e.1 += rows;
            }
            Err(lines) => {
                print_totals(&totals, clock.finish());
                println!("FINDING (case seed {case}, {}):", drawn.target);
                for l in lines {
                    println!("{l}");
                }
                println!("replay: {}", drawn.command());
                return Ok(false);
            }
        }
        clock.tick(ran);
    }
    print_totals(&totals, clock.finish());
    Ok(no_finding(ran, gpu.is_none(), &format!(" at {shape}")))
}

fn print_totals(totals: &BTreeMap<Target, (u64, usize)>, elapsed: Duration) {
    println!("{:<16} {:>8}  rows passed", "target", "cases");
    for (target, (cases, rows)) in totals {
        println!("{:<16} {:>8}  {rows}", target.name(), cases);
    }
    println!("({:.1} s)", elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_names_its_family_and_foreign_targets_are_refused() {
        let ssd = "b=1,L=9,H=2,P=4,N=8";
        assert_eq!(targets_for(ssd, &[]).unwrap(), SSD_TARGETS.to_vec());
        assert_eq!(
            targets_for("b=1,D=4,N=4,L=9,G=const", &[Target::ScanBackward]).unwrap(),
            vec![Target::ScanBackward]
        );
        let e = targets_for(ssd, &[Target::Step]).unwrap_err();
        assert!(e.contains("step_diff does not take"), "{e}");
        let e = targets_for("b=1,L=9", &[]).unwrap_err();
        assert!(e.contains("neither an SSD nor a scan shape"), "{e}");
    }

    /// A drawn case's command line parses (as `ssmk` parses it) into the very
    /// arguments the case ran with, so `ssmk verify` replays it exactly.
    #[test]
    fn a_case_prints_the_verify_command_that_replays_it() {
        use clap::Parser;
        let shapes: [(&str, &[Target]); 2] = [
            ("b=1,L=20,H=2,P=4,N=8,G=2", &SSD_TARGETS),
            ("b=2,D=4,N=3,L=17,G=const", &SCAN_TARGETS),
        ];
        for (shape, targets) in shapes {
            for case in 0..24u64 {
                let c = ShapeCase::draw(case, shape, targets, case % 2 == 0);
                c.custom.validate().unwrap();
                let cmd = c.command();
                let cli = crate::Cli::try_parse_from(cmd.split_whitespace())
                    .unwrap_or_else(|e| panic!("{cmd}: {e}"));
                let Some(crate::Command::Verify(v)) = cli.command else {
                    panic!("{cmd}: not a verify command")
                };
                let parsed = match v.op {
                    Some(crate::verify::CustomOp::Ssd(a)) => Custom::Ssd(a),
                    Some(crate::verify::CustomOp::Scan(a)) => Custom::Scan(a),
                    other => panic!("{cmd}: {other:?}"),
                };
                assert_eq!(format!("{parsed:?}"), format!("{:?}", c.custom), "{cmd}");
                if !c.custom.wants_gpu() {
                    assert!(c.run(None).is_ok(), "{cmd}");
                }
            }
        }
    }
}
