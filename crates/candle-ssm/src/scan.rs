//! The Mamba-1 selective scan as a candle op, with its backward.
//!
//! Layouts are mamba_ssm's (channel-major, time last): `u, delta, z, out:
//! (b, D_in, L)`, `A: (D_in, N)`, `B, C: (b, G, N, L)` (time-varying, shared by
//! groups of `D_in / G` channels), `D, delta_bias: (D_in)`.
//!
//! - CPU tensors: `mamba1_scan::selective_scan` / `selective_scan_backward`
//!   with `Backend::Cpu` (the L-blocked f32 port).
//! - CUDA tensors (feature `cuda`): `ScanPlan::launch_views` on candle's
//!   storage (zero-copy) and `ScanBwdPlan` (`scan_cuda.rs`).
//!
//! Gradients reach all eight inputs through a gradient token (`grad.rs`).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use mamba1_scan::{Backend, CpuOptions};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::ScanGrads;
use ssm_gpu::DeviceElement;

use crate::grad::{token, GradSlot};
use crate::util::{
    check_dims, dims_n, elem_of, host, host_opt, prepared, same_kind, ssm_err, tensor, Elem,
};

#[cfg(feature = "cuda")]
#[path = "scan_cuda.rs"]
mod scan_cuda;

const OP: &str = "candle-ssm selective_scan";

/// The Mamba-1 selective scan: build with [`SelectiveScan::new`] and the
/// builder methods, run with [`SelectiveScan::run`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let (b, d, l, g, n) = (1, 4, 8, 1, 3);
/// let u = Tensor::randn(0f32, 1., (b, d, l), &dev)?;
/// let delta = Tensor::full(0.1f32, (b, d, l), &dev)?;
/// let a = Tensor::full(-1f32, (d, n), &dev)?;
/// let bm = Tensor::randn(0f32, 1., (b, g, n, l), &dev)?;
/// let cm = Tensor::randn(0f32, 1., (b, g, n, l), &dev)?;
/// let y = candle_ssm::SelectiveScan::new(&u, &delta, &a, &bm, &cm).run()?;
/// assert_eq!(y.dims(), &[b, d, l]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SelectiveScan {
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Option<Tensor>,
    z: Option<Tensor>,
    delta_bias: Option<Tensor>,
    delta_softplus: bool,
    block_len: usize,
}

