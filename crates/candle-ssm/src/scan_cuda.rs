//! The selective scan on candle CUDA tensors (feature `cuda`).
//!
//! - Forward: `ScanProblem::from_shapes` + `ScanPlan` (cached per device and
//!   shape), `launch_views` on views of candle's storage (zero-copy, layout
//!   offsets honoured) into a fresh output, on candle's stream.
//! - Backward: `ScanBwdPlan` (planned from shapes). Its `launch` takes the
//!   forward's buffers as owned `ScanBuffers` (not views), so the inputs are
//!   copied device-to-device into owned buffers once per backward call (no
//!   host round trip); the unread `out` of `ScanBuffers` is allocated too.

use candle_core::{CudaDevice, CudaStorage, Result, Tensor};
use mamba1_scan::cuda::{
    ScanBuffers, ScanBwdPlan, ScanGradBuffers, ScanOptions, ScanPlan, ScanProblem, ScanTuning,
    ScanViews,
};

use super::{ScanOp, OP};
use crate::cuda::{cached_plan, device_of, gpu_err, gpu_for, wrap_grads, Held};
use crate::op::{all_roles, token_list, Roles, Seq, SeqOp, SeqOpCuda};
use crate::util::ssm_err;

impl ScanOp {
    fn problem<T: Seq>(&self, i: &Roles<Tensor>) -> Result<ScanProblem> {
        ScanProblem::from_shapes(
            <T as ssm_core::Element>::DTYPE,
            self.dims,
            Some(self.groups),
            Some(self.groups),
            ScanOptions {
                has_d: i.d.is_some(),
                has_z: i.z.is_some(),
                has_delta_bias: i.dt_bias.is_some(),
                delta_softplus: self.delta_softplus,
                has_initial_states: false,
                return_final_states: false,
            },
            None,
        )
        .map_err(ssm_err(OP))
    }
}

impl SeqOpCuda for ScanOp {
    /// The forward into a fresh output, reading candle's storage zero-copy.
    fn forward_cuda<T: Seq>(&self, i: &Roles<Tensor>, dev: &CudaDevice) -> Result<CudaStorage> {
        let gpu = gpu_for(OP, dev)?;
        let io_len = self.dims.io_len();
        if io_len == 0 {
            let empty = dev.alloc_zeros::<T>(0)?;
            return Ok(CudaStorage::wrap_cuda_slice(empty, dev.clone()));
        }
        let problem = self.problem::<T>(i)?;
        let key = format!("scan-fwd {:?} {problem:?}", dev.id());
        let plan = cached_plan(key, || {
            ScanPlan::new(&gpu, &problem, ScanTuning::default()).map_err(ssm_err(OP))
        })?;
        let held = Held::new(i, ScanOp::NAMES);
        let mut out = gpu.alloc_poisoned::<T>(io_len).map_err(gpu_err(OP))?;
        let v = held.views::<T>(OP)?;
        plan.launch_views(
            &gpu,
            ScanViews {
                u: v.x,
                delta: v.dt,
                a: v.a,
                b: v.b,
                c: v.c,
                d: v.d,
                z: v.z,
                delta_bias: v.dt_bias,
                initial_states: None,
                cu_seqlens: None,
                out: out.slice_mut(..),
                final_states: None,
            },
        )
        .map_err(ssm_err(OP))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    /// The backward on device copies of the inputs (the plan takes owned buffers).
    fn backward_cuda<T: Seq>(
        &self,
        i: &Roles<Tensor>,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let dev = device_of(OP, "u", &i.x)?;
        let gpu = gpu_for(OP, &dev)?;
        let io_len = self.dims.io_len();
        if io_len == 0 {
            return token_list(i)
                .iter()
                .map(|t| t.zeros_like().map(Some))
                .collect();
        }
        let problem = self.problem::<T>(i)?;
        let key = format!("scan-bwd {:?} {problem:?}", dev.id());
        let plan = cached_plan(key, || {
            ScanBwdPlan::new(&gpu, &problem).map_err(ssm_err(OP))
        })?;
        let d_out = grad.to_dtype(i.x.dtype())?.contiguous()?;
        let d_out_owned = Held::copy_of::<T>(OP, &gpu, "d_out", &d_out)?;
        let owned = Held::new(i, ScanOp::NAMES).owned::<T>(OP, &gpu)?;
        // The plan takes the forward's buffers whole: with an `out` it does not read.
        let fwd = ScanBuffers {
            u: owned.x,
            delta: owned.dt,
            a: owned.a,
            b: owned.b,
            c: owned.c,
            d: owned.d,
            z: owned.z,
            delta_bias: owned.dt_bias,
            initial_states: None,
            cu_seqlens: None,
            out: gpu.alloc_poisoned::<T>(io_len).map_err(gpu_err(OP))?,
            final_states: None,
        };
        let mut g = ScanGradBuffers::<T>::alloc(&gpu, &problem).map_err(ssm_err(OP))?;
        let mut ws = plan.workspace(&gpu).map_err(ssm_err(OP))?;
        plan.launch(&gpu, &fwd, &d_out_owned, None, &mut g, &mut ws)
            .map_err(ssm_err(OP))?;
        let by_role = all_roles(g.du, g.ddelta, g.da, g.db, g.dc, g.dd, g.dz, g.ddelta_bias);
        wrap_grads(i, &dev, by_role)
    }
}
