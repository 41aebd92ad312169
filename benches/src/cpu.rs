//! Running a case on the CPU: the f64 oracle or the f32 CPU ports.
//!
//! [`prepare`] generates the inputs once and returns a closure that runs one
//! call (decode steps update their state in place, as a server would) and the
//! check of a first call against the f64 oracle that the runner makes before
//! timing.

use half::{bf16, f16};
use ssm_core::{DType, Element, Result, SsmError, StepOutput};
use ssm_telemetry::problem::Problem;

use std::rc::Rc;

use ssm_telemetry::record::Verification;

use crate::check::{verify_scan, verify_ssd, verify_step, StepShape};
use crate::inputs::{Mamba1Host, SsdHost, StepHost};
use crate::suite::{Backend, Case};

/// One call of a case.
pub type CpuRun = Box<dyn FnMut() -> Result<()>>;

/// The case's first call checked against the f64 oracle ([`crate::check`]);
/// `None` for the oracle's own cases (there is nothing above it to check it by).
pub type CpuCheck = Box<dyn FnOnce() -> Result<Option<Verification>>>;

/// A case ready to run on the CPU.
pub struct CpuWork {
    pub check: CpuCheck,
    pub run: CpuRun,
}

/// `case` prepared and checked against the oracle: its run closure, or why it is
/// not to be timed (`SKIPPED ...` when it cannot run here, `FAILED ...` when it
/// misses its budget). For benches that time the closure themselves (criterion).
pub fn prepare_checked(case: &Case, seed: u64) -> std::result::Result<CpuRun, String> {
    let work = prepare(case, seed).map_err(|e| format!("SKIPPED {}: {e}", case.id()))?;
    match (work.check)() {
        Ok(Some(v)) if !v.passed => Err(format!(
            "FAILED {}: does not match the f64 oracle on {}: rel L2 {:.3e} (budget {:.3e}); not timed",
            case.id(),
            v.sampled,
            v.rel_l2,
            v.budget
        )),
        Ok(_) => Ok(work.run),
        Err(e) => Err(format!("FAILED {}: verification: {e}", case.id())),
    }
}

/// Inputs for `case`, a closure running it once, and its check.
pub fn prepare(case: &Case, seed: u64) -> Result<CpuWork> {
    match case.problem.dtype() {
        DType::F32 => prepare_typed::<f32>(case, seed),
        DType::F16 => prepare_typed::<f16>(case, seed),
        DType::Bf16 => prepare_typed::<bf16>(case, seed),
        DType::F64 => prepare_typed::<f64>(case, seed),
    }
}

fn unsupported(case: &Case) -> SsmError {
    SsmError::Unsupported {
        implementation: "ssm-benches CPU runner",
        what: format!("{} on {:?}", case.problem.op_name(), case.backend),
    }
}

fn work(check: CpuCheck, run: CpuRun) -> Result<CpuWork> {
    Ok(CpuWork { check, run })
}

/// The oracle's own cases: not checked (they are the reference).
fn unchecked() -> CpuCheck {
    Box::new(|| Ok(None))
}

fn prepare_typed<T: Element>(case: &Case, seed: u64) -> Result<CpuWork> {
    match (case.problem, case.backend) {
        (Problem::Mamba1Scan(s), backend) => {
            let host = Rc::new(Mamba1Host::<T>::generate(&s, seed));
            let block_len = mamba1_scan::CpuOptions::default().block_len;
            match backend {
                Backend::Reference => {
                    oracle_work(host, |h| ssm_reference::mamba1::selective_scan(&h.params()))
                }
                Backend::Cpu => checked_work(
                    host,
                    move |h| mamba1_scan::cpu::selective_scan_blocked(&h.params(), block_len),
                    |h, got| verify_scan(h, &got.out, got.final_states.as_deref()),
                ),
                _ => Err(unsupported(case)),
            }
        }
        (Problem::Ssd(s), backend) => {
            let host = Rc::new(SsdHost::<T>::generate(&s, seed));
            match backend {
                Backend::Reference => {
                    oracle_work(host, |h| ssm_reference::ssd::ssd_recurrence(&h.params()))
                }
                // The dual form is checked against the recurrence (an independent oracle).
                Backend::ReferenceQuadratic => checked_work(
                    host,
                    |h| ssm_reference::ssd::ssd_quadratic(&h.params()),
                    |h, got| verify_ssd(h, &got.out, None),
                ),
                Backend::Cpu => checked_work(
                    host,
                    move |h| mamba2_ssd::cpu::ssd_chunked(&h.params(), s.chunk_size),
                    |h, got| verify_ssd(h, &got.out, got.final_states.as_deref()),
                ),
                _ => Err(unsupported(case)),
            }
        }
        (Problem::Mamba1Step(s), backend) => step_work(
            case,
            backend,
            StepHost::<T>::mamba1(&s, seed),
            move |h, state| ssm_reference::decode::mamba1_step(&h.mamba1_params(&s), state),
            move |h, state| mamba1_scan::decode_cpu::decode_step_cpu(&h.mamba1_params(&s), state),
            move |h, out, state| verify_step(h, StepShape::Mamba1(&s), out, state),
        ),
        (Problem::Mamba2Step(s), backend) => step_work(
            case,
            backend,
            StepHost::<T>::mamba2(&s, seed),
            move |h, state| ssm_reference::decode::mamba2_step(&h.mamba2_params(&s), state),
            move |h, state| mamba2_ssd::decode_cpu::decode_step_cpu(&h.mamba2_params(&s), state),
            move |h, out, state| verify_step(h, StepShape::Mamba2(&s), out, state),
        ),
        (Problem::Stream(_), _) => Err(unsupported(case)),
    }
}

