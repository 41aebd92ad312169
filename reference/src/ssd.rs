//! Mamba-2 SSD in two independent forms (docs/DESIGN.md §1.2, layouts §2).
//!
//! * [`ssd_recurrence`]: the state-space recurrence, one token at a time,
//!   `S_t = exp(a_t) S_{t-1} + dt'_t x_t B_t^T`, `y_t = S_t C_t + D x_t`, with
//!   `a_t = dt'_t A_h` and `dt'` from the shared `ssm_core::math::ssd_dt`.
//! * [`ssd_quadratic`]: the dual "masked attention" form, which carries no
//!   state over t:
//!
//!   ```text
//!   y_i = sum_{j<=i} (C_i . B_j) exp(seg(i,j)) dt'_j x_j + exp(seg(i,-1)) S_0 C_i + D x_i
//!   S_L = sum_j exp(seg(L-1,j)) dt'_j x_j B_j^T + exp(seg(L-1,-1)) S_0
//!   seg(i,j) = sum_{k=j+1..i} a_k          (positions inside one sequence)
//!   ```
//!
//! Why they are trustworthy: both are the definitions, evaluated naively in f64
//! from exactly widened inputs. The recurrence exponentiates one step at a time.
//! The quadratic form sums each segment `seg(i,j)` directly from its own terms
//! (the "stable segsum" of ssd_minimal.py) instead of subtracting two long
//! prefix sums, and only ever evaluates `j <= i`, so the causal mask is applied
//! before any exp and nothing is divided. Sharing nothing but the input
//! accessors, the two forms check each other (their agreement is tested to a
//! relative L2 of 1e-12 below), and a chunked kernel sits between them.

use ssm_core::mamba2::{SsdDims, SsdParams};
use ssm_core::{Element, Result, ScanOutput};

use rayon::prelude::*;

use crate::sequence::{gate, load_initial_state, sequences, Sequence};

/// The SSD recurrence `S_t = exp(a_t) S_{t-1} + dt'_t x_t B_t^T`, `y_t = S_t C_t + D x_t`, gated by z.
/// `out` is `(b, L, H, P)`; final states `(b or num_seqs, H, P, N)` when requested.
pub fn ssd_recurrence<T: Element>(p: &SsdParams<'_, T>) -> Result<ScanOutput<f64, f64>> {
    let layout = p.validate()?;
    let io = Inputs { p };
    let (batch, seqlen, heads) = (p.dims.batch, p.dims.seqlen, p.dims.heads);
    let (head_dim, d_state) = (p.dims.head_dim, p.dims.d_state);

    let state_len = head_dim * d_state;
    // Every (sequence, head) is independent: run them in parallel (rayon), each
    // returning its final state and its outputs in (t, p) order, then place them.
    let tasks: Vec<(Sequence, usize)> = sequences(batch, seqlen, p.cu_seqlens)
        .into_iter()
        .flat_map(|seq| (0..heads).map(move |h| (seq, h)))
        .collect();
    let results: Vec<(Vec<f64>, Vec<f64>)> = tasks
        .par_iter()
        .map(|&(seq, h)| {
            let mut state = vec![0.0; state_len];
            load_initial_state(&mut state, p.initial_states, seq.state * heads + h);
            let a = f64::from(p.a[h]);
            let mut ys = Vec::with_capacity(seq.len() * head_dim);
            for t in seq.positions() {
                let dt = p.dt_at(seq.row, t, h);
                let decay = (dt * a).exp();
                for (pi, s_row) in state.chunks_exact_mut(d_state).enumerate() {
                    let x = io.x(seq.row, t, h, pi);
                    let mut y = 0.0;
                    for (n, s) in s_row.iter_mut().enumerate() {
                        *s = decay * *s + dt * x * io.b(seq.row, t, h, n);
                        y += *s * io.c(seq.row, t, h, n);
                    }
                    y += io.skip(h, pi) * x;
                    ys.push(gate(y, io.z(seq.row, t, h, pi)));
                }
            }
            (state, ys)
        })
        .collect();

    let mut out = vec![0.0; batch * seqlen * heads * head_dim];
    let mut states = vec![0.0; layout.num_seqs * heads * state_len];
    for (&(seq, h), (state, ys)) in tasks.iter().zip(results) {
        let block = seq.state * heads + h;
        states[block * state_len..(block + 1) * state_len].copy_from_slice(&state);
        for (t, y_t) in seq.positions().zip(ys.chunks_exact(head_dim)) {
            for (pi, &y) in y_t.iter().enumerate() {
                out[io.x_index(seq.row, t, h, pi)] = y;
            }
        }
    }

    Ok(ScanOutput {
        out,
        final_states: p.return_final_states.then_some(states),
    })
}

