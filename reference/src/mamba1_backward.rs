//! The adjoint of the Mamba-1 selective scan: the f64 gradient oracle
//! (derivation in docs/BACKWARD-MAMBA1.md).
//!
//! For one sequence and channel `d` the forward ([`crate::selective_scan`]) is,
//! with `x_t = delta_t + delta_bias`, `dt_t = softplus(x_t)` (or `x_t`),
//! `a_tn = exp(dt_t A_n)`:
//!
//! ```text
//! h_t   = a_t * h_{t-1} + dt_t B_t u_t          h_{-1} = initial state
//! y_t   = sum_n C_tn h_tn + D u_t
//! out_t = y_t * silu(z_t)
//! ```
//!
//! Given `g_t = dL/dout_t` and `dL/dh_last`, the reverse sweep carries the
//! adjoint `lam = dL/dh_t` from the last step to the first:
//!
//! ```text
//! lam        <- dL/d final state
//! for t from last to first:
//!     gy     = g_t silu(z_t);     dz_t = g_t y_t silu'(z_t);     dD += gy u_t
//!     lam   += C_t gy                            (lam is now dL/dh_t)
//!     dC_t  += gy h_t;  dB_t += lam dt_t u_t;  du_t = gy D + dt_t sum_n lam B_t
//!     ddt    = sum_n lam (A a_t h_{t-1} + B_t u_t);  dA += lam dt_t a_t h_{t-1}
//!     ddelta_t = ddt softplus'(x_t);  ddelta_bias += ddelta_t
//!     lam   *= a_t                               (dL/dh_{t-1} through h_t)
//! dinitial_state = lam
//! ```
//!
//! Why it is trustworthy: the forward states are stored for the whole sequence
//! (no checkpointing, no recomputation), every value is f64, the sweep is the
//! chain rule applied to the recurrence one step at a time, and the tests check
//! every gradient against central finite differences of [`crate::selective_scan`]
//! itself. Each (sequence, channel) pair is independent and runs in parallel;
//! the reductions over channels (grouped dB, dC) and over sequences and time
//! (dA, dD, ddelta_bias, constant dB, dC) are then added in a fixed order.
//!
//! [`selective_scan_backward_magnitudes`] runs the same sweep on absolute
//! values: every gradient element becomes the sum of the absolute values of the
//! terms it is built from, the quantity rounding-error bounds are stated in
//! (docs/TOLERANCES.md, "Cancellation"). The tests of f32 implementations use it
//! to widen a relative check where a gradient nearly cancels.

use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba1_grad::{
    bc_grad_len, silu_grad, silu_grad_magnitude, softplus_grad, ScanGradInputs, ScanGrads,
};
use ssm_core::math::{scan_dt, silu};
use ssm_core::{Element, Result};

use rayon::prelude::*;

use crate::mamba1::bc_value;
use crate::sequence::{load_initial_state, sequence_channels, Sequence};

/// Gradients of `sum(d_out * out) + sum(d_final_states * final_states)` with
/// respect to every input of the forward `p`, in f64.
///
/// `d_out` is `(b, D_in, L)` in the output type; `d_final_states` is
/// `(b or num_seqs, D_in, N)` and only allowed when `p` returns final states.
/// Errors are those of [`ScanGradInputs::validate`].
pub fn selective_scan_backward<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<ScanGrads<f64, f64>> {
    backward(p, ScanGradInputs::new(d_out, d_final_states), Mode::Exact)
}

