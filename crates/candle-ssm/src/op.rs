//! What the ops of this crate share: their inputs by role, the dispatch on the
//! element type, and (for the two sequence ops, the SSD forward and the Mamba-1
//! scan) the candle `CustomOp1` written once over [`SeqOp`].
//!
//! Every op takes the same eight inputs in the same roles: `x, dt, A, B, C` and
//! the optional `D, z, dt_bias` (the Mamba-1 scan calls them `u, delta, ...,
//! delta_bias`). `x, dt, B, C, z` are in the call's element type, `A, D,
//! dt_bias` in f32. The decode steps' [`StepInputs`] already names these roles;
//! the ops here use it without the state indices.

use std::convert::Infallible;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use ssm_core::decode::StepInputs;
use ssm_gpu::DeviceElement;

use crate::grad::{token, GradSlot};
use crate::util::{check_dims, elem_of, host, prepared, same_kind, tensor};

/// The argument names of the roles for the SSD and the decode steps.
pub(crate) const NAMES: [&str; 8] = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias"];

/// An op's inputs by role: `S` for `x, dt, B, C, z`, `P` for `A, D, dt_bias`.
/// No op here takes state indices: their slot's type has no value, so it is
/// `None` by construction and a conversion of it is `|n| match n {}`.
pub(crate) type Roles<S, P = S> = StepInputs<S, P, Infallible>;

/// Host copies of an op's inputs, from which the kernels' parameter structs borrow.
pub(crate) type HostRoles<T> = Roles<Vec<T>, Vec<f32>>;

/// The required five inputs, no optional one.
pub(crate) fn roles<S, P>(x: S, dt: S, a: P, b: S, c: S) -> Roles<S, P> {
    StepInputs {
        x,
        dt,
        a,
        b,
        c,
        d: None,
        z: None,
        dt_bias: None,
        state_batch_indices: None,
    }
}

/// All eight roles, in role order (a kernel's gradients, for one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn all_roles<S, P>(
    x: S,
    dt: S,
    a: P,
    b: S,
    c: S,
    d: Option<P>,
    z: Option<S>,
    dt_bias: Option<P>,
) -> Roles<S, P> {
    StepInputs {
        d,
        z,
        dt_bias,
        ..roles(x, dt, a, b, c)
    }
}

/// Each input with its argument name (`names` in role order: x, dt, A, B, C, D,
/// z, dt_bias), for errors that name the tensor.
#[cfg(feature = "cuda")]
pub(crate) fn named<'a>(
    inputs: &'a Roles<Tensor>,
    names: [&'static str; 8],
) -> Roles<(&'static str, &'a Tensor)> {
    let [x, dt, a, b, c, d, z, bias] = names;
    StepInputs {
        x: (x, &inputs.x),
        dt: (dt, &inputs.dt),
        a: (a, &inputs.a),
        b: (b, &inputs.b),
        c: (c, &inputs.c),
        d: inputs.d.as_ref().map(|t| (d, t)),
        z: inputs.z.as_ref().map(|t| (z, t)),
        dt_bias: inputs.dt_bias.as_ref().map(|t| (bias, t)),
        state_batch_indices: None,
    }
}

/// The tensors in token order (the gradient slot is indexed like this list):
/// the required five, then the optional ones that are present.
pub(crate) fn token_list(inputs: &Roles<Tensor>) -> Vec<Tensor> {
    let i = inputs;
    let mut v = vec![
        i.x.clone(),
        i.dt.clone(),
        i.a.clone(),
        i.b.clone(),
        i.c.clone(),
    ];
    v.extend(i.d.iter().cloned());
    v.extend(i.z.iter().cloned());
    v.extend(i.dt_bias.iter().cloned());
    v
}

/// The checks every op makes after its own of `dt` and `A`: `B` and `C` of
/// the shape `bc`, `dt`, `B`, `C` of the dtype and device of `x`, and `z` (of
/// that dtype too) in the shape `x_shape`. `names` as [`SeqOp::NAMES`].
pub(crate) fn check_common(
    op: &'static str,
    names: [&str; 8],
    i: &Roles<Tensor>,
    bc: &[(&str, usize)],
    x_shape: &[(&str, usize)],
) -> Result<()> {
    check_dims(op, names[3], &i.b, bc)?;
    check_dims(op, names[4], &i.c, bc)?;
    for (name, t) in [(names[1], &i.dt), (names[3], &i.b), (names[4], &i.c)] {
        same_kind(op, name, t, &i.x)?;
    }
    if let Some(z) = &i.z {
        same_kind(op, names[6], z, &i.x)?;
        check_dims(op, names[6], z, x_shape)?;
    }
    Ok(())
}