/// The quadratic form, computed independently of the recurrence (see the module docs).
/// Cost `O(L^2 (N + P))` per (sequence, head): an oracle for test sizes only.
pub fn ssd_quadratic<T: Element>(p: &SsdParams<'_, T>) -> Result<ScanOutput<f64, f64>> {
    let layout = p.validate()?;
    let io = Inputs { p };
    let (batch, seqlen, heads) = (p.dims.batch, p.dims.seqlen, p.dims.heads);
    let (head_dim, d_state) = (p.dims.head_dim, p.dims.d_state);
    let state_size = head_dim * d_state;

    let mut out = vec![0.0; batch * seqlen * heads * head_dim];
    let mut final_states = vec![0.0; layout.num_seqs * heads * state_size];
    let mut s0 = vec![0.0; state_size];

    for seq in sequences(batch, seqlen, p.cu_seqlens) {
        for h in 0..heads {
            let block = seq.state * heads + h;
            load_initial_state(&mut s0, p.initial_states, block);
            let dts: Vec<f64> = seq.positions().map(|t| p.dt_at(seq.row, t, h)).collect();
            let log_decays: Vec<f64> = dts.iter().map(|&dt| dt * f64::from(p.a[h])).collect();
            let head = Head {
                io: &io,
                seq,
                h,
                dts: &dts,
                log_decays: &log_decays,
                s0: &s0,
            };
            for i in 0..seq.len() {
                head.output_at(i, &mut out);
            }
            if p.return_final_states {
                head.final_state(&mut final_states[block * state_size..(block + 1) * state_size]);
            }
        }
    }

    Ok(ScanOutput {
        out,
        final_states: p.return_final_states.then_some(final_states),
    })
}

/// One (sequence, head) of the quadratic form. Positions `i, j` count from the
/// start of the sequence; `dts[j]` is `dt'_j` and `log_decays[j]` is `a_j`.
struct Head<'a, 'p, T> {
    io: &'a Inputs<'a, 'p, T>,
    seq: Sequence,
    h: usize,
    dts: &'a [f64],
    log_decays: &'a [f64],
    s0: &'a [f64],
}

impl<T: Element> Head<'_, '_, T> {
    /// `out_i = (sum_{j<=i} (C_i . B_j) exp(seg(i,j)) dt'_j x_j + exp(s_i) S_0 C_i + D x_i) * silu(z_i)`.
    fn output_at(&self, i: usize, out: &mut [f64]) {
        let Inputs { p } = *self.io;
        let SsdDims {
            head_dim, d_state, ..
        } = p.dims;
        let (row, h) = (self.seq.row, self.h);
        let ti = self.seq.start + i;

        let mut y = vec![0.0; head_dim];
        // seg = seg(i, j) = sum_{k=j+1..i} a_k, grown one term at a time as j
        // walks back from i: each segment is summed from its own terms.
        let mut seg = 0.0f64;
        for j in (0..=i).rev() {
            let tj = self.seq.start + j;
            let cb: f64 = (0..d_state)
                .map(|n| self.io.c(row, ti, h, n) * self.io.b(row, tj, h, n))
                .sum();
            let weight = cb * seg.exp() * self.dts[j];
            for (pi, y_p) in y.iter_mut().enumerate() {
                *y_p += weight * self.io.x(row, tj, h, pi);
            }
            seg += self.log_decays[j];
        }
        // After the loop seg = sum_{k=0..i} a_k = s_i, the decay of the initial state.
        let s0_decay = seg.exp();

        for (pi, y_p) in y.iter_mut().enumerate() {
            let s0_row = &self.s0[pi * d_state..(pi + 1) * d_state];
            let s0_c: f64 = s0_row
                .iter()
                .enumerate()
                .map(|(n, s)| s * self.io.c(row, ti, h, n))
                .sum();
            let x = self.io.x(row, ti, h, pi);
            let value = *y_p + s0_decay * s0_c + self.io.skip(h, pi) * x;
            out[self.io.x_index(row, ti, h, pi)] = gate(value, self.io.z(row, ti, h, pi));
        }
    }

