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

use candle_core::{Result, Shape, Tensor};
use mamba2_ssd::{Backend, CpuOptions};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams, NO_DT_LIMIT};
use ssm_core::SsdGrads;

use crate::op::{
    all_roles, apply, check_common, optional_inputs, roles, HostRoles, Roles, Seq, SeqOp, NAMES,
};
use crate::util::{check_dims, dims_n, elem_of, ssm_err};

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
    /// `x, dt, A, B, C` and the optional `D, z, dt_bias`, by role.
    inputs: Roles<Tensor>,
    dt_softplus: bool,
    dt_limit: (f32, f32),
    chunk_size: usize,
}

impl SsdForward {
    /// The required inputs: `x (b, L, H, P)`, `dt (b, L, H)`, `A (H)`,
    /// `B, C (b, L, G, N)`.
    pub fn new(x: &Tensor, dt: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Self {
        SsdForward {
            inputs: roles(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone()),
            dt_softplus: false,
            dt_limit: NO_DT_LIMIT,
            chunk_size: 256,
        }
    }
    optional_inputs! {
        d: "The skip term `D`: `(H)` or `(H, P)`.",
        z: "The gate `z (b, L, H, P)`: `out = y * silu(z)`.",
        dt_bias: "`dt_bias (H)`, added to `dt` before the softplus.",
        dt_softplus: "Apply softplus to `dt + dt_bias` (mamba_ssm's `dt_softplus`).",
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
        let i = &self.inputs;
        let [batch, seqlen, heads, head_dim] = dims_n(OP, "x", &i.x, ["b", "L", "H", "P"])?;
        let [_, _, groups, d_state] = dims_n(OP, "B", &i.b, ["b", "L", "G", "N"])?;
        let dims = SsdDims::new(batch, seqlen, heads, head_dim, d_state, groups);
        elem_of(OP, "x", &i.x)?;
        let seq = i.x.dtype();
        let blhp = dims.x_shape();
        check_dims(OP, "dt", &i.dt, &blhp[..3])?;
        check_dims(OP, "A", &i.a, &[("H", heads)])?;
        check_common(OP, NAMES, i, &dims.bc_shape(), &blhp)?;
        if let Some(bias) = &i.dt_bias {
            check_dims(OP, "dt_bias", bias, &[("H", heads)])?;
        }
        let d_per_dim = d_is_per_head_dim(OP, i.d.as_ref(), heads, head_dim)?;
        let kernel = SsdOp {
            d_per_dim,
            dims,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            chunk_size: self.chunk_size,
        };
        apply(i, seq, kernel)
    }
}

/// Whether `D` is `(H, P)` (else `(H)` or absent), after checking its shape.
pub(crate) fn d_is_per_head_dim(
    op: &'static str,
    d: Option<&Tensor>,
    heads: usize,
    head_dim: usize,
) -> Result<bool> {
    match d {
        Some(d) if d.rank() == 2 => {
            check_dims(op, "D", d, &[("H", heads), ("P", head_dim)])?;
            Ok(true)
        }
        Some(d) => {
            check_dims(op, "D", d, &[("H", heads)])?;
            Ok(false)
        }
        None => Ok(false),
    }
}

/// `D` as the parameter structs take it.
pub(crate) fn d_skip(d: &[f32], per_head_dim: bool) -> DSkip<'_> {
    if per_head_dim {
        DSkip::PerHeadDim(d)
    } else {
        DSkip::PerHead(d)
    }
}

/// The sizes and switches of one checked call.
pub(crate) struct SsdOp {
    /// `D` is `(H, P)`, not `(H)`.
    pub(crate) d_per_dim: bool,
    pub(crate) dims: SsdDims,
    pub(crate) dt_softplus: bool,
    pub(crate) dt_limit: (f32, f32),
    pub(crate) chunk_size: usize,
}

impl SsdOp {
    /// The kernels' parameter struct over host copies.
    fn params<'a, T: ssm_core::Element>(&self, h: &'a HostRoles<T>) -> SsdParams<'a, T> {
        let mut p = SsdParams::new(self.dims, &h.x, &h.dt, &h.a, &h.b, &h.c)
            .with_dt_softplus(self.dt_softplus)
            .with_dt_limit(self.dt_limit.0, self.dt_limit.1);
        p.d = h.d.as_deref().map(|d| d_skip(d, self.d_per_dim));
        (p.z, p.dt_bias) = (h.z.as_deref(), h.dt_bias.as_deref());
        p
    }

    fn backend(&self) -> Backend<'static> {
        Backend::Cpu(CpuOptions {
            chunk_size: self.chunk_size,
        })
    }
}

impl SeqOp for SsdOp {
    const NAME: &'static str = "candle-ssm-ssd";
    const OP: &'static str = OP;
    const NAMES: [&'static str; 8] = NAMES;

    fn out_shape(&self) -> Shape {
        let d = self.dims;
        Shape::from((d.batch, d.seqlen, d.heads, d.head_dim))
    }

    fn forward_host<T: Seq>(&self, h: &HostRoles<T>) -> Result<Vec<T>> {
        let out = mamba2_ssd::ssd_forward(&self.params(h), self.backend()).map_err(ssm_err(OP))?;
        Ok(out.out)
    }

    fn backward_host<T: Seq>(&self, h: &HostRoles<T>, d_out: &[T]) -> Result<HostRoles<T>> {
        let g: SsdGrads<T, f32> =
            mamba2_ssd::ssd_backward(&self.params(h), d_out, None, self.backend())
                .map_err(ssm_err(OP))?;
        let by_role = all_roles(g.dx, g.ddt, g.da, g.db, g.dc, g.dd, g.dz, g.ddt_bias);
        Ok(by_role)
    }
}