/// The same sweep on absolute values: each element is the sum of the absolute
/// values of the terms of the corresponding gradient (with the states and the
/// adjoint themselves replaced by their magnitudes). An upper bound on what f32
/// rounding of those terms can cost, used for cancellation allowances.
pub fn selective_scan_backward_magnitudes<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<ScanGrads<f64, f64>> {
    backward(
        p,
        ScanGradInputs::new(d_out, d_final_states),
        Mode::Magnitude,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exact,
    Magnitude,
}

impl Mode {
    /// A value entering a product: itself, or its magnitude.
    fn v(self, x: f64) -> f64 {
        match self {
            Mode::Exact => x,
            Mode::Magnitude => x.abs(),
        }
    }
}

/// What one (sequence, channel) contributes.
struct Contribution {
    /// Per position of the sequence.
    du: Vec<f64>,
    ddelta: Vec<f64>,
    dz: Vec<f64>,
    /// `(N)`.
    da: Vec<f64>,
    dd: f64,
    ddelta_bias: f64,
    /// Grouped: `(N, len)`; constant: `(N)`.
    db: Vec<f64>,
    dc: Vec<f64>,
    /// `(N)`: `dL/d h_{-1}`.
    dh0: Vec<f64>,
}

fn backward<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    grads: ScanGradInputs<'_, T>,
    mode: Mode,
) -> Result<ScanGrads<f64, f64>> {
    let layout = grads.validate(p)?;
    let (batch, d_inner, d_state) = (p.dims.batch, p.dims.d_inner, p.dims.d_state);
    let seqlen = p.dims.seqlen;

    let tasks = sequence_channels(batch, seqlen, d_inner, p.cu_seqlens);
    let contributions: Vec<Contribution> = tasks
        .par_iter()
        .map(|&(seq, d)| channel_backward(p, &grads, mode, seq, d))
        .collect();

    let bdl = batch * d_inner * seqlen;
    let mut out = ScanGrads {
        du: vec![0.0; bdl],
        ddelta: vec![0.0; bdl],
        da: vec![0.0; d_inner * d_state],
        db: vec![0.0; bc_grad_len(&p.b, p.dims)],
        dc: vec![0.0; bc_grad_len(&p.c, p.dims)],
        dd: p.d.map(|_| vec![0.0; d_inner]),
        dz: p.z.map(|_| vec![0.0; bdl]),
        ddelta_bias: p.delta_bias.map(|_| vec![0.0; d_inner]),
        dinitial_states: p
            .initial_states
            .map(|_| vec![0.0; layout.num_seqs * d_inner * d_state]),
    };
    // Fixed order: tasks are (sequence, channel) in sequence-major order.
    for (&(seq, d), c) in tasks.iter().zip(contributions) {
        let at = (seq.row * d_inner + d) * seqlen;
        out.du[at + seq.start..at + seq.end].copy_from_slice(&c.du);
        out.ddelta[at + seq.start..at + seq.end].copy_from_slice(&c.ddelta);
        if let Some(dz) = &mut out.dz {
            dz[at + seq.start..at + seq.end].copy_from_slice(&c.dz);
        }
        for (acc, v) in out.da[d * d_state..(d + 1) * d_state].iter_mut().zip(&c.da) {
            *acc += v;
        }
        if let Some(dd) = &mut out.dd {
            dd[d] += c.dd;
        }
        if let Some(db) = &mut out.ddelta_bias {
            db[d] += c.ddelta_bias;
        }
        add_bc(&mut out.db, &p.b, p.dims, seq, d, &c.db);
        add_bc(&mut out.dc, &p.c, p.dims, seq, d, &c.dc);
        if let Some(dh0) = &mut out.dinitial_states {
            let at = (seq.state * d_inner + d) * d_state;
            dh0[at..at + d_state].copy_from_slice(&c.dh0);
        }
    }
    Ok(out)
}

