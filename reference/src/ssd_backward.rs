//! The Mamba-2 SSD backward in f64: the gradient oracle (derivation in
//! docs/BACKWARD-SSD.md).
//!
//! * [`ssd_backward`]: the adjoint of the recurrence, a reverse sweep. Per
//!   (sequence, head), with `G` the gradient with respect to the state `S_t`:
//!
//!   ```text
//!   G_L = d_final_states (or 0)
//!   for t = L-1 .. 0:
//!       dy_t = d_out_t * silu(z_t);   dz_t = d_out_t * y_t * silu'(z_t)
//!       G   += dy_t C_t^T                       (y_t = S_t C_t + D x_t)
//!       dC_t = S_t^T dy_t,  dx_t = D dy_t + dt'_t G B_t,  dB_t = dt'_t G^T x_t
//!       da_t = exp(a_t) <G, S_{t-1}>            (a_t = dt'_t A, the log-decay)
//!       d dt'_t = x_t^T G B_t + A da_t,  dA += dt'_t da_t
//!       G    = exp(a_t) G                       (now the gradient w.r.t. S_{t-1})
//!   d initial_state = G
//!   ```
//!
//!   then `d dt = d dt' * dt_grad_factor` (bias, softplus, clamp), `d dt_bias` its
//!   sum over tokens, `dD` the sum of `dy x`. The forward states `S_t` are stored
//!   (the oracle is for test sizes; a chunked implementation recomputes them).
//! * [`ssd_backward_quadratic`]: reverse mode through the quadratic form of
//!   `ssd.rs`, pair by pair (`y_i = sum_{j<=i} (C_i.B_j) exp(seg(i,j)) dt'_j x_j +
//!   exp(seg(i,-1)) S_0 C_i + D x_i`, the final state likewise), with the gradient
//!   of each segment sum spread over its terms: a derivation independent of the
//!   sweep (it never forms a state gradient), checking it.
//!
//! Both share only the input accessors, the dt chain ([`dt_grad_factor`]) and the
//! placement of per-(sequence, head) results into the output layouts, which the
//! finite-difference tests below check end to end.

use rayon::prelude::*;
use ssm_core::mamba1_grad::silu_grad_magnitude;
use ssm_core::mamba2::{SsdLayout, SsdParams};
use ssm_core::mamba2_grad::{dt_grad_factor, silu_grad, validate_grad_inputs};
use ssm_core::math::silu;
use ssm_core::{Element, Result, SsdGrads};

use crate::sequence::{load_initial_state, sequences, Sequence};

/// The adjoint of the recurrence (module docs). `d_out` is `(b, L, H, P)`;
/// `d_final_states` `(b or num_seqs, H, P, N)`, only with `return_final_states`.
pub fn ssd_backward<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<SsdGrads<f64, f64>> {
    Ok(ssd_backward_detailed(p, d_out, d_final_states)?.grads)
}

/// [`ssd_backward`] plus the gradient with respect to every log-decay
/// `a_t = dt'_t A_h`, `(b, L, H)`: `dA_h = sum_t dt'_t d_log_decay_t`, the terms
/// whose magnitude a test needs to judge a cancelling `dA`.
pub fn ssd_backward_detailed<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<SsdBackwardDetail> {
    sweep(p, d_out, d_final_states, false)
}

/// The reverse sweep with every linear input (`x, B, C, D, d_out silu(z)`, the
/// initial states, `d_final_states`, and `A` where it multiplies a gradient) read
/// as its absolute value, decays unchanged: each gradient becomes the sum of the
/// absolute values of its terms, the scale that rounding-error bounds are stated
/// in. A test judging an f32 gradient that nearly cancels widens its budget by
/// this (docs/TOLERANCES.md, "Backward").
pub fn ssd_backward_magnitude<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<SsdBackwardDetail> {
    sweep(p, d_out, d_final_states, true)
}

