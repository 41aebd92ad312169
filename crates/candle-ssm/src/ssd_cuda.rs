//! The SSD op on candle CUDA tensors (feature `cuda`).
//!
//! - Forward: `SsdPlan::for_shapes` (cached per device and shape) launched with
//!   `launch_views` on views of candle's own storage (zero-copy, layout offsets
//!   honoured) into a fresh output buffer, on candle's stream.
//! - Backward: `SsdBwdPlan::for_shapes` (cached), whose `launch`
//!   (`crates/mamba2-ssd/src/cuda/backward.rs`) takes the forward's inputs as
//!   *owned* `SsdDeviceInputs` (not views), so this path copies the inputs and
//!   `d_out` device-to-device into owned buffers once per backward call. No host
//!   round trip; the copies cost about one read and write of the inputs, small
//!   next to the backward itself. A view-taking backward launch in mamba2-ssd
//!   would remove them.

use candle_core::{CudaDevice, CudaStorage, Result, Tensor};
use mamba2_ssd::cuda::backward::{SsdBwdPlan, DEFAULT_BWD_CHUNK};
use mamba2_ssd::cuda::{
    CudaOptions, DMode, SsdDeviceInputs, SsdFeatures, SsdInputViews, SsdOutputViews, SsdPlan,
};
use ssm_gpu::Gpu;

use super::{SsdOp, OP};
use crate::cuda::{cached_plan, device_of, gpu_err, gpu_for, wrap_grads, Held};
use crate::op::{all_roles, token_list, Roles, Seq, SeqOp, SeqOpCuda};
use crate::util::ssm_err;

impl SsdOp {
    fn features(&self, i: &Roles<Tensor>) -> SsdFeatures {
        SsdFeatures {
            dt_bias: i.dt_bias.is_some(),
            dt_softplus: self.dt_softplus,
            d: match (&i.d, self.d_per_dim) {
                (None, _) => DMode::None,
                (Some(_), false) => DMode::PerHead,
                (Some(_), true) => DMode::PerHeadDim,
            },
            z: i.z.is_some(),
            initial_states: false,
            final_states: false,
        }
    }

    /// Names device, dtype, shape and options: the plan caches' key.
    fn plan_key(&self, i: &Roles<Tensor>, what: &str, dev: &CudaDevice) -> String {
        format!(
            "ssd-{what} {:?} {:?} {:?} {:?} {:?}",
            dev.id(),
            i.x.dtype(),
            self.dims,
            self.features(i),
            (self.dt_limit.0.to_bits(), self.dt_limit.1.to_bits())
        )
    }

    /// The backward plan, from shapes and options alone.
    fn bwd_plan<T: Seq>(&self, i: &Roles<Tensor>, gpu: &Gpu) -> Result<SsdBwdPlan> {
        SsdBwdPlan::for_shapes(
            gpu,
            <T as ssm_core::Element>::DTYPE,
            self.dims,
            self.features(i),
            self.dt_limit,
            None,
            false,
            DEFAULT_BWD_CHUNK,
        )
        .map_err(ssm_err(OP))
    }
}

impl SeqOpCuda for SsdOp {
    /// The forward into a fresh output, reading candle's storage zero-copy.
    fn forward_cuda<T: Seq>(&self, i: &Roles<Tensor>, dev: &CudaDevice) -> Result<CudaStorage> {
        let out_len = self.dims.x_len();
        let gpu = gpu_for(OP, dev)?;
        if out_len == 0 {
            // L = 0: no tokens, nothing to launch.
            let empty = dev.alloc_zeros::<T>(0)?;
            return Ok(CudaStorage::wrap_cuda_slice(empty, dev.clone()));
        }
        let plan = cached_plan(self.plan_key(i, "fwd", dev), || {
            SsdPlan::for_shapes(
                &gpu,
                <T as ssm_core::Element>::DTYPE,
                self.dims,
                self.features(i),
                self.dt_limit,
                None,
                &CudaOptions::default(),
            )
            .map_err(ssm_err(OP))
        })?;
        let held = Held::new(i, SsdOp::NAMES);
        // Poisoned (NaN): an element the kernels failed to write shows.
        let mut out = gpu.alloc_poisoned::<T>(out_len).map_err(gpu_err(OP))?;
        let v = held.views::<T>(OP)?;
        let inputs = SsdInputViews {
            x: v.x,
            dt: v.dt,
            a: v.a,
            b: v.b,
            c: v.c,
            dt_bias: v.dt_bias,
            d: v.d,
            z: v.z,
            initial_states: None,
        };
        plan.launch_views(
            &gpu,
            &inputs,
            SsdOutputViews {
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
        let dev = device_of(OP, "x", &i.x)?;
        let gpu = gpu_for(OP, &dev)?;
        if self.dims.tokens() == 0 {
            // No tokens: every gradient is zero (dA, dD, ddt_bias sum over none).
            return token_list(i)
                .iter()
                .map(|t| t.zeros_like().map(Some))
                .collect();
        }
        let plan = cached_plan(self.plan_key(i, "bwd", &dev), || {
            self.bwd_plan::<T>(i, &gpu)
        })?;
        let d_out = grad.to_dtype(i.x.dtype())?.contiguous()?;
        let o = Held::new(i, SsdOp::NAMES).owned::<T>(OP, &gpu)?;
        let owned = SsdDeviceInputs {
            x: o.x,
            dt: o.dt,
            a: o.a,
            b: o.b,
            c: o.c,
            dt_bias: o.dt_bias,
            d: o.d,
            z: o.z,
            initial_states: None,
        };
        let d_out_owned = Held::copy_of::<T>(OP, &gpu, "d_out", &d_out)?;
        let mut g = plan.alloc_grads::<T>(&gpu).map_err(ssm_err(OP))?;
        let mut ws = plan.workspace(&gpu).map_err(ssm_err(OP))?;
        plan.launch(&gpu, &owned, &d_out_owned, None, &mut g, &mut ws)
            .map_err(ssm_err(OP))?;
        let by_role = all_roles(g.dx, g.ddt, g.da, g.db, g.dc, g.dd, g.dz, g.ddt_bias);
        wrap_grads(i, &dev, by_role)
    }
}
