//! Small helpers shared by the ops: error conversion, dtype checks, host copies.

use candle_core::{DType, Device, Result, Tensor, WithDType};

/// Convert an error of the kernels' crates to a candle error, keeping its text
/// (which names the argument) and saying which op raised it.
pub(crate) fn ssm_err(op: &'static str) -> impl Fn(ssm_core::SsmError) -> candle_core::Error {
    move |e| candle_core::Error::Msg(format!("{op}: {e}"))
}

/// The element types the kernels take for sequence tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F16,
    Bf16,
}

pub(crate) fn elem_of(op: &'static str, name: &str, t: &Tensor) -> Result<Elem> {
    match t.dtype() {
        DType::F32 => Ok(Elem::F32),
        DType::F16 => Ok(Elem::F16),
        DType::BF16 => Ok(Elem::Bf16),
        other => {
            candle_core::bail!("{op}: `{name}` has dtype {other:?}; f32, f16 or bf16 expected")
        }
    }
}

/// `t` in `dtype` and contiguous, as the kernels read it. Both steps are candle
/// ops (no-ops when nothing changes), so gradients flow back through them.
pub(crate) fn prepared(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.contiguous()
}

/// Check that `t` has the dtype of the sequence tensors and the same device as `x`.
pub(crate) fn same_kind(op: &'static str, name: &str, t: &Tensor, x: &Tensor) -> Result<()> {
    if t.dtype() != x.dtype() {
        candle_core::bail!(
            "{op}: `{name}` has dtype {:?} but `x` has {:?}; the sequence tensors share one dtype",
            t.dtype(),
            x.dtype()
        );
    }
    if !t.device().same_device(x.device()) {
        candle_core::bail!(
            "{op}: `{name}` is on {:?} but `x` is on {:?}",
            t.device().location(),
            x.device().location()
        );
    }
    Ok(())
}

/// Check the dims of `t` against `want` (names for the message).
pub(crate) fn check_dims(
    op: &'static str,
    name: &str,
    t: &Tensor,
    want: &[(&str, usize)],
) -> Result<()> {
    let got = t.dims();
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, (_, w))| g == w);
    if !ok {
        let want: Vec<String> = want.iter().map(|(n, v)| format!("{n}={v}")).collect();
        candle_core::bail!(
            "{op}: `{name}` has shape {got:?}; expected ({})",
            want.join(", ")
        );
    }
    Ok(())
}

/// The rank-`R` dims of `t`, or an error naming it.
pub(crate) fn dims_n<const R: usize>(
    op: &'static str,
    name: &str,
    t: &Tensor,
    names: [&str; R],
) -> Result<[usize; R]> {
    let d = t.dims();
    if d.len() != R {
        candle_core::bail!(
            "{op}: `{name}` has shape {d:?}; expected rank {R} ({})",
            names.join(", ")
        );
    }
    let mut out = [0; R];
    out.copy_from_slice(d);
    Ok(out)
}

/// A host copy of `t` in row-major order (any device, any layout).
pub(crate) fn host<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// A tensor of `dims` on `device` from host data.
pub(crate) fn tensor<T: WithDType>(
    data: Vec<T>,
    dims: &[usize],
    device: &Device,
) -> Result<Tensor> {
    Tensor::from_vec(data, dims, device)
}