fn sweep<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    mag: bool,
) -> Result<SsdBackwardDetail> {
    let layout = validate_grad_inputs(p, d_out, d_final_states)?;
    let io = Io { p, d_out, mag };
    let tasks = tasks(p);
    let heads: Vec<HeadGrads> = tasks
        .par_iter()
        .map(|&(seq, h)| sweep_head(&io, seq, h, d_final_states))
        .collect();
    Ok(assemble(&io, layout, &tasks, heads))
}

/// Reverse mode through the quadratic form (module docs), independent of the sweep.
/// Cost `O(L^2 (N + P))` per (sequence, head): test sizes only.
pub fn ssd_backward_quadratic<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<SsdGrads<f64, f64>> {
    let layout = validate_grad_inputs(p, d_out, d_final_states)?;
    let io = Io {
        p,
        d_out,
        mag: false,
    };
    let tasks = tasks(p);
    let heads: Vec<HeadGrads> = tasks
        .par_iter()
        .map(|&(seq, h)| quadratic_head(&io, seq, h, d_final_states))
        .collect();
    Ok(assemble(&io, layout, &tasks, heads).grads)
}

/// The result of [`ssd_backward_detailed`].
#[derive(Clone, Debug, PartialEq)]
pub struct SsdBackwardDetail {
    /// The gradients, as [`ssd_backward`] returns them (f64 throughout).
    pub grads: SsdGrads<f64, f64>,
    /// `(b, L, H)`: d loss / d a_t, with `a_t = dt'_t A_h`.
    pub d_log_decay: Vec<f64>,
}

fn tasks<T>(p: &SsdParams<'_, T>) -> Vec<(Sequence, usize)> {
    let heads = p.dims.heads;
    sequences(p.dims.batch, p.dims.seqlen, p.cu_seqlens)
        .into_iter()
        .flat_map(|seq| (0..heads).map(move |h| (seq, h)))
        .collect()
}

/// What one (sequence, head) contributes, positions counted from the sequence start.
struct HeadGrads {
    /// `(len, P)`.
    dx: Vec<f64>,
    /// `(len, P)`, zero without z.
    dz: Vec<f64>,
    /// `(P)`: `sum_t dy_t x_t`, per head-dimension index.
    dd: Vec<f64>,
    /// `(len, N)`: this head's share of its group's `dB`, `dC`.
    db: Vec<f64>,
    dc: Vec<f64>,
    /// `(len)`: d loss / d dt' (before the bias/softplus/clamp chain).
    d_dt_prime: Vec<f64>,
    /// `(len)`: d loss / d a_t.
    d_log_decay: Vec<f64>,
    /// `(P, N)`.
    d_initial: Vec<f64>,
}

impl HeadGrads {
    fn zeros(len: usize, head_dim: usize, d_state: usize) -> Self {
        HeadGrads {
            dx: vec![0.0; len * head_dim],
            dz: vec![0.0; len * head_dim],
            dd: vec![0.0; head_dim],
            db: vec![0.0; len * d_state],
            dc: vec![0.0; len * d_state],
            d_dt_prime: vec![0.0; len],
            d_log_decay: vec![0.0; len],
            d_initial: vec![0.0; head_dim * d_state],
        }
    }
}

