//! Determinism of the CPU ports: the same call gives bit-identical outputs and
//! final states when repeated and when run on thread pools of 1 and 2 threads.
//!
//! The ports cut work by the number of threads (the scan's channel chunks) and
//! run tasks in any order, but every value is computed by one task in a fixed
//! order, so nothing may depend on scheduling. A reduction split across threads
//! or a race on a shared buffer would show up here as a bitwise difference.

use std::sync::OnceLock;

use rayon::{ThreadPool, ThreadPoolBuilder};
use ssm_core::{Element, Result, ScanOutput};

use super::draw::Bytes;
use super::problems::{ScanProblem, SsdProblem, StepProblem};
use super::{guarded, Finding, Outcome, Target};
use crate::impls::Family;

/// Thread pools of 1 and 2 threads, built once per process.
fn pools() -> &'static [ThreadPool; 2] {
    static POOLS: OnceLock<[ThreadPool; 2]> = OnceLock::new();
    POOLS.get_or_init(|| {
        [1, 2].map(|n| {
            ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(move |i| format!("determinism-{n}-{i}"))
                .build()
                .expect("building a small rayon pool")
        })
    })
}

/// Bits of an output and its states (or of a step's output and cache).
type Bits = (Vec<u64>, Option<Vec<u32>>);

fn bits<T: Element>(o: &ScanOutput<T, f32>) -> Bits {
    (
        o.out.iter().map(|v| v.to_f64().to_bits()).collect(),
        o.final_states
            .as_ref()
            .map(|s| s.iter().map(|v| v.to_bits()).collect()),
    )
}

/// Run `call` twice on each pool; every result must be bitwise the first.
fn same_everywhere(
    problem: String,
    implementation: &str,
    call: impl Fn() -> Result<Bits> + Sync,
) -> std::result::Result<Outcome, Finding> {
    let finding = |detail: String| Finding {
        target: Target::Determinism,
        implementation: implementation.into(),
        problem: problem.clone(),
        class: None,
        detail,
    };
    let mut first: Option<Result<Bits>> = None;
    for (pool, threads) in pools().iter().zip([1, 2]) {
        for run in 0..2 {
            let got =
                guarded(|| pool.install(&call)).map_err(|m| finding(format!("panicked: {m}")))?;
            match &first {
                None => first = Some(got),
                Some(want) if *want == got => {}
                Some(want) => {
                    let what = match (want, &got) {
                        (Ok(w), Ok(g)) => describe_difference(w, g),
                        _ => format!("{want:?} vs {got:?}"),
                    };
                    return Err(finding(format!(
                        "run {run} on {threads} thread(s) differs from the first run on 1 thread: {what}"
                    )));
                }
            }
        }
    }
    let mut outcome = Outcome::default();
    outcome.record(super::verdict::Class::InModel, true);
    Ok(outcome)
}

fn describe_difference(want: &Bits, got: &Bits) -> String {
    let first_diff = |a: &[u64], b: &[u64]| a.iter().zip(b).position(|(x, y)| x != y);
    if let Some(i) = first_diff(&want.0, &got.0) {
        return format!("output element {i} differs");
    }
    if want.0.len() != got.0.len() {
        return "output lengths differ".into();
    }
    match (&want.1, &got.1) {
        (Some(w), Some(g)) => match w.iter().zip(g).position(|(x, y)| x != y) {
            Some(i) => format!("state element {i} differs"),
            None => "state lengths differ".into(),
        },
        _ => "final states present in one run only".into(),
    }
}

/// The problem a determinism input decodes to.
pub(super) fn describe(b: &mut Bytes<'_>) -> String {
    match b.int(0, 2) {
        0 => ScanProblem::decode(b).describe(),
        1 => SsdProblem::decode(b).describe(),
        _ => StepProblem::decode(b).describe(),
    }
}

pub(super) fn determinism(bytes: &[u8]) -> std::result::Result<Outcome, Finding> {
    let mut b = Bytes::new(bytes);
    match b.int(0, 2) {
        0 => {
            let p = ScanProblem::decode(&mut b);
            by_dtype!(p.dtype, scan_as(&p))
        }
        1 => {
            let p = SsdProblem::decode(&mut b);
            by_dtype!(p.dtype, ssd_as(&p))
        }
        _ => {
            let p = StepProblem::decode(&mut b);
            by_dtype!(p.dtype, step_as(&p))
        }
    }
}

