//! The selective scan on candle CUDA tensors (feature `cuda`).
//!
//! - Forward: `ScanProblem::from_shapes` + `ScanPlan` (cached per device and
//!   shape), `launch_views` on views of candle's storage (zero-copy, layout
//!   offsets honoured) into a fresh output, on candle's stream.
//! - Backward: `ScanBwdPlan` (planned from shapes). Its `launch` takes the
//!   forward's buffers as owned `ScanBuffers` (not views), so the inputs are
//!   copied device-to-device into owned buffers once per backward call (no
//!   host round trip); the unread `out` of `ScanBuffers` is allocated too.

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, Result, Tensor};
use mamba1_scan::cuda::{
    ScanBuffers, ScanBwdPlan, ScanGradBuffers, ScanOptions, ScanPlan, ScanProblem, ScanTuning,
    ScanViews,
};
use ssm_gpu::{DeviceElement, Gpu};

use super::{ScanOp, OP};
use crate::cuda::{
    borrow, cached_plan, copy, device_of, gpu_err, gpu_for, opt_view, wrap, Borrowed,
};
use crate::util::ssm_err;

impl ScanOp {
    fn problem<T: DeviceElement>(&self) -> Result<ScanProblem> {
        let i = &self.inputs;
        ScanProblem::from_shapes(
            <T as ssm_core::Element>::DTYPE,
            self.dims,
            Some(self.groups),
            Some(self.groups),
            ScanOptions {
                has_d: i.d.is_some(),
                has_z: i.z.is_some(),
                has_delta_bias: i.delta_bias.is_some(),
                delta_softplus: self.delta_softplus,
                has_initial_states: false,
                return_final_states: false,
            },
            None,
        )
        .map_err(ssm_err(OP))
    }

    fn io_len(&self) -> usize {
        self.dims.batch * self.dims.d_inner * self.dims.seqlen
    }

    pub(super) fn forward_cuda<T: DeviceElement + CudaDType>(
        &self,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let gpu = gpu_for(OP, dev)?;
        if self.io_len() == 0 {
            let empty = dev.alloc_zeros::<T>(0)?;
            return Ok(CudaStorage::wrap_cuda_slice(empty, dev.clone()));
        }
        let problem = self.problem::<T>()?;
        let key = format!("scan-fwd {:?} {problem:?}", dev.id());
        let plan = cached_plan(key, || {
            ScanPlan::new(&gpu, &problem, ScanTuning::default()).map_err(ssm_err(OP))
        })?;
        let held = Held::new(self);
        let mut out = gpu
            .alloc_poisoned::<T>(self.io_len())
            .map_err(gpu_err(OP))?;
        let v = held.views::<T>()?;
        plan.launch_views(
            &gpu,
            ScanViews {
                u: v.u,
                delta: v.delta,
                a: v.a,
                b: v.b,
                c: v.c,
                d: v.d,
                z: v.z,
                delta_bias: v.delta_bias,
                initial_states: None,
                cu_seqlens: None,
                out: out.slice_mut(..),
                final_states: None,
            },
        )
        .map_err(ssm_err(OP))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    pub(super) fn backward_cuda<T: DeviceElement + CudaDType>(
        &self,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let i = &self.inputs;
        let dev = device_of(OP, "u", &i.u)?;
        let gpu = gpu_for(OP, &dev)?;
        if self.io_len() == 0 {
            return i.list().iter().map(|t| t.zeros_like().map(Some)).collect();
        }
        let problem = self.problem::<T>()?;
        let key = format!("scan-bwd {:?} {problem:?}", dev.id());
        let plan = cached_plan(key, || {
            ScanBwdPlan::new(&gpu, &problem).map_err(ssm_err(OP))
        })?;
        let d_out = grad.to_dtype(i.u.dtype())?.contiguous()?;
        let d_out_b = borrow("d_out", &d_out);
        let d_out_owned = copy(OP, &gpu, &d_out_b.view::<T>(OP)?)?;
        let held = Held::new(self);
        let fwd = held.owned::<T>(&gpu, self.io_len())?;
        let mut grads = ScanGradBuffers::<T>::alloc(&gpu, &problem).map_err(ssm_err(OP))?;
        let mut ws = plan.workspace(&gpu).map_err(ssm_err(OP))?;
        plan.launch(&gpu, &fwd, &d_out_owned, None, &mut grads, &mut ws)
            .map_err(ssm_err(OP))?;
        let mut v = vec![
            Some(wrap(grads.du, &dev, i.u.dims())),
            Some(wrap(grads.ddelta, &dev, i.delta.dims())),
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
        if let (Some(bias), Some(db)) = (&i.delta_bias, grads.ddelta_bias) {
            v.push(Some(wrap(db, &dev, bias.dims())));
        }
        Ok(v)
    }
}

/// The inputs' storages, borrowed while a launch reads them.
struct Held<'a> {
    u: Borrowed<'a>,
    delta: Borrowed<'a>,
    a: Borrowed<'a>,
    b: Borrowed<'a>,
    c: Borrowed<'a>,
    d: Option<Borrowed<'a>>,
    z: Option<Borrowed<'a>>,
    delta_bias: Option<Borrowed<'a>>,
}

/// Views of the inputs (the forward's part of `ScanViews`).
struct InputViews<'a, T> {
    u: CudaView<'a, T>,
    delta: CudaView<'a, T>,
    a: CudaView<'a, f32>,
    b: CudaView<'a, T>,
    c: CudaView<'a, T>,
    d: Option<CudaView<'a, f32>>,
    z: Option<CudaView<'a, T>>,
    delta_bias: Option<CudaView<'a, f32>>,
}

