//! CUDA-event timing: a batch of launches between two events (criterion's
//! `iter_custom` asks for `iters` calls and gets back their device time), and
//! per-launch event pairs made ahead of a timed window (the runner).

use std::time::Duration;

use ssm_gpu::cudarc::driver::sys::CUevent_flags;
use ssm_gpu::cudarc::driver::CudaEvent;
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

/// One (start, end) event pair per timed launch, created before the timed window.
pub struct EventPairs {
    pairs: Vec<(CudaEvent, CudaEvent)>,
}

impl EventPairs {
    pub fn new(gpu: &Gpu, launches: usize) -> Result<Self, GpuError> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let pairs = (0..launches)
            .map(|_| Ok((gpu.ctx().new_event(flags)?, gpu.ctx().new_event(flags)?)))
            .collect::<Result<Vec<_>, GpuError>>()?;
        Ok(EventPairs { pairs })
    }

    /// Launch `work` once per pair, back to back, and return each launch's device
    /// time in ms (in launch order).
    pub fn time(&self, gpu: &Gpu, work: &mut dyn GpuWork) -> Result<Vec<f64>, GpuError> {
        gpu.synchronize()?;
        for (start, end) in &self.pairs {
            start.record(gpu.stream())?;
            work.launch(gpu)
                .map_err(|e| GpuError::InvalidArgument(e.to_string()))?;
            end.record(gpu.stream())?;
        }
        gpu.synchronize()?;
        self.pairs
            .iter()
            .map(|(start, end)| Ok(f64::from(start.elapsed_ms(end)?)))
            .collect()
    }
}
