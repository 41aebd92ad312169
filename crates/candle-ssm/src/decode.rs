//! The decode steps (one token per sequence, the recurrent state carried
//! between calls) on candle tensors: forward only.
//!
//! A step reads the state and returns the output and the *next* state as new
//! tensors (candle tensors are values: the input state is not modified). On
//! CUDA the state is copied device-to-device into the new tensor and the
//! kernel updates that copy in place, on candle's stream; inputs are read
//! zero-copy from candle's storage. On CPU the ports of `mamba2_ssd` /
//! `mamba1_scan` run on host copies. The results track no gradient.
//!
//! Layouts (mamba_ssm's `selective_state_update`), one state row per batch row
//! (no `state_batch_indices` here):
//! - [`Mamba2Step`]: `state (b, H, P, N)` f32, `x, z, out (b, H, P)`,
//!   `dt (b, H)`, `A, dt_bias (H)`, `D (H)` or `(H, P)`, `B, C (b, G, N)`.
//! - [`Mamba1Step`]: `state (b, D_in, N)` f32, `x, dt, z, out (b, D_in)`,
//!   `A (D_in, N)`, `D, dt_bias (D_in)`, `B, C (b, G, N)`.

use candle_core::{DType, Result, Tensor};
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba2::NO_DT_LIMIT;

use crate::op::{by_elem, check_common, host_roles, optional_inputs, roles, Roles, Seq, NAMES};
use crate::ssd::{d_is_per_head_dim, d_skip};
use crate::util::{check_dims, dims_n, elem_of, host, ssm_err, tensor};

#[cfg(feature = "cuda")]
#[path = "decode_cuda.rs"]
mod decode_cuda;

const OP2: &str = "candle-ssm mamba2 decode step";
const OP1: &str = "candle-ssm mamba1 decode step";

/// Contiguous and in `dtype` (the kernels read dense tensors).
fn dense(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.detach().to_dtype(dtype)?.contiguous()
}

/// One Mamba-2 decode step; see the module docs for the layouts.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let (b, h, p, g, n) = (2, 2, 4, 1, 8);
/// let state = Tensor::zeros((b, h, p, n), DType::F32, &dev)?;
/// let x = Tensor::randn(0f32, 1., (b, h, p), &dev)?;
/// let dt = Tensor::full(0.1f32, (b, h), &dev)?;
/// let a = Tensor::full(-1f32, h, &dev)?;
/// let bm = Tensor::randn(0f32, 1., (b, g, n), &dev)?;
/// let cm = Tensor::randn(0f32, 1., (b, g, n), &dev)?;
/// let (y, next) = candle_ssm::Mamba2Step::new(&state, &x, &dt, &a, &bm, &cm).run()?;
/// assert_eq!((y.dims(), next.dims()), (&[b, h, p][..], &[b, h, p, n][..]));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Mamba2Step {
    state: Tensor,
    /// `x, dt, A, B, C` and the optional `D, z, dt_bias`, by role.
    inputs: Roles<Tensor>,
    dt_softplus: bool,
    dt_limit: (f32, f32),
}

impl Mamba2Step {
    /// The required inputs: `state (b, H, P, N)`, `x (b, H, P)`, `dt (b, H)`,
    /// `A (H)`, `B, C (b, G, N)`.
    pub fn new(
        state: &Tensor,
        x: &Tensor,
        dt: &Tensor,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
    ) -> Self {
        Mamba2Step {
            state: state.clone(),
            inputs: roles(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone()),
            dt_softplus: false,
            dt_limit: NO_DT_LIMIT,
        }
    }
    optional_inputs! {
        d: "The skip term `D`: `(H)` or `(H, P)`.",
        z: "The gate `z (b, H, P)`.",
        dt_bias: "`dt_bias (H)`.",
        dt_softplus: "Apply softplus to `dt + dt_bias`.",
    }
    /// Clamp the processed step to `[min, max]`.
    pub fn dt_limit(mut self, min: f32, max: f32) -> Self {
        self.dt_limit = (min, max);
        self
    }