impl SelectiveScan {
    /// The required inputs: `u, delta (b, D_in, L)`, `A (D_in, N)`,
    /// `B, C (b, G, N, L)`.
    pub fn new(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Self {
        SelectiveScan {
            u: u.clone(),
            delta: delta.clone(),
            a: a.clone(),
            b: b.clone(),
            c: c.clone(),
            d: None,
            z: None,
            delta_bias: None,
            delta_softplus: false,
            block_len: CpuOptions::default().block_len,
        }
    }
    /// The skip term `D (D_in)`.
    pub fn d(mut self, d: &Tensor) -> Self {
        self.d = Some(d.clone());
        self
    }
    /// The gate `z (b, D_in, L)`: `out = y * silu(z)`.
    pub fn z(mut self, z: &Tensor) -> Self {
        self.z = Some(z.clone());
        self
    }
    /// `delta_bias (D_in)`, added to `delta` before the softplus.
    pub fn delta_bias(mut self, bias: &Tensor) -> Self {
        self.delta_bias = Some(bias.clone());
        self
    }
    /// Apply softplus to `delta + delta_bias` (mamba_ssm's `delta_softplus`).
    pub fn delta_softplus(mut self, on: bool) -> Self {
        self.delta_softplus = on;
        self
    }
    /// Steps per L-block of the CPU port (the CUDA kernel picks its own tile).
    pub fn block_len(mut self, steps: usize) -> Self {
        self.block_len = steps;
        self
    }

    /// Run the scan; the result `(b, D_in, L)` has the dtype of `u` and tracks
    /// gradients to every input that does. Inputs that are not contiguous, and
    /// `A`, `D`, `delta_bias` in another float type than f32, are converted
    /// first (candle ops, so gradients flow through the conversion).
    pub fn run(&self) -> Result<Tensor> {
        let [batch, d_inner, seqlen] = dims_n(OP, "u", &self.u, ["b", "D_in", "L"])?;
        let [_, groups, d_state, _] = dims_n(OP, "B", &self.b, ["b", "G", "N", "L"])?;
        elem_of(OP, "u", &self.u)?;
        let seq = self.u.dtype();
        let bdl = [("b", batch), ("D_in", d_inner), ("L", seqlen)];
        let bgnl = [("b", batch), ("G", groups), ("N", d_state), ("L", seqlen)];
        check_dims(OP, "delta", &self.delta, &bdl)?;
        check_dims(OP, "A", &self.a, &[("D_in", d_inner), ("N", d_state)])?;
        check_dims(OP, "B", &self.b, &bgnl)?;
        check_dims(OP, "C", &self.c, &bgnl)?;
        for (name, t) in [("delta", &self.delta), ("B", &self.b), ("C", &self.c)] {
            same_kind(OP, name, t, &self.u)?;
        }
        if let Some(z) = &self.z {
            same_kind(OP, "z", z, &self.u)?;
            check_dims(OP, "z", z, &bdl)?;
        }
        if let Some(d) = &self.d {
            check_dims(OP, "D", d, &[("D_in", d_inner)])?;
        }
        if let Some(bias) = &self.delta_bias {
            check_dims(OP, "delta_bias", bias, &[("D_in", d_inner)])?;
        }
        let f32p = |t: &Tensor| prepared(t, DType::F32);
        let inputs = ScanInputs {
            u: prepared(&self.u, seq)?,
            delta: prepared(&self.delta, seq)?,
            a: f32p(&self.a)?,
            b: prepared(&self.b, seq)?,
            c: prepared(&self.c, seq)?,
            d: self.d.as_ref().map(f32p).transpose()?,
            z: self.z.as_ref().map(|z| prepared(z, seq)).transpose()?,
            delta_bias: self.delta_bias.as_ref().map(f32p).transpose()?,
        };
        let slot = GradSlot::default();
        let tok = token(&inputs.list(), &slot)?;
        tok.apply_op1(ScanOp {
            inputs,
            dims: Mamba1Dims::new(batch, d_inner, d_state, seqlen),
            groups,
            delta_softplus: self.delta_softplus,
            block_len: self.block_len,
            slot,
        })
    }
}

/// The prepared (contiguous, typed) inputs of one call.
pub(crate) struct ScanInputs {
    pub(crate) u: Tensor,
    pub(crate) delta: Tensor,
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) c: Tensor,
    pub(crate) d: Option<Tensor>,
    pub(crate) z: Option<Tensor>,
    pub(crate) delta_bias: Option<Tensor>,
}

impl ScanInputs {
    /// The token order: the gradient slot is indexed like this list.
    fn list(&self) -> Vec<Tensor> {
        let mut v = vec![
            self.u.clone(),
            self.delta.clone(),
            self.a.clone(),
            self.b.clone(),
            self.c.clone(),
        ];
        v.extend(self.d.iter().cloned());
        v.extend(self.z.iter().cloned());
        v.extend(self.delta_bias.iter().cloned());
        v
    }
}

/// Host copies of the inputs, from which `SelectiveScanParams` borrow.
struct ScanHost<T> {
    u: Vec<T>,
    delta: Vec<T>,
    a: Vec<f32>,
    b: Vec<T>,
    c: Vec<T>,
    d: Option<Vec<f32>>,
    z: Option<Vec<T>>,
    delta_bias: Option<Vec<f32>>,
}

pub(crate) struct ScanOp {
    pub(crate) inputs: ScanInputs,
    pub(crate) dims: Mamba1Dims,
    pub(crate) groups: usize,
    pub(crate) delta_softplus: bool,
    pub(crate) block_len: usize,
    slot: GradSlot,
}

impl ScanOp {
    fn host<T: candle_core::WithDType>(&self) -> Result<ScanHost<T>> {
        let i = &self.inputs;
        Ok(ScanHost {
            u: host(&i.u)?,
            delta: host(&i.delta)?,
            a: host(&i.a)?,
            b: host(&i.b)?,
            c: host(&i.c)?,
            d: host_opt(i.d.as_ref())?,
            z: host_opt(i.z.as_ref())?,
            delta_bias: host_opt(i.delta_bias.as_ref())?,
        })
    }

