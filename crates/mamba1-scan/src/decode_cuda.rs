//! CUDA launcher for the decode step.
use ssm_core::decode::Mamba1StepParams;
use ssm_core::{Result, SsmError, StepOutput};
use ssm_gpu::{DeviceElement, Gpu};

pub fn decode_step_cuda<T: DeviceElement>(
    _gpu: &Gpu,
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    Err(SsmError::Unsupported {
        implementation: "mamba1-scan CUDA decode",
        what: "anything yet (kernel not written)".into(),
    })
}
