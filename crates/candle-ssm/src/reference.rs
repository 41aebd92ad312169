//! The operations written with plain candle tensor ops: the sequential
//! recurrences, one time step at a time, in f32. Slow (one small op per step)
//! but obviously correct, differentiable by candle's own autograd, and
//! independent of the kernels: the tests check the ops' outputs and gradients
//! against these.

use candle_core::{DType, Result, Tensor, D};

/// `softplus(v) = log(1 + exp(v))`, with the kernels' threshold: `v` above 20
/// passes through unchanged.
pub fn softplus(v: &Tensor) -> Result<Tensor> {
    let soft = (v.clamp(f32::MIN, 20f32)?.exp()? + 1.0)?.log()?;
    let high = v.ge(20f32)?;
    high.where_cond(v, &soft)
}

/// The Mamba-2 SSD recurrence: `S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T`,
/// `y_t = S_t C_t + D x_t`, `out = y * silu(z)` when `z` is given, with
/// `dt' = clamp(softplus?(dt + dt_bias), 0, inf)`. Layouts as
/// [`crate::SsdForward`]; `D` is `(H)` or `(H, P)`. Returns f32 `(b, L, H, P)`.
#[allow(clippy::too_many_arguments)]
pub fn ssd(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: Option<&Tensor>,
    z: Option<&Tensor>,
    dt_bias: Option<&Tensor>,
    dt_softplus: bool,
) -> Result<Tensor> {
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let (batch, seqlen, heads, head_dim) = x.dims4()?;
    let (_, _, groups, d_state) = b.dims4()?;
    let rep = heads / groups;
    // B, C per head: (b, L, H, N).
    let per_head = |t: &Tensor| -> Result<Tensor> {
        f(t)?
            .unsqueeze(3)?
            .broadcast_as((batch, seqlen, groups, rep, d_state))?
            .reshape((batch, seqlen, heads, d_state))
    };
    let (x, bh, ch) = (f(x)?, per_head(b)?, per_head(c)?);
    let mut dt = f(dt)?;
    if let Some(bias) = dt_bias {
        dt = dt.broadcast_add(&f(bias)?)?;
    }
    if dt_softplus {
        dt = softplus(&dt)?;
    }
    let dt = dt.relu()?;
    let decay = dt.broadcast_mul(&f(a)?)?.exp()?; // (b, L, H)
    let mut state = Tensor::zeros((batch, heads, head_dim, d_state), DType::F32, x.device())?;
    let mut ys = Vec::with_capacity(seqlen);
    for t in 0..seqlen {
        let xt = x.narrow(1, t, 1)?.squeeze(1)?; // (b, H, P)
        let dtt = dt.narrow(1, t, 1)?.squeeze(1)?.unsqueeze(2)?.unsqueeze(3)?; // (b, H, 1, 1)
        let dat = decay
            .narrow(1, t, 1)?
            .squeeze(1)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let bt = bh.narrow(1, t, 1)?.squeeze(1)?.unsqueeze(2)?; // (b, H, 1, N)
        let ct = ch.narrow(1, t, 1)?.squeeze(1)?.unsqueeze(2)?;
        let inject = xt.unsqueeze(3)?.broadcast_mul(&bt)?.broadcast_mul(&dtt)?;
        state = state.broadcast_mul(&dat)?.add(&inject)?;
        let mut y = state.broadcast_mul(&ct)?.sum(3)?; // (b, H, P)
        if let Some(d) = d {
            let d = f(d)?;
            let d = if d.rank() == 1 { d.unsqueeze(1)? } else { d };
            y = y.add(&xt.broadcast_mul(&d)?)?;
        }
        ys.push(y);
    }
    let mut y = Tensor::stack(&ys, 1)?;
    if let Some(z) = z {
        y = y.mul(&f(z)?.silu()?)?;
    }
    Ok(y)
}

/// The Mamba-1 selective scan recurrence, per channel `d` and state index `n`:
/// `h_t = exp(delta'_t A[d, n]) h_{t-1} + delta'_t B_t[n] u_t`,
/// `y_t = sum_n C_t[n] h_t + D[d] u_t`, `out = y * silu(z)`, with
/// `delta' = softplus?(delta + delta_bias)`. Layouts as
/// [`crate::SelectiveScan`] (B, C grouped `(b, G, N, L)`). Returns f32
/// `(b, D_in, L)`.
#[allow(clippy::too_many_arguments)]
pub fn selective_scan(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: Option<&Tensor>,
    z: Option<&Tensor>,
    delta_bias: Option<&Tensor>,
    delta_softplus: bool,
) -> Result<Tensor> {
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let (batch, d_inner, seqlen) = u.dims3()?;
    let (_, groups, d_state, _) = b.dims4()?;
    let rep = d_inner / groups;
    // B, C per channel: (b, D_in, N, L).
    let per_channel = |t: &Tensor| -> Result<Tensor> {
        f(t)?
            .unsqueeze(2)?
            .broadcast_as((batch, groups, rep, d_state, seqlen))?
            .reshape((batch, d_inner, d_state, seqlen))
    };
    let (u, bc, cc, a) = (f(u)?, per_channel(b)?, per_channel(c)?, f(a)?);
    let mut delta = f(delta)?;
    if let Some(bias) = delta_bias {
        delta = delta.broadcast_add(&f(bias)?.unsqueeze(1)?)?;
    }
    if delta_softplus {
        delta = softplus(&delta)?;
    }
    let mut state = Tensor::zeros((batch, d_inner, d_state), DType::F32, u.device())?;
    let mut ys = Vec::with_capacity(seqlen);
    for t in 0..seqlen {
        let ut = u.narrow(2, t, 1)?; // (b, D, 1)
        let dtt = delta.narrow(2, t, 1)?; // (b, D, 1)
        let bt = bc.narrow(3, t, 1)?.squeeze(3)?; // (b, D, N)
        let ct = cc.narrow(3, t, 1)?.squeeze(3)?;
        let decay = dtt.broadcast_mul(&a)?.exp()?; // (b, D, N)
        let inject = bt.broadcast_mul(&dtt.mul(&ut)?)?;
        state = state.mul(&decay)?.add(&inject)?;
        let mut y = state.mul(&ct)?.sum_keepdim(D::Minus1)?; // (b, D, 1)
        if let Some(d) = d {
            y = y.add(&ut.broadcast_mul(&f(d)?.unsqueeze(1)?)?)?;
        }
        ys.push(y);
    }
    let mut y = Tensor::cat(&ys, 2)?;
    if let Some(z) = z {
        y = y.mul(&f(z)?.silu()?)?;
    }
    Ok(y)
}