    /// The kernels' parameter struct over host slices.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn params<'a, T: ssm_core::Element>(
        &self,
        u: &'a [T],
        delta: &'a [T],
        a: &'a [f32],
        b: &'a [T],
        c: &'a [T],
        d: Option<&'a [f32]>,
        z: Option<&'a [T]>,
        delta_bias: Option<&'a [f32]>,
    ) -> SelectiveScanParams<'a, T> {
        let groups = self.groups;
        let mut p = SelectiveScanParams::new(
            self.dims,
            u,
            delta,
            a,
            BcInput::Grouped { groups, data: b },
            BcInput::Grouped { groups, data: c },
        )
        .with_delta_softplus(self.delta_softplus);
        if let Some(d) = d {
            p = p.with_d(d);
        }
        if let Some(z) = z {
            p = p.with_z(z);
        }
        if let Some(bias) = delta_bias {
            p = p.with_delta_bias(bias);
        }
        p
    }

    fn backend(&self) -> Backend<'static> {
        Backend::Cpu(CpuOptions {
            block_len: self.block_len,
        })
    }

    fn forward_host<T: DeviceElement + candle_core::WithDType>(&self) -> Result<CpuStorage> {
        let h = self.host::<T>()?;
        let p = self.params(
            &h.u,
            &h.delta,
            &h.a,
            &h.b,
            &h.c,
            h.d.as_deref(),
            h.z.as_deref(),
            h.delta_bias.as_deref(),
        );
        let out = mamba1_scan::selective_scan(&p, self.backend()).map_err(ssm_err(OP))?;
        Ok(T::to_cpu_storage_owned(out.out))
    }

    fn backward_host<T: DeviceElement + candle_core::WithDType>(
        &self,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let h = self.host::<T>()?;
        let p = self.params(
            &h.u,
            &h.delta,
            &h.a,
            &h.b,
            &h.c,
            h.d.as_deref(),
            h.z.as_deref(),
            h.delta_bias.as_deref(),
        );
        let d_out: Vec<T> = host(&grad.to_dtype(self.inputs.u.dtype())?)?;
        let g: ScanGrads<T, f32> =
            mamba1_scan::selective_scan_backward(&p, &d_out, None, self.backend())
                .map_err(ssm_err(OP))?;
        let i = &self.inputs;
        let dev = i.u.device();
        let mut v = vec![
            Some(tensor(g.du, i.u.dims(), dev)?),
            Some(tensor(g.ddelta, i.delta.dims(), dev)?),
            Some(tensor(g.da, i.a.dims(), dev)?),
            Some(tensor(g.db, i.b.dims(), dev)?),
            Some(tensor(g.dc, i.c.dims(), dev)?),
        ];
        if let (Some(d), Some(dd)) = (&i.d, g.dd) {
            v.push(Some(tensor(dd, d.dims(), dev)?));
        }
        if let (Some(z), Some(dz)) = (&i.z, g.dz) {
            v.push(Some(tensor(dz, z.dims(), dev)?));
        }
        if let (Some(bias), Some(db)) = (&i.delta_bias, g.ddelta_bias) {
            v.push(Some(tensor(db, bias.dims(), dev)?));
        }
        Ok(v)
    }

    fn out_shape(&self) -> Shape {
        let (batch, d_inner, seqlen) = (self.dims.batch, self.dims.d_inner, self.dims.seqlen);
        Shape::from((batch, d_inner, seqlen))
    }
}

impl CustomOp1 for ScanOp {
    fn name(&self) -> &'static str {
        "candle-ssm-selective-scan"
    }

    fn cpu_fwd(&self, _token: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let storage = match elem_of(OP, "u", &self.inputs.u)? {
            Elem::F32 => self.forward_host::<f32>()?,
            Elem::F16 => self.forward_host::<f16>()?,
            Elem::Bf16 => self.forward_host::<bf16>()?,
        };
        Ok((storage, self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        token: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = token.device();
        let storage = match elem_of(OP, "u", &self.inputs.u)? {
            Elem::F32 => self.forward_cuda::<f32>(dev)?,
            Elem::F16 => self.forward_cuda::<f16>(dev)?,
            Elem::Bf16 => self.forward_cuda::<bf16>(dev)?,
        };
        Ok((storage, self.out_shape()))
    }

    fn bwd(&self, token: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if self.inputs.u.device().is_cuda() {
            let grads = match elem_of(OP, "u", &self.inputs.u)? {
                Elem::F32 => self.backward_cuda::<f32>(grad)?,
                Elem::F16 => self.backward_cuda::<f16>(grad)?,
                Elem::Bf16 => self.backward_cuda::<bf16>(grad)?,
            };
            self.slot.fill(grads);
            return Ok(Some(token.zeros_like()?));
        }
        let grads = match elem_of(OP, "u", &self.inputs.u)? {
            Elem::F32 => self.backward_host::<f32>(grad)?,
            Elem::F16 => self.backward_host::<f16>(grad)?,
            Elem::Bf16 => self.backward_host::<bf16>(grad)?,
        };
        self.slot.fill(grads);
        Ok(Some(token.zeros_like()?))
    }
}
