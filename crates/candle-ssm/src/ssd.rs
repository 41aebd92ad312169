//! The Mamba-2 SSD forward as a candle op, with its backward.
//!
//! Layouts are mamba_ssm's (token-major): `x, z, out: (b, L, H, P)`,
//! `dt: (b, L, H)`, `A, dt_bias: (H)`, `B, C: (b, L, G, N)`, `D: (H)` or `(H, P)`.
//!
//! - CPU tensors: `mamba2_ssd::ssd_forward` / `ssd_backward` with
//!   `Backend::Cpu` (the chunked f32 port).
//! - CUDA tensors (feature `cuda`): the device-resident `SsdPlan` and
//!   `SsdBwdPlan` on candle's stream (`ssd_cuda.rs`).
//!
//! Gradients reach all eight inputs through a gradient token (see `grad.rs`):
//! candle's custom ops take at most three arguments.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use mamba2_ssd::{Backend, CpuOptions};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams, NO_DT_LIMIT};
use ssm_core::SsdGrads;
use ssm_gpu::DeviceElement;

use crate::grad::{token, GradSlot};
use crate::util::{
    check_dims, dims_n, elem_of, host, host_opt, prepared, same_kind, ssm_err, tensor, Elem,
};

#[cfg(feature = "cuda")]
#[path = "ssd_cuda.rs"]
mod ssd_cuda;

const OP: &str = "candle-ssm ssd";

/// The SSD forward: build with [`SsdForward::new`] and the builder methods, run
/// with [`SsdForward::run`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let (b, l, h, p, g, n) = (1, 8, 2, 4, 1, 4);
/// let x = Tensor::randn(0f32, 1., (b, l, h, p), &dev)?;
/// let dt = Tensor::full(0.1f32, (b, l, h), &dev)?;
/// let a = Tensor::new(&[-1f32, -0.5], &dev)?;
/// let bm = Tensor::randn(0f32, 1., (b, l, g, n), &dev)?;
/// let cm = Tensor::randn(0f32, 1., (b, l, g, n), &dev)?;
/// let y = candle_ssm::SsdForward::new(&x, &dt, &a, &bm, &cm).chunk_size(4).run()?;
/// assert_eq!(y.dims(), &[b, l, h, p]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SsdForward {
    x: Tensor,
    dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Option<Tensor>,
    z: Option<Tensor>,
    dt_bias: Option<Tensor>,
    dt_softplus: bool,
    dt_limit: (f32, f32),
    chunk_size: usize,
}

