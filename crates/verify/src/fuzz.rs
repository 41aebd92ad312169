//! Differential and hostile-input fuzzing, shared by the cargo-fuzz targets in
//! `fuzz/`, the corpus replay and regression tests, and `ssmk fuzz`.
//!
//! A fuzz input is a byte string. Each [`Target`] decodes it into a problem
//! (shape, options, values, implementation options) and checks every
//! implementation against the f64 oracle on exactly the same inputs:
//!
//! - [`Target::Scan`], [`Target::Ssd`], [`Target::Step`]: differential; the
//!   rule each implementation is held to depends on whether the problem lies
//!   inside the tolerance model ([`verdict`], [`envelope`]; docs/FUZZING.md);
//! - [`Target::Api`]: malformed parameters must give a typed error, never a panic;
//! - [`Target::Determinism`]: the CPU ports are bitwise repeatable on 1 and 2
//!   threads.
//!
//! The CUDA implementations join the comparisons when a [`Ctx`] carries a GPU.
//! Modules: [`draw`] (bytes to sizes, regimes, patches), [`problems`] (bytes to
//! problems), [`envelope`], [`verdict`], `targets`, `api`, `determinism`.

/// Dispatch on a decoded element type (an f64 draw runs as f32), for the
/// targets and the backward targets alike; defined before the modules that
/// use it, as `macro_rules!` scoping requires.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            ssm_core::DType::F32 | ssm_core::DType::F64 => $f::<f32>($($arg),*),
            ssm_core::DType::Bf16 => $f::<half::bf16>($($arg),*),
            ssm_core::DType::F16 => $f::<half::f16>($($arg),*),
        }
    };
}

mod api;
pub mod backward;
mod determinism;
pub mod draw;
pub mod envelope;
pub mod problems;
mod targets;
pub mod verdict;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::{Result, SsmError};
use ssm_gpu::Gpu;

pub use api::MAX_OUTPUT_ELEMENTS;
pub use targets::ssd_window_log_decay;
pub use verdict::Class;

/// A fuzz target: one way of turning bytes into checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Differential, the Mamba-1 forward scan.
    Scan,
    /// Differential, the SSD forward.
    Ssd,
    /// Differential, the decode steps of both families.
    Step,
    /// Malformed parameters must give a typed error, never a panic.
    Api,
    /// The CPU ports are bitwise repeatable on 1 and 2 threads.
    Determinism,
    /// Differential, the backward passes ([`backward`]).
    SsdBackward,
    /// Differential, the Mamba-1 scan backward ([`backward`]).
    ScanBackward,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 7] = [
        Target::Scan,
        Target::Ssd,
        Target::Step,
        Target::Api,
        Target::Determinism,
        Target::SsdBackward,
        Target::ScanBackward,
    ];

    /// The cargo-fuzz target name (`fuzz/fuzz_targets/<name>.rs`) and corpus folder.
    pub fn name(self) -> &'static str {
        match self {
            Target::Scan => "scan_diff",
            Target::Ssd => "ssd_diff",
            Target::Step => "step_diff",
            Target::Api => "api_malformed",
            Target::Determinism => "cpu_determinism",
            Target::SsdBackward => "ssd_bwd_diff",
            Target::ScanBackward => "scan_bwd_diff",
        }
    }

    /// The target whose [`Target::name`] is `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Decode `bytes` and run every check. A panic anywhere is caught and
    /// returned as a finding.
    pub fn run(self, bytes: &[u8], ctx: &Ctx<'_>) -> std::result::Result<Outcome, Finding> {
        let result = guarded(|| match self {
            Target::Scan => targets::scan(bytes, ctx),
            Target::Ssd => targets::ssd(bytes, ctx),
            Target::Step => targets::step(bytes, ctx),
            Target::Api => api::api(bytes, ctx),
            Target::Determinism => determinism::determinism(bytes),
            Target::SsdBackward => backward::ssd(bytes, ctx),
            Target::ScanBackward => backward::scan(bytes, ctx),
        });
        result.unwrap_or_else(|m| {
            Err(Finding {
                target: self,
                implementation: "harness".into(),
                problem: String::new(),
                class: None,
                detail: format!("panicked: {m}"),
            })
        })
    }
}