    /// Run the step: `(out (b, H, P)` in the dtype of `x`, `next state
    /// (b, H, P, N)` f32`)`.
    pub fn run(&self) -> Result<(Tensor, Tensor)> {
        let i = &self.inputs;
        let [batch, heads, head_dim] = dims_n(OP2, "x", &i.x, ["b", "H", "P"])?;
        let [_, groups, d_state] = dims_n(OP2, "B", &i.b, ["b", "G", "N"])?;
        let elem = elem_of(OP2, "x", &i.x)?;
        let bhp = [("b", batch), ("H", heads), ("P", head_dim)];
        check_dims(
            OP2,
            "state",
            &self.state,
            &[("b", batch), ("H", heads), ("P", head_dim), ("N", d_state)],
        )?;
        check_dims(OP2, "dt", &i.dt, &bhp[..2])?;
        check_dims(OP2, "A", &i.a, &[("H", heads)])?;
        check_common(
            OP2,
            NAMES,
            i,
            &[("b", batch), ("G", groups), ("N", d_state)],
            &bhp,
        )?;
        if let Some(bias) = &i.dt_bias {
            check_dims(OP2, "dt_bias", bias, &[("H", heads)])?;
        }
        let d_per_dim = d_is_per_head_dim(OP2, i.d.as_ref(), heads, head_dim)?;
        let step = Step2 {
            dims: [batch, heads, head_dim, d_state, groups],
            state: dense(&self.state, DType::F32)?,
            inputs: dense_roles(i)?,
            d_per_dim,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
        };
        #[cfg(feature = "cuda")]
        if i.x.device().is_cuda() {
            return by_elem!(elem, T => step.run_cuda::<T>());
        }
        by_elem!(elem, T => step.run_host::<T>())
    }
}

/// The inputs dense: the sequence tensors in the dtype of `x`, the rest f32.
fn dense_roles(i: &Roles<Tensor>) -> Result<Roles<Tensor>> {
    let seq = i.x.dtype();
    i.as_ref()
        .try_map(|t| dense(t, seq), |t| dense(t, DType::F32), |n| match *n {})
}

/// The state and output as tensors shaped like the step's `state` and `x`.
fn step_result(
    out: Vec<impl candle_core::WithDType>,
    state: Vec<f32>,
    like_state: &Tensor,
    like_x: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dev = like_x.device();
    Ok((
        tensor(out, like_x.dims(), dev)?,
        tensor(state, like_state.dims(), dev)?,
    ))
}

/// A checked Mamba-2 step: dense inputs of known shapes.
pub(crate) struct Step2 {
    /// b, H, P, N, G
    pub(crate) dims: [usize; 5],
    pub(crate) state: Tensor,
    /// `x, dt, A, B, C, D, z, dt_bias` by role.
    pub(crate) inputs: Roles<Tensor>,
    pub(crate) d_per_dim: bool,
    pub(crate) dt_softplus: bool,
    pub(crate) dt_limit: (f32, f32),
}

impl Step2 {
    fn run_host<T: Seq>(&self) -> Result<(Tensor, Tensor)> {
        let [batch, heads, head_dim, d_state, groups] = self.dims;
        let h = host_roles::<T>(&self.inputs)?;
        let mut state = host::<f32>(&self.state)?;
        let mut p = Mamba2StepParams::new(
            batch, heads, head_dim, d_state, groups, &h.x, &h.dt, &h.a, &h.b, &h.c,
        );
        p.d = h.d.as_deref().map(|d| d_skip(d, self.d_per_dim));
        p.z = h.z.as_deref();
        p.dt_bias = h.dt_bias.as_deref();
        p.dt_softplus = self.dt_softplus;
        p.dt_limit = self.dt_limit;
        let out =
            mamba2_ssd::decode_step(&p, &mut state, mamba2_ssd::Backend::Cpu(Default::default()))
                .map_err(ssm_err(OP2))?;
        step_result(out.out, state, &self.state, &self.inputs.x)
    }
}