impl SsdForward {
    /// The required inputs: `x (b, L, H, P)`, `dt (b, L, H)`, `A (H)`,
    /// `B, C (b, L, G, N)`.
    pub fn new(x: &Tensor, dt: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Self {
        SsdForward {
            x: x.clone(),
            dt: dt.clone(),
            a: a.clone(),
            b: b.clone(),
            c: c.clone(),
            d: None,
            z: None,
            dt_bias: None,
            dt_softplus: false,
            dt_limit: NO_DT_LIMIT,
            chunk_size: 256,
        }
    }
    /// The skip term `D`: `(H)` or `(H, P)`.
    pub fn d(mut self, d: &Tensor) -> Self {
        self.d = Some(d.clone());
        self
    }
    /// The gate `z (b, L, H, P)`: `out = y * silu(z)`.
    pub fn z(mut self, z: &Tensor) -> Self {
        self.z = Some(z.clone());
        self
    }
    /// `dt_bias (H)`, added to `dt` before the softplus.
    pub fn dt_bias(mut self, bias: &Tensor) -> Self {
        self.dt_bias = Some(bias.clone());
        self
    }
    /// Apply softplus to `dt + dt_bias` (mamba_ssm's `dt_softplus`).
    pub fn dt_softplus(mut self, on: bool) -> Self {
        self.dt_softplus = on;
        self
    }
    /// Clamp the processed step to `[min, max]` (default `[0, inf)`).
    pub fn dt_limit(mut self, min: f32, max: f32) -> Self {
        self.dt_limit = (min, max);
        self
    }
    /// The chunk length of the CPU port (default 256; the CUDA kernel uses its own).
    pub fn chunk_size(mut self, q: usize) -> Self {
        self.chunk_size = q;
        self
    }

    /// Run the forward; the result `(b, L, H, P)` has the dtype of `x` and tracks
    /// gradients to every input that does. Inputs that are not contiguous, and
    /// `A`, `D`, `dt_bias` in another float type than f32, are converted first
    /// (candle ops, so gradients flow through the conversion).
    pub fn run(&self) -> Result<Tensor> {
        let [batch, seqlen, heads, head_dim] = dims_n(OP, "x", &self.x, ["b", "L", "H", "P"])?;
        let [_, _, groups, d_state] = dims_n(OP, "B", &self.b, ["b", "L", "G", "N"])?;
        let dims = SsdDims::new(batch, seqlen, heads, head_dim, d_state, groups);
        elem_of(OP, "x", &self.x)?;
        let seq = self.x.dtype();
        let blgn = [("b", batch), ("L", seqlen), ("G", groups), ("N", d_state)];
        check_dims(
            OP,
            "dt",
            &self.dt,
            &[("b", batch), ("L", seqlen), ("H", heads)],
        )?;
        check_dims(OP, "A", &self.a, &[("H", heads)])?;
        check_dims(OP, "B", &self.b, &blgn)?;
        check_dims(OP, "C", &self.c, &blgn)?;
        for (name, t) in [("dt", &self.dt), ("B", &self.b), ("C", &self.c)] {
            same_kind(OP, name, t, &self.x)?;
        }
        if let Some(z) = &self.z {
            same_kind(OP, "z", z, &self.x)?;
            check_dims(
                OP,
                "z",
                z,
                &[("b", batch), ("L", seqlen), ("H", heads), ("P", head_dim)],
            )?;
        }
        if let Some(bias) = &self.dt_bias {
            check_dims(OP, "dt_bias", bias, &[("H", heads)])?;
        }
        let d_per_dim = match &self.d {
            Some(d) if d.rank() == 2 => {
                check_dims(OP, "D", d, &[("H", heads), ("P", head_dim)])?;
                true
            }
            Some(d) => {
                check_dims(OP, "D", d, &[("H", heads)])?;
                false
            }
            None => false,
        };
        let f32p = |t: &Tensor| prepared(t, DType::F32);
        let inputs = SsdInputs {
            x: prepared(&self.x, seq)?,
            dt: prepared(&self.dt, seq)?,
            a: f32p(&self.a)?,
            b: prepared(&self.b, seq)?,
            c: prepared(&self.c, seq)?,
            d: self.d.as_ref().map(f32p).transpose()?,
            d_per_dim,
            z: self.z.as_ref().map(|z| prepared(z, seq)).transpose()?,
            dt_bias: self.dt_bias.as_ref().map(f32p).transpose()?,
        };
        let slot = GradSlot::default();
        let tok = token(&inputs.list(), &slot)?;
        let op = SsdOp {
            inputs,
            dims,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            chunk_size: self.chunk_size,
            slot,
        };
        tok.apply_op1(op)
    }
}

/// The prepared (contiguous, typed) inputs of one call.
pub(crate) struct SsdInputs {
    pub(crate) x: Tensor,
    pub(crate) dt: Tensor,
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) c: Tensor,
    pub(crate) d: Option<Tensor>,
    pub(crate) d_per_dim: bool,
    pub(crate) z: Option<Tensor>,
    pub(crate) dt_bias: Option<Tensor>,
}

impl SsdInputs {
    /// The token order: the gradient slot is indexed like this list.
    fn list(&self) -> Vec<Tensor> {
        let mut v = vec![
            self.x.clone(),
            self.dt.clone(),
            self.a.clone(),
            self.b.clone(),
            self.c.clone(),
        ];
        v.extend(self.d.iter().cloned());
        v.extend(self.z.iter().cloned());
        v.extend(self.dt_bias.iter().cloned());
        v
    }
}

/// Host copies of the inputs, from which `SsdParams` borrow.
struct SsdHost<T> {
    x: Vec<T>,
    dt: Vec<T>,
    a: Vec<f32>,
    b: Vec<T>,
    c: Vec<T>,
    d: Option<Vec<f32>>,
    z: Option<Vec<T>>,
    dt_bias: Option<Vec<f32>>,
}

pub(crate) struct SsdOp {
    pub(crate) inputs: SsdInputs,
    pub(crate) dims: SsdDims,
    pub(crate) dt_softplus: bool,
    pub(crate) dt_limit: (f32, f32),
    pub(crate) chunk_size: usize,
    slot: GradSlot,
}

impl SsdOp {
    fn host<T: candle_core::WithDType>(&self) -> Result<SsdHost<T>> {
        let i = &self.inputs;
        Ok(SsdHost {
            x: host(&i.x)?,
            dt: host(&i.dt)?,
            a: host(&i.a)?,
            b: host(&i.b)?,
            c: host(&i.c)?,
            d: host_opt(i.d.as_ref())?,
            z: host_opt(i.z.as_ref())?,
            dt_bias: host_opt(i.dt_bias.as_ref())?,
        })
    }

