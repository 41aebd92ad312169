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
use half::{bf16, f16};
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba2::{DSkip, NO_DT_LIMIT};
use ssm_gpu::DeviceElement;

use crate::util::{check_dims, dims_n, elem_of, host, host_opt, same_kind, ssm_err, tensor, Elem};

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
        }
    }
    /// The skip term `D`: `(H)` or `(H, P)`.
    pub fn d(mut self, d: &Tensor) -> Self {
        self.d = Some(d.clone());
        self
    }
    /// The gate `z (b, H, P)`.
    pub fn z(mut self, z: &Tensor) -> Self {
        self.z = Some(z.clone());
        self
    }
    /// `dt_bias (H)`.
    pub fn dt_bias(mut self, bias: &Tensor) -> Self {
        self.dt_bias = Some(bias.clone());
        self
    }
    /// Apply softplus to `dt + dt_bias`.
    pub fn dt_softplus(mut self, on: bool) -> Self {
        self.dt_softplus = on;
        self
    }
    /// Clamp the processed step to `[min, max]`.
    pub fn dt_limit(mut self, min: f32, max: f32) -> Self {
        self.dt_limit = (min, max);
        self
    }

    /// Run the step: `(out (b, H, P)` in the dtype of `x`, `next state
    /// (b, H, P, N)` f32`)`.
    pub fn run(&self) -> Result<(Tensor, Tensor)> {
        let [batch, heads, head_dim] = dims_n(OP2, "x", &self.x, ["b", "H", "P"])?;
        let [_, groups, d_state] = dims_n(OP2, "B", &self.b, ["b", "G", "N"])?;
        elem_of(OP2, "x", &self.x)?;
        let seq = self.x.dtype();
        let bgn = [("b", batch), ("G", groups), ("N", d_state)];
        let bhp = [("b", batch), ("H", heads), ("P", head_dim)];
        check_dims(
            OP2,
            "state",
            &self.state,
            &[("b", batch), ("H", heads), ("P", head_dim), ("N", d_state)],
        )?;
        check_dims(OP2, "dt", &self.dt, &[("b", batch), ("H", heads)])?;
        check_dims(OP2, "A", &self.a, &[("H", heads)])?;
        check_dims(OP2, "B", &self.b, &bgn)?;
        check_dims(OP2, "C", &self.c, &bgn)?;
        for (name, t) in [("dt", &self.dt), ("B", &self.b), ("C", &self.c)] {
            same_kind(OP2, name, t, &self.x)?;
        }
        if let Some(z) = &self.z {
            same_kind(OP2, "z", z, &self.x)?;
            check_dims(OP2, "z", z, &bhp)?;
        }
        if let Some(bias) = &self.dt_bias {
            check_dims(OP2, "dt_bias", bias, &[("H", heads)])?;
        }
        let d_per_dim = match &self.d {
            Some(d) if d.rank() == 2 => {
                check_dims(OP2, "D", d, &[("H", heads), ("P", head_dim)])?;
                true
            }
            Some(d) => {
                check_dims(OP2, "D", d, &[("H", heads)])?;
                false
            }
            None => false,
        };
        let f32d = |t: &Tensor| dense(t, DType::F32);
        let step = Step2 {
            dims: [batch, heads, head_dim, d_state, groups],
            state: f32d(&self.state)?,
            x: dense(&self.x, seq)?,
            dt: dense(&self.dt, seq)?,
            a: f32d(&self.a)?,
            b: dense(&self.b, seq)?,
            c: dense(&self.c, seq)?,
            d: self.d.as_ref().map(f32d).transpose()?,
            d_per_dim,
            z: self.z.as_ref().map(|z| dense(z, seq)).transpose()?,
            dt_bias: self.dt_bias.as_ref().map(f32d).transpose()?,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
        };
        #[cfg(feature = "cuda")]
        if self.x.device().is_cuda() {
            return match elem_of(OP2, "x", &self.x)? {
                Elem::F32 => step.run_cuda::<f32>(),
                Elem::F16 => step.run_cuda::<f16>(),
                Elem::Bf16 => step.run_cuda::<bf16>(),
            };
        }
        match elem_of(OP2, "x", &self.x)? {
            Elem::F32 => step.run_host::<f32>(),
            Elem::F16 => step.run_host::<f16>(),
            Elem::Bf16 => step.run_host::<bf16>(),
        }
    }
}

