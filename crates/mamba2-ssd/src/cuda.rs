//! CUDA launcher for the forward kernel.
use ssm_core::mamba2::SsdParams;
use ssm_core::{Result, ScanOutput, SsmError};
use ssm_gpu::{DeviceElement, Gpu};

pub fn ssd_forward_cuda<T: DeviceElement>(
    _gpu: &Gpu,
    p: &SsdParams<'_, T>,
) -> Result<ScanOutput<T, f32>> {
    p.validate()?;
    Err(SsmError::Unsupported {
        implementation: "mamba2-ssd CUDA",
        what: "anything yet (kernel not written)".into(),
    })
}