    /// `S_L = sum_j exp(seg(L-1,j)) dt'_j x_j B_j^T + exp(s_{L-1}) S_0`.
    fn final_state(&self, state: &mut [f64]) {
        let d_state = self.io.p.dims.d_state;
        let (row, h) = (self.seq.row, self.h);
        state.fill(0.0);
        let mut seg = 0.0f64; // seg(L-1, j), grown as j walks back from the last position
        for j in (0..self.seq.len()).rev() {
            let tj = self.seq.start + j;
            let weight = seg.exp() * self.dts[j];
            for (pi, s_row) in state.chunks_exact_mut(d_state).enumerate() {
                let wx = weight * self.io.x(row, tj, h, pi);
                for (n, s) in s_row.iter_mut().enumerate() {
                    *s += wx * self.io.b(row, tj, h, n);
                }
            }
            seg += self.log_decays[j];
        }
        let s0_decay = seg.exp();
        for (s, s0) in state.iter_mut().zip(self.s0) {
            *s += s0_decay * s0;
        }
    }
}

/// Element accessors in the token-major layouts, widened to f64. Shared by both
/// forms: they fix where a value lives, not what is computed with it.
struct Inputs<'a, 'p, T> {
    p: &'a SsdParams<'p, T>,
}

impl<T: Element> Inputs<'_, '_, T> {
    /// Index into `x`, `z` and `out`, all `(b, L, H, P)`.
    fn x_index(&self, row: usize, t: usize, h: usize, pi: usize) -> usize {
        let (seqlen, heads) = (self.p.dims.seqlen, self.p.dims.heads);
        let head_dim = self.p.dims.head_dim;
        ((row * seqlen + t) * heads + h) * head_dim + pi
    }

    /// Index into `B` and `C`, both `(b, L, G, N)`, for head `h` (its group).
    fn bc_index(&self, row: usize, t: usize, h: usize, n: usize) -> usize {
        let dims = self.p.dims;
        ((row * dims.seqlen + t) * dims.groups + dims.group_of(h)) * dims.d_state + n
    }

    fn x(&self, row: usize, t: usize, h: usize, pi: usize) -> f64 {
        self.p.x[self.x_index(row, t, h, pi)].to_f64()
    }

    fn z(&self, row: usize, t: usize, h: usize, pi: usize) -> Option<f64> {
        self.p.z.map(|z| z[self.x_index(row, t, h, pi)].to_f64())
    }

    fn b(&self, row: usize, t: usize, h: usize, n: usize) -> f64 {
        self.p.b[self.bc_index(row, t, h, n)].to_f64()
    }

    fn c(&self, row: usize, t: usize, h: usize, n: usize) -> f64 {
        self.p.c[self.bc_index(row, t, h, n)].to_f64()
    }