fn scan_as<T: Element>(problem: &ScanProblem) -> std::result::Result<Outcome, Finding> {
    let inputs = problem.data.inputs::<T>();
    let p = inputs.params();
    same_everywhere(problem.describe(), "m1 cpu blocked", || {
        mamba1_scan::cpu::selective_scan_blocked(&p, problem.block_len).map(|o| bits(&o))
    })
}

fn ssd_as<T: Element>(problem: &SsdProblem) -> std::result::Result<Outcome, Finding> {
    let inputs = problem.data.inputs::<T>();
    let p = inputs.params();
    same_everywhere(problem.describe(), "ssd cpu chunked", || {
        mamba2_ssd::cpu::ssd_chunked(&p, problem.chunk).map(|o| bits(&o))
    })
}

fn step_as<T: Element>(problem: &StepProblem) -> std::result::Result<Outcome, Finding> {
    let tensors = problem.tensors::<T>();
    let name = crate::impls::StepImpl::Cpu.name(problem.family);
    same_everywhere(problem.describe(), &name, || {
        let mut state = problem.state.clone();
        let out = match problem.family {
            Family::Mamba1 => {
                mamba1_scan::decode_cpu::decode_step_cpu(&problem.mamba1(&tensors), &mut state)?
            }
            Family::Mamba2 => {
                mamba2_ssd::decode_cpu::decode_step_cpu(&problem.mamba2(&tensors), &mut state)?
            }
        };
        Ok(bits(&ScanOutput {
            out: out.out,
            final_states: Some(state),
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::problems::Regimes;
    use crate::gen::{DKind, Mamba1Case, Mamba1Data, SsdCase, SsdData, StepCase, StepData};
    use half::{bf16, f16};
    use ssm_core::DType;

    /// Shapes big enough that the ports cut them into many tasks on 2 threads.
    #[test]
    fn cpu_ports_are_bitwise_repeatable_on_1_and_2_threads() {
        let mut varlen = Mamba1Case::plain(1, 40, 5, 300).all_options();
        varlen.varlen = Some(4);
        for (case, block_len) in [
            (Mamba1Case::plain(2, 64, 16, 300).all_options(), 64),
            (varlen, 37),
        ] {
            let problem = ScanProblem {
                data: Mamba1Data::generate(&case, 1),
                dtype: DType::F32,
                block_len,
                regimes: Regimes::default(),
            };
            scan_as::<f32>(&problem).unwrap();
            scan_as::<bf16>(&problem).unwrap();
        }
        let mut varlen = SsdCase::plain(1, 300, 4, 8, 12, 2).all_options();
        varlen.varlen = Some(5);
        varlen.d = DKind::PerHeadDim;
        for (case, chunk) in [
            (SsdCase::plain(2, 300, 8, 16, 16, 2).all_options(), 64),
            (varlen, 50),
        ] {
            let problem = SsdProblem {
                data: SsdData::generate(&case, 2),
                dtype: DType::F32,
                chunk,
                regimes: Regimes::default(),
            };
            ssd_as::<f32>(&problem).unwrap();
            ssd_as::<f16>(&problem).unwrap();
        }
        for (family, channels, head_dim) in [(Family::Mamba1, 256, 1), (Family::Mamba2, 8, 16)] {
            let case = StepCase {
                batch: 16,
                channels,
                head_dim,
                d_state: 16,
                groups: 2,
                indexed: Some(5),
                all_options: true,
                d_per_head_dim: false,
            };
            let g = StepData::generate(&case, family == Family::Mamba2, 3);
            let problem = StepProblem::from_draw(family, g, true, (0.001, 5.0));
            step_as::<f32>(&problem).unwrap();
        }
    }

    /// The check itself can fail: a call whose result depends on the pool differs.
    #[test]
    fn a_thread_dependent_result_is_a_finding() {
        let f = same_everywhere("probe".into(), "probe", || {
            Ok((vec![rayon::current_num_threads() as u64], None))
        })
        .unwrap_err();
        assert!(f.detail.contains("2 thread(s)"), "{f}");
    }
}
