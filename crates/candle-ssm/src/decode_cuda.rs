//! The decode steps on candle CUDA tensors (feature `cuda`): the state is
//! copied device-to-device into the new state tensor, and the family's decode
//! kernel (`ssm_gpu::decode::launch_decode_step`, cached per device, dtype,
//! N and tiling) updates that copy in place and writes a fresh output, on candle's
//! stream; the other inputs are read zero-copy. Written once over the family
//! ([`step_cuda`]); each step says its sizes and switches.

use candle_core::cuda_backend::CudaDType;
use candle_core::{Result, Tensor};
use ssm_core::decode::{Mamba1StepDims, Mamba2StepDims, StepDims};
use ssm_gpu::decode::{launch_decode_step, DecodeFamily, DecodeKernel, DeviceStepArgs};
use ssm_gpu::DeviceElement;

use super::{Step1, Step2, OP1, OP2};
use crate::cuda::{borrow, cached_plan, copy, device_of, gpu_err, gpu_for, wrap, Held};
use crate::op::{Roles, NAMES};
use crate::util::ssm_err;

/// One decode step of family `F` (operation `op` in errors): `inputs` by role,
/// the state cache `state`, the family's sizes and switches. Returns the output
/// and the updated copy of the state.
fn step_cuda<F: DecodeFamily, T: DeviceElement + CudaDType>(
    op: &'static str,
    inputs: &Roles<Tensor>,
    state: &Tensor,
    dims: F::Dims,
    options: F::Options,
) -> Result<(Tensor, Tensor)>
where
    DecodeKernel<F, T>: Send + Sync,
{
    let d_state = dims.d_state();
    let dev = device_of(op, "x", &inputs.x)?;
    let gpu = gpu_for(op, &dev)?;
    let dtype = <T as ssm_core::Element>::DTYPE;
    // The tiling of this batch's regime (latency- or bandwidth-bound), as the
    // crates' own decode_step launches it. The cache is keyed by the tiling
    // itself, so batches that launch the same tiling share one compiled kernel
    // and a new regime can never reuse another's entry.
    let tiling = F::tiling_for_batch(dtype, F::batch(&dims));
    let kernel = cached_plan(
        format!(
            "{}-decode {:?} {dtype} {d_state} {tiling:?}",
            F::NAME,
            dev.id()
        ),
        || DecodeKernel::<F, T>::new(&gpu, d_state, tiling).map_err(ssm_err(op)),
    )?;
    let held = Held::new(inputs, NAMES);
    let state_in = borrow("state", state);
    let mut new_state = copy(op, &gpu, &state_in.view::<f32>(op)?)?;
    let mut out = gpu
        .alloc_poisoned::<T>(inputs.x.elem_count())
        .map_err(gpu_err(op))?;
    let args = DeviceStepArgs {
        dims,
        inputs: held.views::<T>(op)?.map(|v| v, |v| v, |n| match n {}),
        options,
    };
    launch_decode_step(
        &gpu,
        &*kernel,
        &args,
        &mut new_state.slice_mut(..),
        &mut out.slice_mut(..),
    )
    .map_err(ssm_err(op))?;
    Ok((
        wrap(out, &dev, inputs.x.dims()),
        wrap(new_state, &dev, state.dims()),
    ))
}

impl Step2 {
    pub(super) fn run_cuda<T: DeviceElement + CudaDType>(&self) -> Result<(Tensor, Tensor)> {
        use mamba2_ssd::decode_cuda::{Mamba2Decode, StepOptions};
        let [batch, heads, head_dim, d_state, groups] = self.dims;
        let dims = Mamba2StepDims {
            batch,
            heads,
            head_dim,
            d_state,
            groups,
            cache_rows: batch,
        };
        let options = StepOptions {
            d_per_head_dim: self.d_per_dim,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
        };
        step_cuda::<Mamba2Decode, T>(OP2, &self.inputs, &self.state, dims, options)
    }
}

impl Step1 {
    pub(super) fn run_cuda<T: DeviceElement + CudaDType>(&self) -> Result<(Tensor, Tensor)> {
        use mamba1_scan::decode_cuda::{Mamba1Decode, StepOptions};
        let [batch, d_inner, d_state, groups] = self.dims;
        let cache_rows = batch;
        let dims = Mamba1StepDims {
            batch,
            d_inner,
            d_state,
            groups,
            cache_rows,
        };
        let options = StepOptions {
            dt_softplus: self.dt_softplus,
        };
        step_cuda::<Mamba1Decode, T>(OP1, &self.inputs, &self.state, dims, options)
    }
}
