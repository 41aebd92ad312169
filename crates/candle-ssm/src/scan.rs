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

use candle_core::{Result, Shape, Tensor};
use mamba1_scan::{Backend, CpuOptions};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::ScanGrads;

use crate::op::{
    all_roles, apply, check_common, optional_inputs, roles, HostRoles, Roles, Seq, SeqOp,
};
use crate::util::{check_dims, dims_n, elem_of, ssm_err};

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
    /// `u, delta, A, B, C` and the optional `D, z, delta_bias`, by role.
    inputs: Roles<Tensor>,
    delta_softplus: bool,
    block_len: usize,
}

impl SelectiveScan {
    /// The required inputs: `u, delta (b, D_in, L)`, `A (D_in, N)`,
    /// `B, C (b, G, N, L)`.
    pub fn new(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Self {
        SelectiveScan {
            inputs: roles(u.clone(), delta.clone(), a.clone(), b.clone(), c.clone()),
            delta_softplus: false,
            block_len: CpuOptions::default().block_len,
        }
    }
    optional_inputs! {
        d: "The skip term `D (D_in)`.",
        z: "The gate `z (b, D_in, L)`: `out = y * silu(z)`.",
        delta_bias: "`delta_bias (D_in)`, added to `delta` before the softplus.",
        delta_softplus: "Apply softplus to `delta + delta_bias` (mamba_ssm's `delta_softplus`).",
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
        let i = &self.inputs;
        let [batch, d_inner, seqlen] = dims_n(OP, "u", &i.x, ["b", "D_in", "L"])?;
        let [_, groups, d_state, _] = dims_n(OP, "B", &i.b, ["b", "G", "N", "L"])?;
        elem_of(OP, "u", &i.x)?;
        let seq = i.x.dtype();
        let dims = Mamba1Dims::new(batch, d_inner, d_state, seqlen);
        let bdl = dims.io_shape();
        let bgnl = [("b", batch), ("G", groups), ("N", d_state), ("L", seqlen)];
        check_dims(OP, "delta", &i.dt, &bdl)?;
        check_dims(OP, "A", &i.a, &[("D_in", d_inner), ("N", d_state)])?;
        check_common(OP, ScanOp::NAMES, i, &bgnl, &bdl)?;
        if let Some(d) = &i.d {
            check_dims(OP, "D", d, &[("D_in", d_inner)])?;
        }
        if let Some(bias) = &i.dt_bias {
            check_dims(OP, "delta_bias", bias, &[("D_in", d_inner)])?;
        }
        let kernel = ScanOp {
            dims,
            groups,
            delta_softplus: self.delta_softplus,
            block_len: self.block_len,
        };
        apply(i, seq, kernel)
    }
}

/// The sizes and switches of one checked call.
pub(crate) struct ScanOp {
    pub(crate) dims: Mamba1Dims,
    pub(crate) groups: usize,
    pub(crate) delta_softplus: bool,
    pub(crate) block_len: usize,
}

impl ScanOp {
    /// The kernels' parameter struct over host copies.
    fn params<'a, T: ssm_core::Element>(&self, h: &'a HostRoles<T>) -> SelectiveScanParams<'a, T> {
        let groups = self.groups;
        let mut p = SelectiveScanParams::new(
            self.dims,
            &h.x,
            &h.dt,
            &h.a,
            BcInput::Grouped { groups, data: &h.b },
            BcInput::Grouped { groups, data: &h.c },
        )
        .with_delta_softplus(self.delta_softplus);
        (p.d, p.z, p.delta_bias) = (h.d.as_deref(), h.z.as_deref(), h.dt_bias.as_deref());
        p
    }

    fn backend(&self) -> Backend<'static> {
        Backend::Cpu(CpuOptions {
            block_len: self.block_len,
        })
    }
}

impl SeqOp for ScanOp {
    const NAME: &'static str = "candle-ssm-selective-scan";
    const OP: &'static str = OP;
    const NAMES: [&'static str; 8] = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"];

    fn out_shape(&self) -> Shape {
        let d = self.dims;
        Shape::from((d.batch, d.d_inner, d.seqlen))
    }

    fn forward_host<T: Seq>(&self, h: &HostRoles<T>) -> Result<Vec<T>> {
        let out =
            mamba1_scan::selective_scan(&self.params(h), self.backend()).map_err(ssm_err(OP))?;
        Ok(out.out)
    }

    fn backward_host<T: Seq>(&self, h: &HostRoles<T>, d_out: &[T]) -> Result<HostRoles<T>> {
        let g: ScanGrads<T, f32> =
            mamba1_scan::selective_scan_backward(&self.params(h), d_out, None, self.backend())
                .map_err(ssm_err(OP))?;
        let by_role = all_roles(g.du, g.ddelta, g.da, g.db, g.dc, g.dd, g.dz, g.ddelta_bias);
        Ok(by_role)
    }
}