/// A checked Mamba-2 step: dense inputs of known shapes.
pub(crate) struct Step2 {
    /// b, H, P, N, G
    pub(crate) dims: [usize; 5],
    pub(crate) state: Tensor,
    pub(crate) x: Tensor,
    pub(crate) dt: Tensor,
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) c: Tensor,
    pub(crate) d: Option<Tensor>,
    pub(crate) d_per_dim: bool,
    pub(crate) z: Option<Tensor>,
    pub(crate) dt_bias: Option<Tensor>,
    pub(crate) dt_softplus: bool,
    pub(crate) dt_limit: (f32, f32),
}

impl Step2 {
    fn run_host<T: DeviceElement + candle_core::WithDType>(&self) -> Result<(Tensor, Tensor)> {
        let [batch, heads, head_dim, d_state, groups] = self.dims;
        let (x, dt, b, c) = (
            host::<T>(&self.x)?,
            host::<T>(&self.dt)?,
            host::<T>(&self.b)?,
            host::<T>(&self.c)?,
        );
        let a = host::<f32>(&self.a)?;
        let d = host_opt::<f32>(self.d.as_ref())?;
        let z = host_opt::<T>(self.z.as_ref())?;
        let bias = host_opt::<f32>(self.dt_bias.as_ref())?;
        let mut state = host::<f32>(&self.state)?;
        let mut p =
            Mamba2StepParams::new(batch, heads, head_dim, d_state, groups, &x, &dt, &a, &b, &c);
        p.d = d.as_deref().map(|d| {
            if self.d_per_dim {
                DSkip::PerHeadDim(d)
            } else {
                DSkip::PerHead(d)
            }
        });
        p.z = z.as_deref();
        p.dt_bias = bias.as_deref();
        p.dt_softplus = self.dt_softplus;
        p.dt_limit = self.dt_limit;
        let out =
            mamba2_ssd::decode_step(&p, &mut state, mamba2_ssd::Backend::Cpu(Default::default()))
                .map_err(ssm_err(OP2))?;
        let dev = self.x.device();
        Ok((
            tensor(out.out, self.x.dims(), dev)?,
            tensor(state, self.state.dims(), dev)?,
        ))
    }
}

