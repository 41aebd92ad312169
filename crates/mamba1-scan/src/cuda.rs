//! CUDA launcher for the forward kernel.
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Result, ScanOutput, SsmError};
use ssm_gpu::{DeviceElement, Gpu};

pub fn selective_scan_cuda<T: DeviceElement>(
    _gpu: &Gpu,
    p: &SelectiveScanParams<'_, T>,
) -> Result<ScanOutput<T, f32>> {
    p.validate()?;
    Err(SsmError::Unsupported {
        implementation: "mamba1-scan CUDA",
        what: "anything yet (kernel not written)".into(),
    })
}