impl Target {
    /// The problem `bytes` decode to, for the differential and determinism
    /// targets (a regression test pins it, so that a change of the decoding is
    /// noticed); empty for the API target, whose message names its problem.
    pub fn describe(self, bytes: &[u8]) -> String {
        let mut b = draw::Bytes::new(bytes);
        match self {
            Target::Scan => problems::ScanProblem::decode(&mut b).describe(),
            Target::Ssd => problems::SsdProblem::decode(&mut b).describe(),
            Target::Step => problems::StepProblem::decode(&mut b).describe(),
            Target::Determinism => determinism::describe(&mut b),
            Target::SsdBackward => backward::SsdBwdProblem::decode(&mut b).describe(),
            Target::ScanBackward => backward::ScanBwdProblem::decode(&mut b).describe(),
            Target::Api => String::new(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the checks may use.
#[derive(Clone, Copy, Default)]
pub struct Ctx<'g> {
    /// The CUDA implementations run too when a GPU is given.
    pub gpu: Option<&'g Gpu>,
}

impl<'g> Ctx<'g> {
    /// CPU implementations only.
    pub const CPU: Ctx<'static> = Ctx { gpu: None };

    fn require_gpu(&self) -> Result<&'g Gpu> {
        self.gpu
            .ok_or_else(|| SsmError::Backend("no GPU available for a CUDA implementation".into()))
    }
}

/// A failed check: which implementation, on what, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The target that found it.
    pub target: Target,
    /// The implementation at fault.
    pub implementation: String,
    /// The decoded problem's label.
    pub problem: String,
    /// The rule that was applied, when one was.
    pub class: Option<Class>,
    /// What went wrong, with the numbers.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.target, self.implementation)?;
        if let Some(class) = self.class {
            write!(f, " ({class:?})")?;
        }
        write!(f, ": {}", self.detail)?;
        if !self.problem.is_empty() {
            write!(f, "\n  problem: {}", self.problem)?;
        }
        Ok(())
    }
}

/// What a passing input exercised.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Implementation results checked, per class.
    pub checked: BTreeMap<Class, usize>,
    /// CUDA implementations that declined the problem (`Unsupported`).
    pub declined: usize,
    /// Valid API problems not run because their outputs would pass
    /// [`MAX_OUTPUT_ELEMENTS`] (slow, no new coverage).
    pub skipped_large: usize,
}

impl Outcome {
    fn record(&mut self, class: Class, checked: bool) {
        if checked {
            *self.checked.entry(class).or_default() += 1;
        } else {
            self.declined += 1;
        }
    }

    /// Add another outcome's counts to this one.
    pub fn absorb(&mut self, other: &Outcome) {
        for (class, n) in &other.checked {
            *self.checked.entry(*class).or_default() += n;
        }
        self.declined += other.declined;
        self.skipped_large += other.skipped_large;
    }
}

/// Run `f`, turning a panic into its message.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into())
    })
}

/// The input `ssmk fuzz` draws for `seed`: the target and the bytes both follow
/// from the seed, so `--replay SEED` rebuilds the same case. Lengths vary so that
/// late choices (patches, implementation options) are sometimes left at their
/// defaults and sometimes drawn.
pub fn random_case(seed: u64, targets: &[Target]) -> (Target, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let target = targets[rng.random_range(0..targets.len())];
    let len = rng.random_range(8..=256);
    let bytes = (0..len).map(|_| rng.random()).collect();
    (target, bytes)
}

/// The seed of case `index` of a run started with `seed` (SplitMix64).
pub fn case_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Every file of a corpus folder, sorted by name (missing folder: none).
pub fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run `target` on every file of `dir`; the findings with their file.
pub fn replay_corpus(
    target: Target,
    dir: &Path,
    ctx: &Ctx<'_>,
) -> std::io::Result<(Outcome, Vec<(PathBuf, Finding)>)> {
    let mut outcome = Outcome::default();
    let mut findings = Vec::new();
    for path in corpus_files(dir) {
        let bytes = std::fs::read(&path)?;
        match target.run(&bytes, ctx) {
            Ok(o) => outcome.absorb(&o),
            Err(f) => findings.push((path, f)),
        }
    }
    Ok((outcome, findings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()), Some(t));
        }
        assert_eq!(Target::from_name("nope"), None);
    }

    #[test]
    fn random_cases_replay_from_their_seed() {
        let targets = Target::ALL;
        assert_eq!(random_case(42, &targets), random_case(42, &targets));
        assert_ne!(case_seed(1, 0), case_seed(1, 1));
        assert_ne!(case_seed(1, 0), case_seed(2, 0));
    }

    #[test]
    fn random_inputs_pass_every_target_on_the_cpu() {
        for index in 0..60 {
            let (target, bytes) = random_case(case_seed(7, index), &Target::ALL);
            if let Err(f) = target.run(&bytes, &Ctx::CPU) {
                panic!("case {index}: {f}");
            }
        }
    }

    #[test]
    fn panics_become_findings() {
        assert_eq!(guarded(|| 3), Ok(3));
        let m = guarded(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(m, "boom 1");
    }
}