impl<'a> Held<'a> {
    fn new(op: &'a ScanOp) -> Self {
        let i = &op.inputs;
        Held {
            u: borrow("u", &i.u),
            delta: borrow("delta", &i.delta),
            a: borrow("A", &i.a),
            b: borrow("B", &i.b),
            c: borrow("C", &i.c),
            d: i.d.as_ref().map(|t| borrow("D", t)),
            z: i.z.as_ref().map(|t| borrow("z", t)),
            delta_bias: i.delta_bias.as_ref().map(|t| borrow("delta_bias", t)),
        }
    }

    fn views<T: CudaDType>(&self) -> Result<InputViews<'_, T>> {
        Ok(InputViews {
            u: self.u.view(OP)?,
            delta: self.delta.view(OP)?,
            a: self.a.view(OP)?,
            b: self.b.view(OP)?,
            c: self.c.view(OP)?,
            d: opt_view::<f32>(OP, &self.d)?,
            z: opt_view::<T>(OP, &self.z)?,
            delta_bias: opt_view::<f32>(OP, &self.delta_bias)?,
        })
    }

    /// Device-to-device copies of the inputs, as the backward plan takes them
    /// (with an `out` buffer the backward does not read).
    fn owned<T: DeviceElement + CudaDType>(
        &self,
        gpu: &Gpu,
        io_len: usize,
    ) -> Result<ScanBuffers<T>> {
        let v = self.views::<T>()?;
        let opt32 =
            |o: &Option<CudaView<'_, f32>>| o.as_ref().map(|v| copy(OP, gpu, v)).transpose();
        Ok(ScanBuffers {
            u: copy(OP, gpu, &v.u)?,
            delta: copy(OP, gpu, &v.delta)?,
            a: copy(OP, gpu, &v.a)?,
            b: copy(OP, gpu, &v.b)?,
            c: copy(OP, gpu, &v.c)?,
            d: opt32(&v.d)?,
            z: v.z.as_ref().map(|z| copy(OP, gpu, z)).transpose()?,
            delta_bias: opt32(&v.delta_bias)?,
            initial_states: None,
            cu_seqlens: None,
            out: gpu.alloc_poisoned::<T>(io_len).map_err(gpu_err(OP))?,
            final_states: None,
        })
    }
}