/// The reverse sweep of one (sequence, head), forward states stored.
fn sweep_head<T: Element>(
    io: &Io<'_, '_, T>,
    seq: Sequence,
    h: usize,
    d_final_states: Option<&[f32]>,
) -> HeadGrads {
    let p = io.p;
    let (head_dim, d_state, len, pn, a, block) = io.head_task(seq, h);
    let rate = io.rate(h);

    // Forward: states[k + 1] = S_k, states[0] = S_{-1} = initial state.
    let mut states = vec![0.0; (len + 1) * pn];
    io.state_row(&mut states[..pn], p.initial_states, block);
    let dts: Vec<f64> = seq.positions().map(|t| p.dt_at(seq.row, t, h)).collect();
    for (k, t) in seq.positions().enumerate() {
        let (prev, next) = states[k * pn..(k + 2) * pn].split_at_mut(pn);
        let decay = (dts[k] * a).exp();
        for pi in 0..head_dim {
            let x = io.x(seq.row, t, h, pi);
            for n in 0..d_state {
                next[pi * d_state + n] =
                    decay * prev[pi * d_state + n] + dts[k] * x * io.b(seq.row, t, h, n);
            }
        }
    }

    let mut out = HeadGrads::zeros(len, head_dim, d_state);
    let mut g = vec![0.0; pn];
    io.state_row(&mut g, d_final_states, block);
    let mut dy = vec![0.0; head_dim];
    for (k, t) in seq.positions().enumerate().rev() {
        let (s_prev, s_k) = (
            &states[k * pn..(k + 1) * pn],
            &states[(k + 1) * pn..(k + 2) * pn],
        );
        let (dt, decay) = (dts[k], (dts[k] * a).exp());
        for pi in 0..head_dim {
            let x = io.x(seq.row, t, h, pi);
            let y: f64 = (0..d_state)
                .map(|n| s_k[pi * d_state + n] * io.c(seq.row, t, h, n))
                .sum::<f64>()
                + io.skip(h, pi) * x;
            let (dyp, dzp) = io.gate_grad(seq.row, t, h, pi, y);
            dy[pi] = dyp;
            out.dz[k * head_dim + pi] = dzp;
            out.dd[pi] += dyp * x;
        }
        // G now becomes d loss / d S_k: add the output's share.
        for pi in 0..head_dim {
            for n in 0..d_state {
                g[pi * d_state + n] += dy[pi] * io.c(seq.row, t, h, n);
            }
        }
        let mut x_g_b = 0.0;
        for pi in 0..head_dim {
            let x = io.x(seq.row, t, h, pi);
            let gb: f64 = (0..d_state)
                .map(|n| g[pi * d_state + n] * io.b(seq.row, t, h, n))
                .sum();
            out.dx[k * head_dim + pi] = io.skip(h, pi) * dy[pi] + dt * gb;
            x_g_b += x * gb;
        }
        for n in 0..d_state {
            let mut dc = 0.0;
            let mut db = 0.0;
            for pi in 0..head_dim {
                dc += s_k[pi * d_state + n] * dy[pi];
                db += g[pi * d_state + n] * io.x(seq.row, t, h, pi);
            }
            out.dc[k * d_state + n] = dc;
            out.db[k * d_state + n] = dt * db;
        }
        let g_dot_prev: f64 = g.iter().zip(s_prev).map(|(g, s)| g * s).sum();
        let d_log_decay = decay * g_dot_prev;
        out.d_log_decay[k] = d_log_decay;
        out.d_dt_prime[k] = x_g_b + rate * d_log_decay;
        for v in g.iter_mut() {
            *v *= decay;
        }
    }
    out.d_initial = g;
    out
}

