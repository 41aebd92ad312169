//! The decode steps on candle CUDA tensors (feature `cuda`): the state is
//! copied device-to-device into the new state tensor, and the family's decode
//! kernel (`ssm_gpu::decode::launch_decode_step`, cached per device, dtype and
//! N) updates that copy in place and writes a fresh output, on candle's
//! stream; the other inputs are read zero-copy.

use candle_core::cuda_backend::CudaDType;
use candle_core::{Result, Tensor};
use ssm_gpu::decode::{launch_decode_step, DecodeFamily, DecodeKernel};
use ssm_gpu::DeviceElement;

use super::{Step1, Step2, OP1, OP2};
use crate::cuda::{borrow, cached_plan, copy, device_of, gpu_err, gpu_for, opt_view, wrap};
use crate::util::ssm_err;

impl Step2 {
    pub(super) fn run_cuda<T: DeviceElement + CudaDType>(&self) -> Result<(Tensor, Tensor)> {
        use mamba2_ssd::decode_cuda::{DeviceDSkip, DeviceStepArgs, Mamba2Decode};
        let [batch, heads, head_dim, d_state, groups] = self.dims;
        let dev = device_of(OP2, "x", &self.x)?;
        let gpu = gpu_for(OP2, &dev)?;
        let dtype = <T as ssm_core::Element>::DTYPE;
        let kernel = cached_plan(
            format!("mamba2-decode {:?} {dtype} {d_state}", dev.id()),
            || {
                DecodeKernel::<Mamba2Decode, T>::new(
                    &gpu,
                    d_state,
                    Mamba2Decode::default_tiling(dtype),
                )
                .map_err(ssm_err(OP2))
            },
        )?;
        let (x, dt, a, b, c) = (
            borrow("x", &self.x),
            borrow("dt", &self.dt),
            borrow("A", &self.a),
            borrow("B", &self.b),
            borrow("C", &self.c),
        );
        let d = self.d.as_ref().map(|t| borrow("D", t));
        let z = self.z.as_ref().map(|t| borrow("z", t));
        let bias = self.dt_bias.as_ref().map(|t| borrow("dt_bias", t));
        let state_in = borrow("state", &self.state);
        let mut state = copy(OP2, &gpu, &state_in.view::<f32>(OP2)?)?;
        let mut out = gpu
            .alloc_poisoned::<T>(self.x.elem_count())
            .map_err(gpu_err(OP2))?;
        let d_view = opt_view::<f32>(OP2, &d)?;
        let args = DeviceStepArgs {
            batch,
            heads,
            head_dim,
            d_state,
            groups,
            cache_rows: batch,
            x: x.view(OP2)?,
            dt: dt.view(OP2)?,
            a: a.view(OP2)?,
            b: b.view(OP2)?,
            c: c.view(OP2)?,
            d: d_view.map(|v| {
                if self.d_per_dim {
                    DeviceDSkip::PerHeadDim(v)
                } else {
                    DeviceDSkip::PerHead(v)
                }
            }),
            z: opt_view::<T>(OP2, &z)?,
            dt_bias: opt_view::<f32>(OP2, &bias)?,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            state_batch_indices: None,
        };
        launch_decode_step(
            &gpu,
            &*kernel,
            &args,
            &mut state.slice_mut(..),
            &mut out.slice_mut(..),
        )
        .map_err(ssm_err(OP2))?;
        Ok((
            wrap(out, &dev, self.x.dims()),
            wrap(state, &dev, self.state.dims()),
        ))
    }
}

impl Step1 {
    pub(super) fn run_cuda<T: DeviceElement + CudaDType>(&self) -> Result<(Tensor, Tensor)> {
        use mamba1_scan::decode_cuda::{DeviceStepArgs, Mamba1Decode};
        let [batch, d_inner, d_state, groups] = self.dims;
        let dev = device_of(OP1, "x", &self.x)?;
        let gpu = gpu_for(OP1, &dev)?;
        let dtype = <T as ssm_core::Element>::DTYPE;
        let kernel = cached_plan(
            format!("mamba1-decode {:?} {dtype} {d_state}", dev.id()),
            || {
                DecodeKernel::<Mamba1Decode, T>::new(
                    &gpu,
                    d_state,
                    Mamba1Decode::default_tiling(dtype),
                )
                .map_err(ssm_err(OP1))
            },
        )?;
        let (x, dt, a, b, c) = (
            borrow("x", &self.x),
            borrow("dt", &self.dt),
            borrow("A", &self.a),
            borrow("B", &self.b),
            borrow("C", &self.c),
        );
        let d = self.d.as_ref().map(|t| borrow("D", t));
        let z = self.z.as_ref().map(|t| borrow("z", t));
        let bias = self.dt_bias.as_ref().map(|t| borrow("dt_bias", t));
        let state_in = borrow("state", &self.state);
        let mut state = copy(OP1, &gpu, &state_in.view::<f32>(OP1)?)?;
        let mut out = gpu
            .alloc_poisoned::<T>(self.x.elem_count())
            .map_err(gpu_err(OP1))?;
        let args = DeviceStepArgs {
            batch,
            d_inner,
            d_state,
            groups,
            cache_rows: batch,
            x: x.view(OP1)?,
            dt: dt.view(OP1)?,
            a: a.view(OP1)?,
            b: b.view(OP1)?,
            c: c.view(OP1)?,
            d: opt_view::<f32>(OP1, &d)?,
            z: opt_view::<T>(OP1, &z)?,
            dt_bias: opt_view::<f32>(OP1, &bias)?,
            dt_softplus: self.dt_softplus,
            state_batch_indices: None,
        };
        launch_decode_step(
            &gpu,
            &*kernel,
            &args,
            &mut state.slice_mut(..),
            &mut out.slice_mut(..),
        )
        .map_err(ssm_err(OP1))?;
        Ok((
            wrap(out, &dev, self.x.dims()),
            wrap(state, &dev, self.state.dims()),
        ))
    }
}