/// The reverse sweep of one channel `d` over one sequence.
fn channel_backward<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    grads: &ScanGradInputs<'_, T>,
    mode: Mode,
    seq: Sequence,
    d: usize,
) -> Contribution {
    let Mamba1Dims {
        d_inner, d_state, ..
    } = p.dims;
    let n_state = d_state;
    let len = seq.len();
    let channel_at = (seq.row * d_inner + d) * p.dims.seqlen;
    let bias = p.delta_bias.map_or(0.0, |b| f64::from(b[d]));
    let skip = mode.v(p.d.map_or(0.0, |s| f64::from(s[d])));
    let a_row: Vec<f64> = p.a[d * n_state..(d + 1) * n_state]
        .iter()
        .map(|&a| f64::from(a))
        .collect();
    let u = |k: usize| mode.v(p.u[channel_at + seq.start + k].to_f64());
    let pre = |k: usize| p.delta[channel_at + seq.start + k].to_f64() + bias;
    let dt = |k: usize| scan_dt(pre(k), 0.0, p.delta_softplus);
    let b = |n: usize, k: usize| mode.v(bc_value(&p.b, p.dims, seq.row, d, n, seq.start + k));
    let c = |n: usize, k: usize| mode.v(bc_value(&p.c, p.dims, seq.row, d, n, seq.start + k));

    // Forward: every state h_{k}, k = -1..len-1, stored at hs[(k + 1) * N..].
    let mut hs = vec![0.0; (len + 1) * n_state];
    load_initial_state(
        &mut hs[..n_state],
        p.initial_states,
        seq.state * d_inner + d,
    );
    for h in &mut hs[..n_state] {
        *h = mode.v(*h);
    }
    // Magnitude mode keeps the decays (positive) but takes |dt| where dt
    // multiplies (without softplus a step size may be negative).
    for k in 0..len {
        let (dt, u) = (dt(k), u(k));
        for n in 0..n_state {
            let decay = (dt * a_row[n]).exp();
            hs[(k + 1) * n_state + n] = decay * hs[k * n_state + n] + mode.v(dt) * b(n, k) * u;
        }
    }

    // Reverse sweep. `lam` enters step k as dL/dh_k through the later steps
    // (and the final state), and leaves it as dL/dh_{k-1} through h_k.
    let mut lam = vec![0.0; n_state];
    if let Some(dh) = grads.d_final_states {
        let at = (seq.state * d_inner + d) * n_state;
        for (l, &g) in lam.iter_mut().zip(&dh[at..at + n_state]) {
            *l = mode.v(f64::from(g));
        }
    }
    let grouped = |bc: &BcInput<'_, T>| matches!(bc, BcInput::Grouped { .. });
    let bc_len = |bc: &BcInput<'_, T>| if grouped(bc) { n_state * len } else { n_state };
    let mut out = Contribution {
        du: vec![0.0; len],
        ddelta: vec![0.0; len],
        dz: vec![0.0; if p.z.is_some() { len } else { 0 }],
        da: vec![0.0; n_state],
        dd: 0.0,
        ddelta_bias: 0.0,
        db: vec![0.0; bc_len(&p.b)],
        dc: vec![0.0; bc_len(&p.c)],
        dh0: Vec::new(),
    };
    let (b_grouped, c_grouped) = (grouped(&p.b), grouped(&p.c));
    // In magnitude mode the rate's sign must not cancel the input term of ddt.
    let rate = |n: usize| mode.v(a_row[n]);
    for k in (0..len).rev() {
        let (dt_exact, u, x) = (dt(k), u(k), pre(k));
        let dt = mode.v(dt_exact);
        let g = mode.v(grads.d_out[channel_at + seq.start + k].to_f64());
        let h_now = &hs[(k + 1) * n_state..(k + 2) * n_state];
        let h_prev = &hs[k * n_state..(k + 1) * n_state];
        let gy = match p.z {
            Some(z) => {
                let z = z[channel_at + seq.start + k].to_f64();
                let y: f64 = (0..n_state).map(|n| c(n, k) * h_now[n]).sum::<f64>() + skip * u;
                let gate = match mode {
                    Mode::Exact => silu_grad(z),
                    Mode::Magnitude => silu_grad_magnitude(z),
                };
                out.dz[k] = g * y * gate;
                g * mode.v(silu(z))
            }
            None => g,
        };
        out.dd += gy * u;
        let mut du = gy * skip;
        let mut ddt = 0.0;
        for n in 0..n_state {
            lam[n] += c(n, k) * gy;
            let decay = (dt_exact * a_row[n]).exp();
            let (bi, ci) = (
                if b_grouped { n * len + k } else { n },
                if c_grouped { n * len + k } else { n },
            );
            out.dc[ci] += gy * h_now[n];
            out.db[bi] += lam[n] * dt * u;
            du += lam[n] * dt * b(n, k);
            ddt += lam[n] * (rate(n) * decay * h_prev[n] + b(n, k) * u);
            out.da[n] += lam[n] * dt * decay * h_prev[n];
            lam[n] *= decay;
        }
        out.du[k] = du;
        let ddelta = if p.delta_softplus {
            ddt * softplus_grad(x)
        } else {
            ddt
        };
        out.ddelta[k] = ddelta;
        out.ddelta_bias += ddelta;
    }
    out.dh0 = lam;
    out
}

/// Add one (sequence, channel)'s dB or dC to the gradient in B's or C's layout.
fn add_bc<T>(
    grad: &mut [f64],
    bc: &BcInput<'_, T>,
    dims: Mamba1Dims,
    seq: Sequence,
    d: usize,
    contribution: &[f64],
) {
    let (d_inner, d_state, seqlen) = (dims.d_inner, dims.d_state, dims.seqlen);
    match *bc {
        BcInput::Grouped { groups, .. } => {
            let g = d / (d_inner / groups);
            let len = seq.len();
            for n in 0..d_state {
                let at = ((seq.row * groups + g) * d_state + n) * seqlen + seq.start;
                for (acc, v) in grad[at..at + len]
                    .iter_mut()
                    .zip(&contribution[n * len..(n + 1) * len])
                {
                    *acc += v;
                }
            }
        }
        BcInput::Constant(_) => {
            for (acc, v) in grad[d * d_state..(d + 1) * d_state]
                .iter_mut()
                .zip(contribution)
            {
                *acc += v;
            }
        }
    }
}

#[cfg(test)]
mod tests;