/// Reverse mode through the quadratic form of one (sequence, head).
// Pairs (i, j) index several per-position arrays at once; index loops read as the math.
#[allow(clippy::needless_range_loop)]
fn quadratic_head<T: Element>(
    io: &Io<'_, '_, T>,
    seq: Sequence,
    h: usize,
    d_final_states: Option<&[f32]>,
) -> HeadGrads {
    let p = io.p;
    let (head_dim, d_state, len, pn, a, block) = io.head_task(seq, h);
    let mut s0 = vec![0.0; pn];
    load_initial_state(&mut s0, p.initial_states, block);
    let mut g_final = vec![0.0; pn];
    load_initial_state(&mut g_final, d_final_states, block);
    let row = seq.row;
    let tok = |i: usize| seq.start + i;
    let dts: Vec<f64> = seq.positions().map(|t| p.dt_at(row, t, h)).collect();
    let la: Vec<f64> = dts.iter().map(|dt| dt * a).collect();
    // seg[i][j + 1] = seg(i, j) = sum_{k=j+1..=i} a_k for j in -1..=i, each summed
    // from its own terms as j walks back from i.
    let seg: Vec<Vec<f64>> = (0..len)
        .map(|i| {
            let mut v = vec![0.0; i + 2];
            for j in (0..=i).rev() {
                v[j] = v[j + 1] + la[j];
            }
            v
        })
        .collect();
    let cb = |i: usize, j: usize| -> f64 {
        (0..d_state)
            .map(|n| io.c(row, tok(i), h, n) * io.b(row, tok(j), h, n))
            .sum()
    };

    let mut out = HeadGrads::zeros(len, head_dim, d_state);
    // d loss / d a_k is a sum of segment gradients over the segments containing k;
    // a segment (lo..=hi) adds its gradient q to diff[lo] and subtracts it at hi + 1.
    let mut diff = vec![0.0; len + 1];
    let mut add_segment = |lo: usize, hi: usize, q: f64| {
        if lo <= hi {
            diff[lo] += q;
            diff[hi + 1] -= q;
        }
    };

    let mut dy = vec![0.0; head_dim];
    let mut y = vec![0.0; head_dim];
    for i in 0..len {
        // Forward value of y_i (for dz), then dy_i.
        let e0 = seg[i][0].exp();
        for pi in 0..head_dim {
            let s0c: f64 = (0..d_state)
                .map(|n| s0[pi * d_state + n] * io.c(row, tok(i), h, n))
                .sum();
            y[pi] = e0 * s0c + io.skip(h, pi) * io.x(row, tok(i), h, pi);
        }
        for j in 0..=i {
            let w = cb(i, j) * seg[i][j + 1].exp() * dts[j];
            for (pi, y) in y.iter_mut().enumerate() {
                *y += w * io.x(row, tok(j), h, pi);
            }
        }
        for pi in 0..head_dim {
            let x = io.x(row, tok(i), h, pi);
            let (dyp, dzp) = io.gate_grad(row, tok(i), h, pi, y[pi]);
            dy[pi] = dyp;
            out.dz[i * head_dim + pi] = dzp;
            out.dd[pi] += dyp * x;
            out.dx[i * head_dim + pi] += io.skip(h, pi) * dyp;
        }
        // The pairs (i, j <= i).
        for j in 0..=i {
            let e = seg[i][j + 1].exp();
            let cb_ij = cb(i, j);
            let g_ij: f64 = (0..head_dim)
                .map(|pi| dy[pi] * io.x(row, tok(j), h, pi))
                .sum();
            for (pi, dyp) in dy.iter().enumerate() {
                out.dx[j * head_dim + pi] += cb_ij * e * dts[j] * dyp;
            }
            for n in 0..d_state {
                out.dc[i * d_state + n] += e * dts[j] * g_ij * io.b(row, tok(j), h, n);
                out.db[j * d_state + n] += e * dts[j] * g_ij * io.c(row, tok(i), h, n);
            }
            out.d_dt_prime[j] += cb_ij * e * g_ij;
            add_segment(j + 1, i, cb_ij * e * dts[j] * g_ij);
        }
        // The initial state's term exp(seg(i,-1)) S_0 C_i.
        let mut r = 0.0;
        for (pi, dyp) in dy.iter().enumerate() {
            for n in 0..d_state {
                let s = s0[pi * d_state + n];
                let c = io.c(row, tok(i), h, n);
                r += dyp * s * c;
                out.d_initial[pi * d_state + n] += e0 * dyp * c;
                out.dc[i * d_state + n] += e0 * s * dyp;
            }
        }
        add_segment(0, i, e0 * r);
    }

    // The final state S = sum_j exp(seg(L-1,j)) dt'_j x_j B_j^T + exp(seg(L-1,-1)) S_0.
    if len == 0 {
        for (d, g) in out.d_initial.iter_mut().zip(&g_final) {
            *d += g;
        }
    } else {
        let last = len - 1;
        for j in 0..len {
            let e = seg[last][j + 1].exp();
            let mut f = 0.0;
            for pi in 0..head_dim {
                let x = io.x(row, tok(j), h, pi);
                let gb: f64 = (0..d_state)
                    .map(|n| g_final[pi * d_state + n] * io.b(row, tok(j), h, n))
                    .sum();
                out.dx[j * head_dim + pi] += e * dts[j] * gb;
                f += x * gb;
            }
            for n in 0..d_state {
                let gx: f64 = (0..head_dim)
                    .map(|pi| g_final[pi * d_state + n] * io.x(row, tok(j), h, pi))
                    .sum();
                out.db[j * d_state + n] += e * dts[j] * gx;
            }
            out.d_dt_prime[j] += e * f;
            add_segment(j + 1, last, e * dts[j] * f);
        }
        let e0 = seg[last][0].exp();
        let g_s0: f64 = g_final.iter().zip(&s0).map(|(g, s)| g * s).sum();
        for (d, g) in out.d_initial.iter_mut().zip(&g_final) {
            *d += e0 * g;
        }
        add_segment(0, last, e0 * g_s0);
    }

    let mut acc = 0.0;
    for k in 0..len {
        acc += diff[k];
        out.d_log_decay[k] = acc;
        out.d_dt_prime[k] += a * acc;
    }
    out
}