/// An oracle case's work: `call` on the host's inputs, timed and not checked
/// (the oracle is the reference).
fn oracle_work<H: 'static, O>(
    host: Rc<H>,
    call: impl Fn(&H) -> Result<O> + 'static,
) -> Result<CpuWork> {
    work(unchecked(), Box::new(move || call(&host).map(drop)))
}

/// A checked case's work: `call` on the host's inputs, timed, with the output
/// of a first call checked by `verify`. One `call` serves both, so what is
/// checked is what is timed.
fn checked_work<H: 'static, O>(
    host: Rc<H>,
    call: impl Fn(&H) -> Result<O> + 'static,
    verify: impl FnOnce(&H, O) -> Result<Verification> + 'static,
) -> Result<CpuWork> {
    let call = Rc::new(call);
    let (h, run_call) = (host.clone(), call.clone());
    work(
        Box::new(move || verify(&host, (*call)(&host)?).map(Some)),
        Box::new(move || (*run_call)(&h).map(drop)),
    )
}

/// A decode step's work, for either family (`oracle`, `port` and `verify` are
/// the family's): the oracle (unchecked) advancing its f64 state, or the CPU
/// port, checked from the host's initial state and timed on a state it keeps
/// advancing, as a server would.
fn step_work<T: Element>(
    case: &Case,
    backend: Backend,
    host: StepHost<T>,
    mut oracle: impl FnMut(&StepHost<T>, &mut [f64]) -> Result<StepOutput<f64>> + 'static,
    port: impl Fn(&StepHost<T>, &mut [f32]) -> Result<StepOutput<T>> + 'static,
    verify: impl FnOnce(&StepHost<T>, &[T], &[f32]) -> Result<Verification> + 'static,
) -> Result<CpuWork> {
    let host = Rc::new(host);
    let h = host.clone();
    match backend {
        Backend::Reference => {
            let mut state: Vec<f64> = host.state.iter().map(|&v| f64::from(v)).collect();
            work(
                unchecked(),
                Box::new(move || oracle(&h, &mut state).map(drop)),
            )
        }
        Backend::Cpu => {
            let port = Rc::new(port);
            let run_port = port.clone();
            let mut state = host.state.clone();
            work(
                Box::new(move || {
                    let mut first = host.state.clone();
                    let got = (*port)(&host, &mut first)?;
                    verify(&host, &got.out, &first).map(Some)
                }),
                Box::new(move || (*run_port)(&h, &mut state).map(drop)),
            )
        }
        _ => Err(unsupported(case)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{cpu_cases, reference_cases};

    #[test]
    fn every_cpu_and_reference_case_prepares() {
        // Shrink every case to a tiny length so the test is quick; a failing
        // `prepare` or call would mean the benches never run it.
        for case in cpu_cases(true).into_iter().chain(reference_cases()) {
            let mut small = case.clone();
            small.problem = match small.problem {
                p @ Problem::Mamba1Scan(_) | p @ Problem::Ssd(_) => p.with_seqlen(64),
                p => p,
            };
            let work = prepare(&small, 1).unwrap_or_else(|e| panic!("{}: {e}", case.id()));
            let mut run = work.run;
            run().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
            let verdict = (work.check)().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
            match case.backend {
                Backend::Reference => assert!(verdict.is_none(), "{}", case.id()),
                _ => {
                    let v = verdict.unwrap_or_else(|| panic!("{} was not checked", case.id()));
                    assert!(v.passed, "{}: {v:?}", case.id());
                }
            }
        }
    }
}
