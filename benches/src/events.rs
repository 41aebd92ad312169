//! CUDA-event timing of a batch of launches, for criterion's `iter_custom`:
//! criterion asks for `iters` calls and gets back their device time.

use std::time::Duration;

use ssm_gpu::cudarc::driver::sys::CUevent_flags;
use ssm_gpu::{Gpu, GpuError};

use crate::gpu::GpuWork;

/// Device time of `iters` back-to-back calls of `work`, between two CUDA events.
pub fn time_batch(gpu: &Gpu, work: &mut dyn GpuWork, iters: u64) -> Result<Duration, GpuError> {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = gpu.ctx().new_event(flags)?;
    let end = gpu.ctx().new_event(flags)?;
    gpu.synchronize()?;
    start.record(gpu.stream())?;
    for _ in 0..iters {
        work.launch(gpu)
            .map_err(|e| GpuError::InvalidArgument(e.to_string()))?;
    }
    end.record(gpu.stream())?;
    gpu.synchronize()?;
    let ms = f64::from(start.elapsed_ms(&end)?);
    Ok(Duration::from_secs_f64(ms.max(0.0) / 1e3))
}
