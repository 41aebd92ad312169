//! The f32 decode step on the CPU.
use ssm_core::decode::Mamba1StepParams;
use ssm_core::{Element, Result, StepOutput};

pub fn decode_step_cpu<T: Element>(
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    todo!("CPU-port helper implements this")
}