/// Place every (sequence, head)'s gradients into the output layouts: the dt chain
/// per token, the group sums of `dB`/`dC` (heads in order), and the reductions of
/// `dA`, `dt_bias` and `D` over tokens (tasks in order).
fn assemble<T: Element>(
    io: &Io<'_, '_, T>,
    layout: SsdLayout,
    tasks: &[(Sequence, usize)],
    heads_out: Vec<HeadGrads>,
) -> SsdBackwardDetail {
    let p = io.p;
    let (batch, seqlen, heads) = (p.dims.batch, p.dims.seqlen, p.dims.heads);
    let (head_dim, d_state, groups) = (p.dims.head_dim, p.dims.d_state, p.dims.groups);
    let tokens = batch * seqlen;
    let mut dx = vec![0.0; tokens * heads * head_dim];
    let mut dz = vec![0.0; tokens * heads * head_dim];
    let mut ddt = vec![0.0; tokens * heads];
    let mut d_log_decay = vec![0.0; tokens * heads];
    let mut db = vec![0.0; tokens * groups * d_state];
    let mut dc = vec![0.0; tokens * groups * d_state];
    let mut da = vec![0.0; heads];
    let mut ddt_bias = vec![0.0; heads];
    let mut dd_hp = vec![0.0; heads * head_dim];
    let pn = head_dim * d_state;
    let mut d_init = vec![0.0; layout.num_seqs * heads * pn];
    for (&(seq, h), g) in tasks.iter().zip(heads_out) {
        let bias = p.dt_bias.map_or(0.0, |b| f64::from(b[h]));
        let grp = p.dims.group_of(h);
        for (k, t) in seq.positions().enumerate() {
            let token = seq.row * seqlen + t;
            let xi = (token * heads + h) * head_dim;
            dx[xi..xi + head_dim].copy_from_slice(&g.dx[k * head_dim..(k + 1) * head_dim]);
            dz[xi..xi + head_dim].copy_from_slice(&g.dz[k * head_dim..(k + 1) * head_dim]);
            let bi = (token * groups + grp) * d_state;
            for n in 0..d_state {
                db[bi + n] += g.db[k * d_state + n];
                dc[bi + n] += g.dc[k * d_state + n];
            }
            let raw = p.dt[token * heads + h].to_f64();
            let d_raw = g.d_dt_prime[k] * dt_grad_factor(raw, bias, p.dt_softplus, p.dt_limit);
            ddt[token * heads + h] = d_raw;
            ddt_bias[h] += d_raw;
            d_log_decay[token * heads + h] = g.d_log_decay[k];
            da[h] += p.dt_at(seq.row, t, h) * g.d_log_decay[k];
        }
        for (acc, v) in dd_hp[h * head_dim..(h + 1) * head_dim]
            .iter_mut()
            .zip(&g.dd)
        {
            *acc += v;
        }
        let block = seq.state * heads + h;
        d_init[block * pn..(block + 1) * pn].copy_from_slice(&g.d_initial);
    }
    let dd = p.d.map(|d| match d {
        ssm_core::mamba2::DSkip::PerHead(_) => dd_hp
            .chunks_exact(head_dim)
            .map(|row| row.iter().sum())
            .collect(),
        ssm_core::mamba2::DSkip::PerHeadDim(_) => dd_hp,
    });
    SsdBackwardDetail {
        grads: SsdGrads {
            dx,
            ddt,
            da,
            db,
            dc,
            dd,
            dz: p.z.map(|_| dz),
            ddt_bias: p.dt_bias.map(|_| ddt_bias),
            dinitial_states: p.initial_states.map(|_| d_init),
        },
        d_log_decay,
    }
}

