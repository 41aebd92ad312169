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

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, Result, Tensor, WithDType};
use mamba2_ssd::cuda::backward::{SsdBwdPlan, DEFAULT_BWD_CHUNK};
use mamba2_ssd::cuda::{
    CudaOptions, DMode, SsdDeviceInputs, SsdFeatures, SsdInputViews, SsdOutputViews, SsdPlan,
};
use ssm_gpu::{DeviceElement, Gpu};

use super::{SsdOp, OP};
use crate::cuda::{
    borrow, cached_plan, copy, device_of, gpu_err, gpu_for, opt_view, wrap, Borrowed,
};
use crate::util::ssm_err;

impl SsdOp {
    fn features(&self) -> SsdFeatures {
        let i = &self.inputs;
        SsdFeatures {
            dt_bias: i.dt_bias.is_some(),
            dt_softplus: self.dt_softplus,
            d: match (&i.d, i.d_per_dim) {
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
    fn plan_key(&self, what: &str, dev: &CudaDevice) -> String {
        format!(
            "ssd-{what} {:?} {:?} {:?} {:?} {:?}",
            dev.id(),
            self.inputs.x.dtype(),
            self.dims,
            self.features(),
            (self.dt_limit.0.to_bits(), self.dt_limit.1.to_bits())
        )
    }

    fn tokens(&self) -> usize {
        self.dims.batch * self.dims.seqlen
    }

    pub(super) fn forward_cuda<T: DeviceElement + CudaDType>(
        &self,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let d = self.dims;
        let out_len = self.tokens() * d.heads * d.head_dim;
        let gpu = gpu_for(OP, dev)?;
        if out_len == 0 {
            // L = 0: no tokens, nothing to launch.
            let empty = dev.alloc_zeros::<T>(0)?;
            return Ok(CudaStorage::wrap_cuda_slice(empty, dev.clone()));
        }
        let plan = cached_plan(self.plan_key("fwd", dev), || {
            SsdPlan::for_shapes(
                &gpu,
                <T as ssm_core::Element>::DTYPE,
                d,
                self.features(),
                self.dt_limit,
                None,
                &CudaOptions::default(),
            )
            .map_err(ssm_err(OP))
        })?;
        let held = Held::new(self);
        // Poisoned (NaN): an element the kernels failed to write shows.
        let mut out = gpu.alloc_poisoned::<T>(out_len).map_err(gpu_err(OP))?;
        let inputs = held.views::<T>()?;
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

    pub(super) fn backward_cuda<T: DeviceElement + CudaDType + WithDType>(
        &self,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let i = &self.inputs;
        let dev = device_of(OP, "x", &i.x)?;
        let gpu = gpu_for(OP, &dev)?;
        if self.tokens() == 0 {
            // No tokens: every gradient is zero (dA, dD, ddt_bias sum over none).
            return i.list().iter().map(|t| t.zeros_like().map(Some)).collect();
        }
        let plan = cached_plan(self.plan_key("bwd", &dev), || self.bwd_plan::<T>(&gpu))?;
        let d_out = grad.to_dtype(i.x.dtype())?.contiguous()?;
        let held = Held::new(self);
        let owned = held.owned::<T>(&gpu)?;
        let d_out_b = borrow("d_out", &d_out);
        let d_out_owned = copy(OP, &gpu, &d_out_b.view::<T>(OP)?)?;
        let mut grads = plan.alloc_grads::<T>(&gpu).map_err(ssm_err(OP))?;
        let mut ws = plan.workspace(&gpu).map_err(ssm_err(OP))?;
        plan.launch(&gpu, &owned, &d_out_owned, None, &mut grads, &mut ws)
            .map_err(ssm_err(OP))?;
        let mut v = vec![
            Some(wrap(grads.dx, &dev, i.x.dims())),
            Some(wrap(grads.ddt, &dev, i.dt.dims())),
            Some(wrap(grads.da, &dev, i.a.dims())),
            Some(wrap(grads.db, &dev, i.b.dims())),
            Some(wrap(grads.dc, &dev, i.c.dims())),
        ];
        if let (Some(d), Some(dd)) = (&i.d, grads.dd) {
            v.push(Some(wrap(dd, &dev, d.dims())));
        }
        if let (Some(z), Some(dz)) = (&i.z, grads.dz) {
            v.push(Some(wrap(dz, &dev, z.dims())));
        }
        if let (Some(bias), Some(db)) = (&i.dt_bias, grads.ddt_bias) {
            v.push(Some(wrap(db, &dev, bias.dims())));
        }
        Ok(v)
    }

    /// The backward plan, from shapes and options alone.
    fn bwd_plan<T: DeviceElement>(&self, gpu: &Gpu) -> Result<SsdBwdPlan> {
        SsdBwdPlan::for_shapes(
            gpu,
            <T as ssm_core::Element>::DTYPE,
            self.dims,
            self.features(),
            self.dt_limit,
            None,
            false,
            DEFAULT_BWD_CHUNK,
        )
        .map_err(ssm_err(OP))
    }
}

/// The inputs' storages, borrowed while a launch reads them.
struct Held<'a> {
    x: Borrowed<'a>,
    dt: Borrowed<'a>,
    a: Borrowed<'a>,
    b: Borrowed<'a>,
    c: Borrowed<'a>,
    d: Option<Borrowed<'a>>,
    z: Option<Borrowed<'a>>,
    dt_bias: Option<Borrowed<'a>>,
}

impl<'a> Held<'a> {
    fn new(op: &'a SsdOp) -> Self {
        let i = &op.inputs;
        Held {
            x: borrow("x", &i.x),
            dt: borrow("dt", &i.dt),
            a: borrow("A", &i.a),
            b: borrow("B", &i.b),
            c: borrow("C", &i.c),
            d: i.d.as_ref().map(|t| borrow("D", t)),
            z: i.z.as_ref().map(|t| borrow("z", t)),
            dt_bias: i.dt_bias.as_ref().map(|t| borrow("dt_bias", t)),
        }
    }

    fn views<T: CudaDType>(&self) -> Result<SsdInputViews<'_, T>> {
        Ok(SsdInputViews {
            x: self.x.view(OP)?,
            dt: self.dt.view(OP)?,
            a: self.a.view(OP)?,
            b: self.b.view(OP)?,
            c: self.c.view(OP)?,
            dt_bias: opt_view::<f32>(OP, &self.dt_bias)?,
            d: opt_view::<f32>(OP, &self.d)?,
            z: opt_view::<T>(OP, &self.z)?,
            initial_states: None,
        })
    }

    /// Device-to-device copies of the inputs, as the backward plan takes them.
    fn owned<T: DeviceElement + CudaDType>(&self, gpu: &Gpu) -> Result<SsdDeviceInputs<T>> {
        let v = self.views::<T>()?;
        let opt32 =
            |o: &Option<CudaView<'_, f32>>| o.as_ref().map(|v| copy(OP, gpu, v)).transpose();
        Ok(SsdDeviceInputs {
            x: copy(OP, gpu, &v.x)?,
            dt: copy(OP, gpu, &v.dt)?,
            a: copy(OP, gpu, &v.a)?,
            b: copy(OP, gpu, &v.b)?,
            c: copy(OP, gpu, &v.c)?,
            dt_bias: opt32(&v.dt_bias)?,
            d: opt32(&v.d)?,
            z: v.z.as_ref().map(|z| copy(OP, gpu, z)).transpose()?,
            initial_states: None,
        })
    }
}