/// One Mamba-1 decode step; see the module docs for the layouts.
#[derive(Clone, Debug)]
pub struct Mamba1Step {
    state: Tensor,
    /// `x, dt, A, B, C` and the optional `D, z, dt_bias`, by role.
    inputs: Roles<Tensor>,
    dt_softplus: bool,
}

impl Mamba1Step {
    /// The required inputs: `state (b, D_in, N)`, `x, dt (b, D_in)`,
    /// `A (D_in, N)`, `B, C (b, G, N)`.
    pub fn new(
        state: &Tensor,
        x: &Tensor,
        dt: &Tensor,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
    ) -> Self {
        Mamba1Step {
            state: state.clone(),
            inputs: roles(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone()),
            dt_softplus: false,
        }
    }
    optional_inputs! {
        d: "The skip term `D (D_in)`.",
        z: "The gate `z (b, D_in)`.",
        dt_bias: "`dt_bias (D_in)`.",
        dt_softplus: "Apply softplus to `dt + dt_bias`.",
    }

    /// Run the step: `(out (b, D_in)` in the dtype of `x`, `next state
    /// (b, D_in, N)` f32`)`.
    pub fn run(&self) -> Result<(Tensor, Tensor)> {
        let i = &self.inputs;
        let [batch, d_inner] = dims_n(OP1, "x", &i.x, ["b", "D_in"])?;
        let [_, groups, d_state] = dims_n(OP1, "B", &i.b, ["b", "G", "N"])?;
        let elem = elem_of(OP1, "x", &i.x)?;
        let bd = [("b", batch), ("D_in", d_inner)];
        check_dims(
            OP1,
            "state",
            &self.state,
            &[("b", batch), ("D_in", d_inner), ("N", d_state)],
        )?;
        check_dims(OP1, "dt", &i.dt, &bd)?;
        check_dims(OP1, "A", &i.a, &[("D_in", d_inner), ("N", d_state)])?;
        check_common(
            OP1,
            NAMES,
            i,
            &[("b", batch), ("G", groups), ("N", d_state)],
            &bd,
        )?;
        for (name, t) in [("D", &i.d), ("dt_bias", &i.dt_bias)] {
            if let Some(t) = t {
                check_dims(OP1, name, t, &[("D_in", d_inner)])?;
            }
        }
        let step = Step1 {
            dims: [batch, d_inner, d_state, groups],
            state: dense(&self.state, DType::F32)?,
            inputs: dense_roles(i)?,
            dt_softplus: self.dt_softplus,
        };
        #[cfg(feature = "cuda")]
        if i.x.device().is_cuda() {
            return by_elem!(elem, T => step.run_cuda::<T>());
        }
        by_elem!(elem, T => step.run_host::<T>())
    }
}

/// A checked Mamba-1 step: dense inputs of known shapes.
pub(crate) struct Step1 {
    /// b, D_in, N, G
    pub(crate) dims: [usize; 4],
    pub(crate) state: Tensor,
    /// `x, dt, A, B, C, D, z, dt_bias` by role.
    pub(crate) inputs: Roles<Tensor>,
    pub(crate) dt_softplus: bool,
}

impl Step1 {
    fn run_host<T: Seq>(&self) -> Result<(Tensor, Tensor)> {
        let [batch, d_inner, d_state, groups] = self.dims;
        let h = host_roles::<T>(&self.inputs)?;
        let mut state = host::<f32>(&self.state)?;
        let mut p = Mamba1StepParams::new(
            batch, d_inner, d_state, groups, &h.x, &h.dt, &h.a, &h.b, &h.c,
        );
        p.d = h.d.as_deref();
        p.z = h.z.as_deref();
        p.dt_bias = h.dt_bias.as_deref();
        p.dt_softplus = self.dt_softplus;
        let out = mamba1_scan::decode_step(
            &p,
            &mut state,
            mamba1_scan::Backend::Cpu(Default::default()),
        )
        .map_err(ssm_err(OP1))?;
        step_result(out.out, state, &self.state, &self.inputs.x)
    }
}