    /// The skip coefficient `D` for (head, head-dim index), zero when absent.
    fn skip(&self, h: usize, pi: usize) -> f64 {
        self.p
            .d
            .map_or(0.0, |d| f64::from(d.get(self.p.dims.head_dim, h, pi)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        assert_close, assert_continues, empty_ssd, to_f32, widen_f32, SsdProblem,
    };
    use ssm_core::mamba2::DSkip;
    use std::f64::consts::LN_2;

    /// Both forms, checked against the same expectation.
    fn both_forms(p: &SsdParams<'_, f64>) -> [ScanOutput<f64, f64>; 2] {
        [ssd_recurrence(p).unwrap(), ssd_quadratic(p).unwrap()]
    }

    /// L = 1 by hand. Head 0: softplus(0.25 - 0.25) = ln 2 and A = -1 give decay 1/2.
    /// Head 1: softplus(30) = 30 is clamped to dt_max = 1, decay e^-1.
    #[test]
    fn one_step_matches_the_closed_form() {
        let x = [2.0, -1.0, 1.0, 0.5]; // (b=1, L=1, H=2, P=2)
        let dt = [0.25, 30.0];
        let bias = [-0.25f32, 0.0];
        let a = [-1f32, -1.0];
        let b = [1.0, -1.0]; // (b=1, L=1, G=1, N=2)
        let c = [1.0, 0.5];
        let d = [0.25f32, 0.0, 0.0, -1.0]; // (H, P)
        let s0 = [4f32, 2.0, 1.0, -1.0, 0.0, 0.0, 2.0, 2.0]; // (b=1, H=2, P=2, N=2)
        let p = SsdParams::new(SsdDims::new(1, 1, 2, 2, 2, 1), &x, &dt, &a, &b, &c)
            .with_dt_bias(&bias)
            .with_dt_softplus(true)
            .with_dt_limit(0.0, 1.0)
            .with_d(DSkip::PerHeadDim(&d))
            .with_initial_states(&s0)
            .with_final_states(true);

        let e = (-1f64).exp();
        // S = decay * S0 + dt * x B^T, row p of head h holds S[h, p, :]
        let s = [
            2.0 + 2.0 * LN_2,
            1.0 - 2.0 * LN_2,
            0.5 - LN_2,
            -0.5 + LN_2,
            1.0,
            -1.0,
            2.0 * e + 0.5,
            2.0 * e - 0.5,
        ];
        // y = S C + D x
        let y: Vec<f64> = (0..4)
            .map(|hp| s[2 * hp] + 0.5 * s[2 * hp + 1] + f64::from(d[hp]) * x[hp])
            .collect();
        assert_eq!(y[0], 2.0 + 2.0 * LN_2 + 0.5 - LN_2 + 0.5); // spelled out once
        for got in both_forms(&p) {
            assert_close("out", &got.out, &y, 1e-15);
            assert_close("final", got.final_states.as_deref().unwrap(), &s, 1e-15);
        }
    }

    /// H = P = N = 1, dt' = 1, B = C = 1, an impulse input and S0 = 2:
    /// y_t = 2 r^(t+1) + r^t with r = e^-0.5, gated by z.
    #[test]
    fn scalar_state_decays_geometrically() {
        let len = 12;
        let mut x = vec![0.0; len];
        x[0] = 1.0;
        let dt = vec![1.0; len];
        let ones = vec![1.0; len];
        let z = vec![3.0; len];
        let (a, s0) = ([-0.5f32], [2f32]);
        let p = SsdParams::new(SsdDims::new(1, len, 1, 1, 1, 1), &x, &dt, &a, &ones, &ones)
            .with_z(&z)
            .with_initial_states(&s0)
            .with_final_states(true);
        let r = (-0.5f64).exp();
        let silu3 = ssm_core::math::silu(3.0);
        let want: Vec<f64> = (0..len as i32)
            .map(|t| 2.0 * r.powi(t + 1) + r.powi(t))
            .collect();
        let gated: Vec<f64> = want.iter().map(|y| y * silu3).collect();
        for got in both_forms(&p) {
            assert_close("out", &got.out, &gated, 1e-14);
            assert_close("final", &got.final_states.unwrap(), &want[len - 1..], 1e-14);
        }
    }

    /// The two forms share no arithmetic beyond reading inputs; they must agree
    /// to f64 rounding on every option combination.
    #[test]
    fn quadratic_form_equals_recurrence() {
        let cases = [
            // (seed, dims, varlen offsets)
            (1, SsdDims::new(2, 7, 4, 3, 5, 2), None),
            (
                2,
                SsdDims::new(1, 13, 4, 2, 3, 4),
                Some(vec![0i64, 1, 1, 6, 13]),
            ),
            (3, SsdDims::new(3, 9, 2, 4, 7, 1), None),
            (4, SsdDims::new(1, 16, 6, 2, 2, 3), Some(vec![0, 16])),
        ];
        for (seed, dims, cu) in cases {
            let state_rows = cu.as_ref().map_or(dims.batch, |cu| cu.len() - 1);
            let problem = SsdProblem::random(seed, dims, state_rows);
            let full = problem.params();
            let plain = SsdParams::new(
                dims,
                &problem.x,
                &problem.dt,
                &problem.a,
                &problem.b,
                &problem.c,
            )
            .with_final_states(true);
            let per_head_d = DSkip::PerHead(&problem.d[..dims.heads]);
            for p in [
                full,
                plain,
                full.with_d(per_head_d).with_dt_limit(0.0, f32::INFINITY),
            ] {
                let p = match &cu {
                    Some(cu) => p.with_cu_seqlens(cu),
                    None => p,
                };
                let [rec, quad] = both_forms(&p);
                assert_close(&format!("seed {seed} out"), &quad.out, &rec.out, 1e-12);
                let finals = (quad.final_states.unwrap(), rec.final_states.unwrap());
                assert_close(&format!("seed {seed} final"), &finals.0, &finals.1, 1e-12);
            }
        }
    }

    /// dt up to 10 with A = -30 drives the prefix sums s_t to about -3e4: exp(s_t)
    /// underflows to 0, so a form dividing cumulative products would give 0/0.
    /// Segment sums keep the quadratic form finite and equal to the recurrence.
    #[test]
    fn strong_decay_stays_finite() {
        let mut problem = SsdProblem::random(5, SsdDims::new(1, 64, 2, 2, 3, 1), 1);
        problem.a = vec![-30.0, -0.01];
        problem.dt = problem.dt.iter().map(|dt| dt + 8.0).collect(); // softplus -> about 4..9
        problem.dt_limit = (0.0, 10.0);
        let [rec, quad] = both_forms(&problem.params());
        assert_close("out", &quad.out, &rec.out, 1e-12);
        assert_close(
            "final",
            quad.final_states.as_deref().unwrap(),
            rec.final_states.as_deref().unwrap(),
            1e-12,
        );
    }

    /// Each varlen sequence (including an empty and a length-1 one) equals a
    /// separate run from its own initial state; batch rows likewise.
    #[test]
    fn varlen_sequences_and_batch_rows_equal_separate_runs() {
        let cu = [0i64, 3, 3, 4, 9];
        let problem = SsdProblem::random(6, SsdDims::new(1, 9, 4, 2, 3, 2), 4);
        let state = 4 * 2 * 3;
        let token = 4 * 2;
        for form in [ssd_recurrence::<f64>, ssd_quadratic::<f64>] {
            let packed = form(&problem.params().with_cu_seqlens(&cu)).unwrap();
            let finals = packed.final_states.unwrap();
            for (s, w) in cu.windows(2).enumerate() {
                let (start, end) = (w[0] as usize, w[1] as usize);
                let alone = form(&problem.window(0, start, end, s).params()).unwrap();
                assert_eq!(
                    &packed.out[start * token..end * token],
                    &alone.out[..],
                    "sequence {s}"
                );
                let alone_final = alone.final_states.unwrap();
                assert_eq!(
                    &finals[s * state..(s + 1) * state],
                    &alone_final[..],
                    "sequence {s} final"
                );
            }
            assert_eq!(
                &finals[state..2 * state],
                &widen_f32(&problem.h0[state..2 * state])[..]
            );

            let batched = SsdProblem::random(7, SsdDims::new(3, 5, 4, 2, 3, 2), 3);
            let all = form(&batched.params()).unwrap();
            for row in 0..3 {
                let alone = form(&batched.window(row, 0, 5, row).params()).unwrap();
                assert_eq!(
                    &all.out[row * 5 * token..(row + 1) * 5 * token],
                    &alone.out[..],
                    "row {row}"
                );
            }
        }
    }

    /// Running the second half from the first half's final state (rounded to f32,
    /// as initial states are) continues the full run.
    #[test]
    fn final_state_resumes_the_run() {
        let problem = SsdProblem::random(8, SsdDims::new(1, 10, 2, 3, 4, 1), 1);
        let token = 2 * 3;
        for form in [ssd_recurrence::<f64>, ssd_quadratic::<f64>] {
            let full = form(&problem.params()).unwrap();
            let first = form(&problem.window(0, 0, 4, 0).params()).unwrap();
            let mut second = problem.window(0, 4, 10, 0);
            second.h0 = to_f32(first.final_states.as_deref().unwrap());
            let second = form(&second.params()).unwrap();
            assert_continues(&second, &full.out[4 * token..], &full);
        }
    }

    #[test]
    fn empty_input_returns_initial_states() {
        let s0 = [1.5f32, -2.0];
        let p = empty_ssd();
        let cu = [0i64, 0];
        for form in [ssd_recurrence::<f64>, ssd_quadratic::<f64>] {
            let got = form(&p).unwrap();
            assert!(got.out.is_empty());
            assert_eq!(got.final_states.unwrap(), vec![0.0, 0.0]);
            let got = form(&p.with_initial_states(&s0).with_cu_seqlens(&cu)).unwrap();
            assert_eq!(got.final_states.unwrap(), vec![1.5, -2.0]);
        }
    }

    /// Half-precision inputs are widened exactly: the same values given as f64
    /// give bit-identical results.
    #[test]
    fn half_inputs_are_widened_exactly() {
        use half::f16;
        let problem = SsdProblem::random(9, SsdDims::new(2, 5, 2, 2, 3, 1), 2);
        let round = |xs: &[f64]| xs.iter().map(|&x| f16::from_f64(x)).collect::<Vec<_>>();
        let widen = |xs: &[f16]| xs.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
        let (x, dt, b, c, z) = (
            round(&problem.x),
            round(&problem.dt),
            round(&problem.b),
            round(&problem.c),
            round(&problem.z),
        );
        let exact = SsdProblem {
            x: widen(&x),
            dt: widen(&dt),
            b: widen(&b),
            c: widen(&c),
            z: widen(&z),
            ..problem.clone()
        };
        let half_params = SsdParams::new(problem.dims, &x, &dt, &problem.a, &b, &c)
            .with_dt_bias(&problem.dt_bias)
            .with_dt_softplus(true)
            .with_dt_limit(problem.dt_limit.0, problem.dt_limit.1)
            .with_d(DSkip::PerHeadDim(&problem.d))
            .with_z(&z)
            .with_initial_states(&problem.h0)
            .with_final_states(true);
        let exact = exact.params();
        assert_eq!(
            ssd_recurrence(&half_params).unwrap(),
            ssd_recurrence(&exact).unwrap()
        );
        assert_eq!(
            ssd_quadratic(&half_params).unwrap(),
            ssd_quadratic(&exact).unwrap()
        );
    }

    #[test]
    fn final_states_only_when_asked() {
        let problem = SsdProblem::random(10, SsdDims::new(1, 3, 1, 1, 1, 1), 1);
        let p = problem.params().with_final_states(false);
        assert!(ssd_recurrence(&p).unwrap().final_states.is_none());
        assert!(ssd_quadratic(&p).unwrap().final_states.is_none());
    }
}
