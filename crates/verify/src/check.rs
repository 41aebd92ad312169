//! Run implementations on one problem and compare each with the oracle.

use std::time::Instant;

use serde::Serialize;
use ssm_core::tolerance::{compare, max_window_log_decay, rel_l2_budget, state_budget, Comparison};
use ssm_core::{DType, Result, ScanOutput};
use ssm_gpu::{DeviceElement, Gpu};

use crate::gen::{Mamba1Data, SsdData, StepData};
use crate::impls::{Family, ScanImpl, SsdImpl, StepImpl};

/// One line of a verification table.
#[derive(Clone, Debug, Serialize)]
pub struct CheckRow {
    /// The implementation's name (`mamba2-ssd.cuda`, ...).
    pub implementation: String,
    /// The problem's short label.
    pub problem: String,
    /// The element type of its tensors.
    pub dtype: DType,
    /// The output against the oracle, when the call returned one.
    pub out: Option<Comparison>,
    /// The final states against the oracle, when returned.
    pub state: Option<Comparison>,
    /// The relative L2 budget of the output.
    pub out_budget: f64,
    /// The relative L2 budget of the final states.
    pub state_budget: f64,
    /// Wall time of the call (host to host, including transfers for CUDA).
    pub time_ms: f64,
    /// Why the implementation returned no result, if it did not.
    pub error: Option<String>,
}

impl CheckRow {
    /// The output is within its budget and the states (if any) within theirs.
    pub fn passed(&self) -> bool {
        let out_ok = self.out.is_some_and(|c| c.passes(self.out_budget));
        let state_ok = self.state.is_none_or(|c| c.passes(self.state_budget));
        self.error.is_none() && out_ok && state_ok
    }
}

/// Compare outputs and (when the oracle has them) final states. A missing state
/// where the oracle has one counts as entirely non-finite, so it fails.
pub fn compare_outputs(
    got: &ScanOutput<f64, f64>,
    want: &ScanOutput<f64, f64>,
) -> (Comparison, Option<Comparison>) {
    let out = compare(&got.out, &want.out);
    let state = want
        .final_states
        .as_ref()
        .map(|w| compare(got.final_states.as_deref().unwrap_or(&[]), w));
    (out, state)
}

/// Bit-for-bit equality of two results (NaN payloads included).
fn bitwise_equal(a: &ScanOutput<f64, f64>, b: &ScanOutput<f64, f64>) -> bool {
    let same = |x: &[f64], y: &[f64]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    };
    same(&a.out, &b.out)
        && match (&a.final_states, &b.final_states) {
            (Some(x), Some(y)) => same(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// Run an implementation and compare it with the oracle. With `repeat`, run it a
/// second time on the same inputs and fail unless both runs agree bit for bit
/// (the determinism check of the GPU kernels).
fn row(
    implementation: String,
    problem: String,
    dtype: DType,
    budgets: (f64, f64),
    repeat: bool,
    mut run: impl FnMut() -> Result<ScanOutput<f64, f64>>,
    want: &ScanOutput<f64, f64>,
) -> CheckRow {
    let start = Instant::now();
    let result = run();
    let time_ms = start.elapsed().as_secs_f64() * 1e3;
    let (out, state, error) = match result {
        Ok(got) => {
            let (o, s) = compare_outputs(&got, want);
            let again = if repeat { Some(run()) } else { None };
            let error = match again {
                Some(Ok(second)) if !bitwise_equal(&got, &second) => Some(
                    "not deterministic: a second run on the same inputs differs bitwise"
                        .to_string(),
                ),
                Some(Err(e)) => Some(format!("second run failed: {e}")),
                _ => None,
            };
            (Some(o), s, error)
        }
        Err(e) => (None, None, Some(e.to_string())),
    };
    CheckRow {
        implementation,
        problem,
        dtype,
        out,
        state,
        out_budget: budgets.0,
        state_budget: budgets.1,
        time_ms,
        error,
    }
}

/// Budgets for an implementation with the given log-decay window.
fn budgets(dtype: DType, k: f64) -> (f64, f64) {
    (rel_l2_budget(dtype, k), state_budget(k))
}

/// Check Mamba-1 implementations against the f64 oracle on `T`-rounded inputs.
pub fn check_scan<T: DeviceElement>(
    impls: &[ScanImpl],
    data: &Mamba1Data,
    gpu: Option<&Gpu>,
) -> Result<Vec<CheckRow>> {
    let inputs = data.inputs::<T>();
    let want = ssm_reference::selective_scan(&inputs.params())?;
    let problem = data.case.describe();
    Ok(impls
        .iter()
        .map(|imp| {
            row(
                imp.name(),
                problem.clone(),
                T::DTYPE,
                budgets(T::DTYPE, 0.0),
                imp.is_cuda(),
                || imp.run(&inputs, gpu),
                &want,
            )
        })
        .collect())
}

/// Check SSD implementations against the f64 recurrence on `T`-rounded inputs.
pub fn check_ssd<T: DeviceElement>(
    impls: &[SsdImpl],
    data: &SsdData,
    gpu: Option<&Gpu>,
) -> Result<Vec<CheckRow>> {
    let inputs = data.inputs::<T>();
    let want = ssm_reference::ssd_recurrence(&inputs.params())?;
    let log_decays = data.log_decays(&inputs);
    let seqlen = data.case.dims.seqlen;
    let problem = data.case.describe();
    Ok(impls
        .iter()
        .map(|imp| {
            let k = imp
                .log_decay_window()
                .map_or(0.0, |w| max_window_log_decay(&log_decays, seqlen, w));
            row(
                imp.name(),
                problem.clone(),
                T::DTYPE,
                budgets(T::DTYPE, k),
                imp.is_cuda(),
                || imp.run(&inputs, gpu),
                &want,
            )
        })
        .collect())
}

/// Check decode-step implementations (output and whole updated cache) against the oracle.
pub fn check_step<T: DeviceElement>(
    family: Family,
    impls: &[StepImpl],
    data: &StepData,
    gpu: Option<&Gpu>,
) -> Result<Vec<CheckRow>> {
    let inputs = data.inputs::<T>();
    let want = StepImpl::Reference.run(family, &inputs, None)?;
    let c = &data.case;
    let problem = format!(
        "step b{} {}{} N{} G{}{}{}",
        c.batch,
        match family {
            Family::Mamba1 => format!("D{}", c.channels),
            Family::Mamba2 => format!("H{} P", c.channels),
        },
        match family {
            Family::Mamba1 => String::new(),
            Family::Mamba2 => c.head_dim.to_string(),
        },
        c.d_state,
        c.groups,
        if c.all_options { " +all" } else { "" },
        if c.indexed.is_some() { " +idx" } else { "" },
    );
    Ok(impls
        .iter()
        .map(|imp| {
            row(
                imp.name(family),
                problem.clone(),
                T::DTYPE,
                budgets(T::DTYPE, 0.0),
                *imp == StepImpl::Cuda,
                || imp.run(family, &inputs, gpu),
                &want,
            )
        })
        .collect())
}