/// Element accessors in the token-major layouts, widened to f64.
struct Io<'a, 'p, T> {
    p: &'a SsdParams<'p, T>,
    d_out: &'a [T],
    /// Magnitude mode: every linear input read as its absolute value.
    mag: bool,
}

impl<T: Element> Io<'_, '_, T> {
    /// What one (sequence, head) works with, the same for both reverse modes:
    /// `(P, N, tokens, P * N, A_h as it enters the decays, the state row of
    /// (sequence, h) in the initial and final states)`.
    fn head_task(&self, seq: Sequence, h: usize) -> (usize, usize, usize, usize, f64, usize) {
        let d = self.p.dims;
        let (head_dim, d_state) = (d.head_dim, d.d_state);
        let a = f64::from(self.p.a[h]);
        let block = seq.state * d.heads + h;
        (head_dim, d_state, seq.len(), head_dim * d_state, a, block)
    }
    fn x_index(&self, row: usize, t: usize, h: usize, pi: usize) -> usize {
        let d = self.p.dims;
        ((row * d.seqlen + t) * d.heads + h) * d.head_dim + pi
    }
    fn bc_index(&self, row: usize, t: usize, h: usize, n: usize) -> usize {
        let d = self.p.dims;
        ((row * d.seqlen + t) * d.groups + d.group_of(h)) * d.d_state + n
    }
    fn lin(&self, v: f64) -> f64 {
        if self.mag {
            v.abs()
        } else {
            v
        }
    }
    fn x(&self, row: usize, t: usize, h: usize, pi: usize) -> f64 {
        self.lin(self.p.x[self.x_index(row, t, h, pi)].to_f64())
    }
    fn b(&self, row: usize, t: usize, h: usize, n: usize) -> f64 {
        self.lin(self.p.b[self.bc_index(row, t, h, n)].to_f64())
    }
    fn c(&self, row: usize, t: usize, h: usize, n: usize) -> f64 {
        self.lin(self.p.c[self.bc_index(row, t, h, n)].to_f64())
    }
    fn skip(&self, h: usize, pi: usize) -> f64 {
        self.lin(
            self.p
                .d
                .map_or(0.0, |d| f64::from(d.get(self.p.dims.head_dim, h, pi))),
        )
    }
    /// `A_h` where it multiplies a gradient (not inside a decay).
    fn rate(&self, h: usize) -> f64 {
        self.lin(f64::from(self.p.a[h]))
    }
    /// A state row (initial state or final-state gradient), f32, widened.
    fn state_row(&self, dst: &mut [f64], src: Option<&[f32]>, row: usize) {
        load_initial_state(dst, src, row);
        if self.mag {
            dst.iter_mut().for_each(|v| *v = v.abs());
        }
    }
    /// `(dy, dz)` at one output element whose pre-gate value is `y`:
    /// `out = y silu(z)` gives `dy = d_out silu(z)`, `dz = d_out y silu'(z)`.
    fn gate_grad(&self, row: usize, t: usize, h: usize, pi: usize, y: f64) -> (f64, f64) {
        let i = self.x_index(row, t, h, pi);
        let g = self.d_out[i].to_f64();
        let (dy, dz) = match self.p.z {
            Some(z) => {
                let z = z[i].to_f64();
                // The magnitude sweep takes silu' as its sum of absolute terms.
                let gate = if self.mag {
                    silu_grad_magnitude(z)
                } else {
                    silu_grad(z)
                };
                (g * silu(z), g * y * gate)
            }
            None => (g, 0.0),
        };
        (self.lin(dy), self.lin(dz))
    }
}

#[cfg(test)]
mod tests;