    /// The kernels' parameter struct over host slices.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn params<'a, T: ssm_core::Element>(
        &self,
        x: &'a [T],
        dt: &'a [T],
        a: &'a [f32],
        b: &'a [T],
        c: &'a [T],
        d: Option<&'a [f32]>,
        z: Option<&'a [T]>,
        dt_bias: Option<&'a [f32]>,
    ) -> SsdParams<'a, T> {
        let mut p = SsdParams::new(self.dims, x, dt, a, b, c)
            .with_dt_softplus(self.dt_softplus)
            .with_dt_limit(self.dt_limit.0, self.dt_limit.1);
        if let Some(d) = d {
            p = p.with_d(if self.inputs.d_per_dim {
                DSkip::PerHeadDim(d)
            } else {
                DSkip::PerHead(d)
            });
        }
        if let Some(z) = z {
            p = p.with_z(z);
        }
        if let Some(bias) = dt_bias {
            p = p.with_dt_bias(bias);
        }
        p
    }

    fn backend(&self) -> Backend<'static> {
        Backend::Cpu(CpuOptions {
            chunk_size: self.chunk_size,
        })
    }

    fn forward_host<T: DeviceElement + candle_core::WithDType>(&self) -> Result<CpuStorage> {
        let h = self.host::<T>()?;
        let p = self.params(
            &h.x,
            &h.dt,
            &h.a,
            &h.b,
            &h.c,
            h.d.as_deref(),
            h.z.as_deref(),
            h.dt_bias.as_deref(),
        );
        let out = mamba2_ssd::ssd_forward(&p, self.backend()).map_err(ssm_err(OP))?;
        Ok(T::to_cpu_storage_owned(out.out))
    }

    fn backward_host<T: DeviceElement + candle_core::WithDType>(
        &self,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let h = self.host::<T>()?;
        let p = self.params(
            &h.x,
            &h.dt,
            &h.a,
            &h.b,
            &h.c,
            h.d.as_deref(),
            h.z.as_deref(),
            h.dt_bias.as_deref(),
        );
        let d_out: Vec<T> = host(&grad.to_dtype(self.inputs.x.dtype())?)?;
        let g: SsdGrads<T, f32> =
            mamba2_ssd::ssd_backward(&p, &d_out, None, self.backend()).map_err(ssm_err(OP))?;
        let i = &self.inputs;
        let dev = i.x.device();
        let like = |data, t: &Tensor| tensor(data, t.dims(), dev);
        let mut v = vec![
            Some(like(g.dx, &i.x)?),
            Some(tensor(g.ddt, i.dt.dims(), dev)?),
            Some(tensor(g.da, i.a.dims(), dev)?),
            Some(like(g.db, &i.b)?),
            Some(like(g.dc, &i.c)?),
        ];
        if let (Some(d), Some(dd)) = (&i.d, g.dd) {
            v.push(Some(tensor(dd, d.dims(), dev)?));
        }
        if let (Some(z), Some(dz)) = (&i.z, g.dz) {
            v.push(Some(like(dz, z)?));
        }
        if let (Some(bias), Some(db)) = (&i.dt_bias, g.ddt_bias) {
            v.push(Some(tensor(db, bias.dims(), dev)?));
        }
        Ok(v)
    }

    fn out_shape(&self) -> Shape {
        let (batch, seqlen, heads) = (self.dims.batch, self.dims.seqlen, self.dims.heads);
        let head_dim = self.dims.head_dim;
        Shape::from((batch, seqlen, heads, head_dim))
    }
}

impl CustomOp1 for SsdOp {
    fn name(&self) -> &'static str {
        "candle-ssm-ssd"
    }

    fn cpu_fwd(&self, _token: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let storage = match elem_of(OP, "x", &self.inputs.x)? {
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
        let storage = match elem_of(OP, "x", &self.inputs.x)? {
            Elem::F32 => self.forward_cuda::<f32>(dev)?,
            Elem::F16 => self.forward_cuda::<f16>(dev)?,
            Elem::Bf16 => self.forward_cuda::<bf16>(dev)?,
        };
        Ok((storage, self.out_shape()))
    }

    fn bwd(&self, token: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if self.inputs.x.device().is_cuda() {
            let grads = match elem_of(OP, "x", &self.inputs.x)? {
                Elem::F32 => self.backward_cuda::<f32>(grad)?,
                Elem::F16 => self.backward_cuda::<f16>(grad)?,
                Elem::Bf16 => self.backward_cuda::<bf16>(grad)?,
            };
            self.slot.fill(grads);
            return Ok(Some(token.zeros_like()?));
        }
        let grads = match elem_of(OP, "x", &self.inputs.x)? {
            Elem::F32 => self.backward_host::<f32>(grad)?,
            Elem::F16 => self.backward_host::<f16>(grad)?,
            Elem::Bf16 => self.backward_host::<bf16>(grad)?,
        };
        self.slot.fill(grads);
        Ok(Some(token.zeros_like()?))
    }
}
