//! Decode steps (design.md §1.3) in f64; the state cache is updated in place.
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::{Element, Result, StepOutput};

pub fn mamba1_step<T: Element>(
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f64],
) -> Result<StepOutput<f64>> {
    p.validate(state.len())?;
    todo!("reference helper implements this")
}

pub fn mamba2_step<T: Element>(
    p: &Mamba2StepParams<'_, T>,
    state: &mut [f64],
) -> Result<StepOutput<f64>> {
    p.validate(state.len())?;
    todo!("reference helper implements this")
}