/// Host copies of every input (`S` tensors as `T`, parameters as f32).
pub(crate) fn host_roles<T: WithDType>(inputs: &Roles<Tensor>) -> Result<HostRoles<T>> {
    inputs
        .as_ref()
        .try_map(host::<T>, host::<f32>, |n| match *n {})
}

/// Gradients by role as the slot's list (token order, [`token_list`]): each
/// converted by `seq` or `par` with the input it belongs to; an optional
/// gradient is listed where both it and its input are present.
pub(crate) fn grad_list<S, P>(
    inputs: &Roles<Tensor>,
    grads: Roles<S, P>,
    mut seq: impl FnMut(S, &Tensor) -> Result<Tensor>,
    mut par: impl FnMut(P, &Tensor) -> Result<Tensor>,
) -> Result<Vec<Option<Tensor>>> {
    let i = inputs;
    let mut v = vec![
        Some(seq(grads.x, &i.x)?),
        Some(seq(grads.dt, &i.dt)?),
        Some(par(grads.a, &i.a)?),
        Some(seq(grads.b, &i.b)?),
        Some(seq(grads.c, &i.c)?),
    ];
    if let (Some(t), Some(g)) = (&i.d, grads.d) {
        v.push(Some(par(g, t)?));
    }
    if let (Some(t), Some(g)) = (&i.z, grads.z) {
        v.push(Some(seq(g, t)?));
    }
    if let (Some(t), Some(g)) = (&i.dt_bias, grads.dt_bias) {
        v.push(Some(par(g, t)?));
    }
    Ok(v)
}

/// The element types of the sequence tensors, with what each backend needs.
#[cfg(not(feature = "cuda"))]
pub(crate) trait Seq: DeviceElement + WithDType {}
#[cfg(not(feature = "cuda"))]
impl<T: DeviceElement + WithDType> Seq for T {}

/// The element types of the sequence tensors, with what each backend needs.
#[cfg(feature = "cuda")]
pub(crate) trait Seq:
    DeviceElement + WithDType + candle_core::cuda_backend::CudaDType
{
}
#[cfg(feature = "cuda")]
impl<T: DeviceElement + WithDType + candle_core::cuda_backend::CudaDType> Seq for T {}

/// `$body` with the type `$t` bound to the Rust type of `$elem` (a runtime
/// dtype to a generic call: the one place generics cannot reach).
macro_rules! by_elem {
    ($elem:expr, $t:ident => $body:expr) => {
        match $elem {
            $crate::util::Elem::F32 => {
                type $t = f32;
                $body
            }
            $crate::util::Elem::F16 => {
                type $t = half::f16;
                $body
            }
            $crate::util::Elem::Bf16 => {
                type $t = half::bf16;
                $body
            }
        }
    };
}
pub(crate) use by_elem;

/// The builder methods of the optional inputs `D`, `z`, the step bias and the
/// softplus switch, on a builder holding `inputs: Roles<Tensor>` (the four
/// public builders differ in their docs and the bias's name only).
macro_rules! optional_inputs {
    (
        d: $d_doc:literal,
        z: $z_doc:literal,
        $bias:ident: $bias_doc:literal,
        $softplus:ident: $softplus_doc:literal $(,)?
    ) => {
        #[doc = $d_doc]
        pub fn d(mut self, d: &Tensor) -> Self {
            self.inputs.d = Some(d.clone());
            self
        }
        #[doc = $z_doc]
        pub fn z(mut self, z: &Tensor) -> Self {
            self.inputs.z = Some(z.clone());
            self
        }
        #[doc = $bias_doc]
        pub fn $bias(mut self, bias: &Tensor) -> Self {
            self.inputs.dt_bias = Some(bias.clone());
            self
        }
        #[doc = $softplus_doc]
        pub fn $softplus(mut self, on: bool) -> Self {
            self.$softplus = on;
            self
        }
    };
}
pub(crate) use optional_inputs;

