//! Running a case on the CPU: the f64 oracle or the f32 CPU ports.
//!
//! [`prepare`] generates the inputs once and returns a closure that runs one
//! call; decode steps update their state in place, as a server would.

use half::{bf16, f16};
use ssm_core::{DType, Element, Result, SsmError};
use ssm_telemetry::problem::Problem;

use crate::inputs::{Mamba1Host, SsdHost, StepHost};
use crate::suite::{Backend, Case};

/// One call of a case.
pub type CpuRun = Box<dyn FnMut() -> Result<()>>;

/// Inputs for `case`, and a closure running it once.
pub fn prepare(case: &Case, seed: u64) -> Result<CpuRun> {
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

fn prepare_typed<T: Element>(case: &Case, seed: u64) -> Result<CpuRun> {
    match (case.problem, case.backend) {
        (Problem::Mamba1Scan(s), backend) => {
            let host = Mamba1Host::<T>::generate(&s, seed);
            match backend {
                Backend::Reference => Ok(Box::new(move || {
                    ssm_reference::mamba1::selective_scan(&host.params()).map(drop)
                })),
                Backend::Cpu => Ok(Box::new(move || {
                    mamba1_scan::cpu::selective_scan_blocked(
                        &host.params(),
                        mamba1_scan::CpuOptions::default().block_len,
                    )
                    .map(drop)
                })),
                _ => Err(unsupported(case)),
            }
        }
        (Problem::Ssd(s), backend) => {
            let host = SsdHost::<T>::generate(&s, seed);
            match backend {
                Backend::Reference => Ok(Box::new(move || {
                    ssm_reference::ssd::ssd_recurrence(&host.params()).map(drop)
                })),
                Backend::ReferenceQuadratic => Ok(Box::new(move || {
                    ssm_reference::ssd::ssd_quadratic(&host.params()).map(drop)
                })),
                Backend::Cpu => Ok(Box::new(move || {
                    mamba2_ssd::cpu::ssd_chunked(&host.params(), s.chunk_size).map(drop)
                })),
                _ => Err(unsupported(case)),
            }
        }
        (Problem::Mamba1Step(s), backend) => {
            let host = StepHost::<T>::mamba1(&s, seed);
            match backend {
                Backend::Reference => {
                    let mut state: Vec<f64> = host.state.iter().map(|&v| f64::from(v)).collect();
                    Ok(Box::new(move || {
                        ssm_reference::decode::mamba1_step(&host.mamba1_params(&s), &mut state)
                            .map(drop)
                    }))
                }
                Backend::Cpu => {
                    let mut state = host.state.clone();
                    Ok(Box::new(move || {
                        mamba1_scan::decode_cpu::decode_step_cpu(
                            &host.mamba1_params(&s),
                            &mut state,
                        )
                        .map(drop)
                    }))
                }
                _ => Err(unsupported(case)),
            }
        }
        (Problem::Mamba2Step(s), backend) => {
            let host = StepHost::<T>::mamba2(&s, seed);
            match backend {
                Backend::Reference => {
                    let mut state: Vec<f64> = host.state.iter().map(|&v| f64::from(v)).collect();
                    Ok(Box::new(move || {
                        ssm_reference::decode::mamba2_step(&host.mamba2_params(&s), &mut state)
                            .map(drop)
                    }))
                }
                Backend::Cpu => {
                    let mut state = host.state.clone();
                    Ok(Box::new(move || {
                        mamba2_ssd::decode_cpu::decode_step_cpu(&host.mamba2_params(&s), &mut state)
                            .map(drop)
                    }))
                }
                _ => Err(unsupported(case)),
            }
        }
        (Problem::Stream(_), _) => Err(unsupported(case)),
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
            let mut run = prepare(&small, 1).unwrap_or_else(|e| panic!("{}: {e}", case.id()));
            run().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
        }
    }
}