/// One Mamba-1 decode step; see the module docs for the layouts.
#[derive(Clone, Debug)]
pub struct Mamba1Step {
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Option<Tensor>,
    z: Option<Tensor>,
    dt_bias: Option<Tensor>,
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
            x: x.clone(),
            dt: dt.clone(),
            a: a.clone(),
            b: b.clone(),
            c: c.clone(),
            d: None,
            z: None,
            dt_bias: None,
            dt_softplus: false,
        }
    }
    /// The skip term `D (D_in)`.
    pub fn d(mut self, d: &Tensor) -> Self {
        self.d = Some(d.clone());
        self
    }
    /// The gate `z (b, D_in)`.
    pub fn z(mut self, z: &Tensor) -> Self {
        self.z = Some(z.clone());
        self
    }
    /// `dt_bias (D_in)`.
    pub fn dt_bias(mut self, bias: &Tensor) -> Self {
        self.dt_bias = Some(bias.clone());
        self
    }
    /// Apply softplus to `dt + dt_bias`.
    pub fn dt_softplus(mut self, on: bool) -> Self {
        self.dt_softplus = on;
        self
    }

    /// Run the step: `(out (b, D_in)` in the dtype of `x`, `next state
    /// (b, D_in, N)` f32`)`.
    pub fn run(&self) -> Result<(Tensor, Tensor)> {
        let [batch, d_inner] = dims_n(OP1, "x", &self.x, ["b", "D_in"])?;
        let [_, groups, d_state] = dims_n(OP1, "B", &self.b, ["b", "G", "N"])?;
        elem_of(OP1, "x", &self.x)?;
        let seq = self.x.dtype();
        let bgn = [("b", batch), ("G", groups), ("N", d_state)];
        let bd = [("b", batch), ("D_in", d_inner)];
        check_dims(
            OP1,
            "state",
            &self.state,
            &[("b", batch), ("D_in", d_inner), ("N", d_state)],
        )?;
        check_dims(OP1, "dt", &self.dt, &bd)?;
        check_dims(OP1, "A", &self.a, &[("D_in", d_inner), ("N", d_state)])?;
        check_dims(OP1, "B", &self.b, &bgn)?;
        check_dims(OP1, "C", &self.c, &bgn)?;
        for (name, t) in [("dt", &self.dt), ("B", &self.b), ("C", &self.c)] {
            same_kind(OP1, name, t, &self.x)?;
        }
        if let Some(z) = &self.z {
            same_kind(OP1, "z", z, &self.x)?;
            check_dims(OP1, "z", z, &bd)?;
        }
        for (name, t) in [("D", &self.d), ("dt_bias", &self.dt_bias)] {
            if let Some(t) = t {
                check_dims(OP1, name, t, &[("D_in", d_inner)])?;
            }
        }
        let f32d = |t: &Tensor| dense(t, DType::F32);
        let step = Step1 {
            dims: [batch, d_inner, d_state, groups],
            state: f32d(&self.state)?,
            x: dense(&self.x, seq)?,
            dt: dense(&self.dt, seq)?,
            a: f32d(&self.a)?,
            b: dense(&self.b, seq)?,
            c: dense(&self.c, seq)?,
            d: self.d.as_ref().map(f32d).transpose()?,
            z: self.z.as_ref().map(|z| dense(z, seq)).transpose()?,
            dt_bias: self.dt_bias.as_ref().map(f32d).transpose()?,
            dt_softplus: self.dt_softplus,
        };
        #[cfg(feature = "cuda")]
        if self.x.device().is_cuda() {
            return match elem_of(OP1, "x", &self.x)? {
                Elem::F32 => step.run_cuda::<f32>(),
                Elem::F16 => step.run_cuda::<f16>(),
                Elem::Bf16 => step.run_cuda::<bf16>(),
            };
        }
        match elem_of(OP1, "x", &self.x)? {
            Elem::F32 => step.run_host::<f32>(),
            Elem::F16 => step.run_host::<f16>(),
            Elem::Bf16 => step.run_host::<bf16>(),
        }
    }
}

/// A checked Mamba-1 step: dense inputs of known shapes.
pub(crate) struct Step1 {
    /// b, D_in, N, G
    pub(crate) dims: [usize; 4],
    pub(crate) state: Tensor,
    pub(crate) x: Tensor,
    pub(crate) dt: Tensor,
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) c: Tensor,
    pub(crate) d: Option<Tensor>,
    pub(crate) z: Option<Tensor>,
    pub(crate) dt_bias: Option<Tensor>,
    pub(crate) dt_softplus: bool,
}

impl Step1 {
    fn run_host<T: DeviceElement + candle_core::WithDType>(&self) -> Result<(Tensor, Tensor)> {
        let [batch, d_inner, d_state, groups] = self.dims;
        let (x, dt, b, c) = (
            host::<T>(&self.x)?,
            host::<T>(&self.dt)?,
            host::<T>(&self.b)?,
            host::<T>(&self.c)?,
        );
        let a = host::<f32>(&self.a)?;
        let d = host_opt::<f32>(self.d.as_ref())?;
        let z = host_opt::<T>(self.z.as_ref())?;
        let bias = host_opt::<f32>(self.dt_bias.as_ref())?;
        let mut state = host::<f32>(&self.state)?;
        let mut p = Mamba1StepParams::new(batch, d_inner, d_state, groups, &x, &dt, &a, &b, &c);
        p.d = d.as_deref();
        p.z = z.as_deref();
        p.dt_bias = bias.as_deref();
        p.dt_softplus = self.dt_softplus;
        let out = mamba1_scan::decode_step(
            &p,
            &mut state,
            mamba1_scan::Backend::Cpu(Default::default()),
        )
        .map_err(ssm_err(OP1))?;
        let dev = self.x.device();
        Ok((
            tensor(out.out, self.x.dims(), dev)?,
            tensor(state, self.state.dims(), dev)?,
        ))
    }
}