/// A sequence op (SSD forward, Mamba-1 scan) on its prepared inputs: what
/// differs between the two; [`Op`] is the candle op over either. The CUDA
/// paths are the [`SeqOpCuda`] impls in `*_cuda.rs`.
pub(crate) trait SeqOp: SeqOpCuda + Send + Sync + 'static {
    /// candle's name of the op.
    const NAME: &'static str;
    /// The op in error messages.
    const OP: &'static str;
    /// The inputs' argument names in role order (x, dt, A, B, C, D, z, dt_bias).
    const NAMES: [&'static str; 8];
    /// The output's shape.
    fn out_shape(&self) -> Shape;
    /// The forward on host copies: the output.
    fn forward_host<T: Seq>(&self, h: &HostRoles<T>) -> Result<Vec<T>>;
    /// The backward on host copies: the gradients by role.
    fn backward_host<T: Seq>(&self, h: &HostRoles<T>, d_out: &[T]) -> Result<HostRoles<T>>;
}

/// The CUDA paths of a [`SeqOp`] (feature `cuda`).
#[cfg(feature = "cuda")]
pub(crate) trait SeqOpCuda {
    /// The forward on the CUDA device `dev` of the prepared `inputs`.
    fn forward_cuda<T: Seq>(
        &self,
        inputs: &Roles<Tensor>,
        dev: &candle_core::CudaDevice,
    ) -> Result<candle_core::CudaStorage>;
    /// The backward on the CUDA device: the gradients in token order.
    fn backward_cuda<T: Seq>(
        &self,
        inputs: &Roles<Tensor>,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>>;
}

/// Without the `cuda` feature there is no CUDA path to provide.
#[cfg(not(feature = "cuda"))]
pub(crate) trait SeqOpCuda {}
#[cfg(not(feature = "cuda"))]
impl<K> SeqOpCuda for K {}

/// The candle op of a [`SeqOp`] on its prepared (contiguous, typed) inputs,
/// applied to their gradient token.
pub(crate) struct Op<K> {
    /// The inputs by role.
    pub(crate) inputs: Roles<Tensor>,
    /// Where the backward leaves the gradients for the token's sinks.
    pub(crate) slot: GradSlot,
    /// The op's sizes and switches.
    pub(crate) kernel: K,
}

impl<K: SeqOp> Op<K> {
    /// The element type of the call (that of `x`).
    fn elem(&self) -> Result<crate::util::Elem> {
        elem_of(K::OP, K::NAMES[0], &self.inputs.x)
    }
}

impl<K: SeqOp> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, _token: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = &self.kernel;
        let storage = by_elem!(self.elem()?, T => {
            let h = host_roles::<T>(&self.inputs)?;
            T::to_cpu_storage_owned(k.forward_host::<T>(&h)?)
        });
        Ok((storage, k.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        token: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (k, dev) = (&self.kernel, token.device());
        let storage = by_elem!(self.elem()?, T => k.forward_cuda::<T>(&self.inputs, dev)?);
        Ok((storage, k.out_shape()))
    }

    fn bwd(&self, token: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (k, i) = (&self.kernel, &self.inputs);
        #[cfg(feature = "cuda")]
        if i.x.device().is_cuda() {
            let grads = by_elem!(self.elem()?, T => k.backward_cuda::<T>(i, grad)?);
            self.slot.fill(grads);
            return Ok(Some(token.zeros_like()?));
        }
        let grads = by_elem!(self.elem()?, T => {
            let h = host_roles::<T>(i)?;
            let d_out: Vec<T> = host(&grad.to_dtype(i.x.dtype())?)?;
            let g = k.backward_host::<T>(&h, &d_out)?;
            let dev = i.x.device();
            grad_list(
                i,
                g,
                |v, t| tensor(v, t.dims(), dev),
                |v, t| tensor(v, t.dims(), dev),
            )?
        });
        self.slot.fill(grads);
        Ok(Some(token.zeros_like()?))
    }
}

/// Check nothing, prepare every input (the sequence tensors in `seq`, the rest
/// in f32), make the gradient token and apply `kernel`'s op to it.
pub(crate) fn apply<K: SeqOp>(inputs: &Roles<Tensor>, seq: DType, kernel: K) -> Result<Tensor> {
    let inputs = inputs.as_ref().try_map(
        |t| prepared(t, seq),
        |t| prepared(t, DType::F32),
        |n| match *n {},
    )?;
    let slot = GradSlot::default();
    let tok = token(&token_list(&inputs), &slot)?;
    tok.apply_op1(Op {
        inputs,
        slot,
        kernel,
    })
}
