//! Mamba-1 selective scan (S6), sequential over t (docs/DESIGN.md §1.1, layouts §2).
//!
//! For every sequence, channel `d` and state index `n`:
//!
//! ```text
//! dt      = scan_dt(delta[d,t], delta_bias[d], delta_softplus)
//! h[d,n]  = exp(dt * A[d,n]) * h[d,n] + dt * B[g(d),n,t] * u[d,t]
//! y[d,t]  = sum_n C[g(d),n,t] * h[d,n] + D[d] * u[d,t]
//! out     = y * silu(z[d,t])
//! ```
//!
//! Why it is trustworthy: it is the definition, one step at a time, with no
//! blocking, no reordering and no shortcuts; every value is widened exactly to
//! f64 and the step size goes through the shared `ssm_core::math::scan_dt`.
//! Each step exponentiates a single `dt * A`, so there are no cumulative sums
//! whose rounding could grow with L.

use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::math::scan_dt;
use ssm_core::{Element, Result, ScanOutput};

use rayon::prelude::*;

use crate::sequence::{gate, load_initial_state, sequence_channels};

/// Naive f64 selective scan with every option of docs/DESIGN.md §1.1.
/// `out` is `(b, D_in, L)`; final states `(b or num_seqs, D_in, N)` when requested.
pub fn selective_scan<T: Element>(p: &SelectiveScanParams<'_, T>) -> Result<ScanOutput<f64, f64>> {
    let layout = p.validate()?;
    let (batch, d_inner, d_state) = (p.dims.batch, p.dims.d_inner, p.dims.d_state);
    let seqlen = p.dims.seqlen;

    // Every (sequence, channel) is independent: run them in parallel (rayon), each
    // returning its final state and its outputs, then place them.
    let tasks = sequence_channels(batch, seqlen, d_inner, p.cu_seqlens);
    let results: Vec<(Vec<f64>, Vec<f64>)> = tasks
        .par_iter()
        .map(|&(seq, d)| {
            let mut h = vec![0.0; d_state];
            // Initial states are (seqs, D_in, N): rows of N values indexed by (seq, d).
            load_initial_state(&mut h, p.initial_states, seq.state * d_inner + d);

            // u, delta, z and out share the (b, D_in, L) layout.
            let channel_at = (seq.row * d_inner + d) * seqlen;
            let bias = p.delta_bias.map_or(0.0, |bias| f64::from(bias[d]));
            let skip = p.d.map_or(0.0, |skip| f64::from(skip[d]));
            let a_row = &p.a[d * d_state..(d + 1) * d_state];
            let mut ys = Vec::with_capacity(seq.len());
            for t in seq.positions() {
                let u = p.u[channel_at + t].to_f64();
                let dt = scan_dt(p.delta[channel_at + t].to_f64(), bias, p.delta_softplus);
                let mut y = 0.0;
                for (n, (h_n, &a)) in h.iter_mut().zip(a_row).enumerate() {
                    let b = bc_value(&p.b, p.dims, seq.row, d, n, t);
                    let c = bc_value(&p.c, p.dims, seq.row, d, n, t);
                    *h_n = (dt * f64::from(a)).exp() * *h_n + dt * b * u;
                    y += c * *h_n;
                }
                y += skip * u;
                ys.push(gate(y, p.z.map(|z| z[channel_at + t].to_f64())));
            }
            (h, ys)
        })
        .collect();

    let mut out = vec![0.0; batch * d_inner * seqlen];
    let mut states = vec![0.0; layout.num_seqs * d_inner * d_state];
    for (&(seq, d), (h, ys)) in tasks.iter().zip(results) {
        let state_at = (seq.state * d_inner + d) * d_state;
        states[state_at..state_at + d_state].copy_from_slice(&h);
        let channel_at = (seq.row * d_inner + d) * seqlen;
        out[channel_at + seq.start..channel_at + seq.end].copy_from_slice(&ys);
    }

    Ok(ScanOutput {
        out,
        final_states: p.return_final_states.then_some(states),
    })
}

/// B or C at (batch row, channel, state index, position), widened to f64; the
/// backward oracle reads them through the same indexing.
pub(crate) fn bc_value<T: Element>(
    bc: &BcInput<'_, T>,
    dims: Mamba1Dims,
    row: usize,
    d: usize,
    n: usize,
    t: usize,
) -> f64 {
    let (d_inner, d_state, seqlen) = (dims.d_inner, dims.d_state, dims.seqlen);
    match *bc {
        BcInput::Grouped { groups, data } => {
            let g = SelectiveScanParams::<T>::group_of(bc, d_inner, d);
            data[((row * groups + g) * d_state + n) * seqlen + t].to_f64()
        }
        BcInput::Constant(data) => data[d * d_state + n].to_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, assert_continues, widen_f32, Mamba1Problem};
    use ssm_core::SsmError;
    use std::f64::consts::LN_2;

    fn dims(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Mamba1Dims {
        Mamba1Dims::new(batch, d_inner, d_state, seqlen)
    }

    /// L = 1 by hand: softplus(0.5 - 0.5) = ln 2 and A = -1 make the decay 1/2.
    #[test]
    fn one_step_matches_the_closed_form() {
        let u = [2.0, -1.0]; // (b=1, D_in=2, L=1)
        let delta = [0.5, 0.5];
        let bias = [-0.5f32, -0.5];
        let a = [-1f32; 4];
        // (b=1, G=2, N=2, L=1): channel d uses group d.
        let b = [1.0, -1.0, 0.5, 2.0];
        let c = [1.0, 0.5, -2.0, 1.0];
        let d = [0.25f32, 0.0];
        let ln_3 = 3f64.ln();
        let z = [ln_3, 0.0]; // silu(ln 3) = 0.75 ln 3; channel 1 is gated to zero
        let h0 = [4f32, 2.0, 1.0, -1.0];
        let bc = |data| BcInput::Grouped { groups: 2, data };
        let p = SelectiveScanParams::new(dims(1, 2, 2, 1), &u, &delta, &a, bc(&b), bc(&c))
            .with_delta_bias(&bias)
            .with_delta_softplus(true)
            .with_d(&d)
            .with_z(&z)
            .with_initial_states(&h0)
            .with_final_states(true);
        let got = selective_scan(&p).unwrap();

        // h = h0 / 2 + ln2 * B * u
        let h = [
            2.0 + 2.0 * LN_2,
            1.0 - 2.0 * LN_2,
            0.5 - 0.5 * LN_2,
            -0.5 - 2.0 * LN_2,
        ];
        let y0 = h[0] + 0.5 * h[1] + 0.25 * 2.0; // = 3 + ln 2
        let want_out = [y0 * 0.75 * ln_3, 0.0];
        assert_close("out", &got.out, &want_out, 1e-15);
        assert_close("final", got.final_states.as_deref().unwrap(), &h, 1e-15);
    }

    /// N = 1, dt = 1, B = C = 1, an impulse input and h0 = 2: y_t = 2 r^(t+1) + r^t, r = e^-0.5.
    #[test]
    fn scalar_state_decays_geometrically() {
        let len = 12;
        let mut u = vec![0.0; len];
        u[0] = 1.0;
        let delta = vec![1.0; len];
        let (a, one) = ([-0.5f32], [1.0]);
        let h0 = [2f32];
        let p = SelectiveScanParams::new(
            dims(1, 1, 1, len),
            &u,
            &delta,
            &a,
            BcInput::Constant(&one),
            BcInput::Constant(&one),
        )
        .with_initial_states(&h0)
        .with_final_states(true);
        let got = selective_scan(&p).unwrap();
        let r = (-0.5f64).exp();
        let want: Vec<f64> = (0..len as i32)
            .map(|t| 2.0 * r.powi(t + 1) + r.powi(t))
            .collect();
        assert_close("out", &got.out, &want, 1e-14);
        assert_close("final", &got.final_states.unwrap(), &want[len - 1..], 1e-14);
    }

    /// y and h are linear in h0, which enters as exp(sum_k dt_k A) h0.
    #[test]
    fn initial_state_enters_with_the_cumulative_decay() {
        let problem = Mamba1Problem::random(11, dims(2, 4, 3, 7), 2, 2);
        let with_h0 = selective_scan(&problem.params()).unwrap();
        let zero = Mamba1Problem {
            h0: vec![0.0; problem.h0.len()],
            ..problem.clone()
        };
        let without = selective_scan(&zero.params()).unwrap();

        let (batch, d_inner) = (problem.dims.batch, problem.dims.d_inner);
        let (d_state, seqlen) = (problem.dims.d_state, problem.dims.seqlen);
        let (mut want_out, mut want_final) = (Vec::new(), Vec::new());
        for row in 0..batch {
            for d in 0..d_inner {
                let g = d / (d_inner / problem.groups);
                let channel_at = (row * d_inner + d) * seqlen;
                let mut dt_sum = 0.0;
                for t in 0..seqlen {
                    let delta = problem.delta[channel_at + t] + f64::from(problem.delta_bias[d]);
                    dt_sum += ssm_core::math::softplus(delta);
                    let y: f64 = (0..d_state)
                        .map(|n| {
                            let decay = (dt_sum * f64::from(problem.a[d * d_state + n])).exp();
                            let c =
                                problem.c[((row * problem.groups + g) * d_state + n) * seqlen + t];
                            c * decay * f64::from(problem.h0[(row * d_inner + d) * d_state + n])
                        })
                        .sum();
                    want_out.push(y * ssm_core::math::silu(problem.z[channel_at + t]));
                }
                for n in 0..d_state {
                    let decay = (dt_sum * f64::from(problem.a[d * d_state + n])).exp();
                    want_final
                        .push(decay * f64::from(problem.h0[(row * d_inner + d) * d_state + n]));
                }
            }
        }
        let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>();
        assert_close(
            "out(h0) - out(0)",
            &diff(&with_h0.out, &without.out),
            &want_out,
            1e-12,
        );
        let finals = (with_h0.final_states.unwrap(), without.final_states.unwrap());
        assert_close(
            "final(h0) - final(0)",
            &diff(&finals.0, &finals.1),
            &want_final,
            1e-12,
        );
    }

    /// Scanning the second half from the first half's final state (rounded to
    /// f32, as initial states are) continues the full scan.
    #[test]
    fn final_state_resumes_the_scan() {
        let problem = Mamba1Problem::random(12, dims(1, 4, 5, 10), 4, 1);
        let full = selective_scan(&problem.params()).unwrap();
        let first = selective_scan(&problem.window(0, 0, 4, 0).params()).unwrap();
        let mut second = problem.window(0, 4, 10, 0);
        second.h0 = crate::test_support::to_f32(first.final_states.as_deref().unwrap());
        let second = selective_scan(&second.params()).unwrap();
        let tail: Vec<f64> = full
            .out
            .chunks(10)
            .flat_map(|ch| ch[4..].to_vec())
            .collect();
        assert_continues(&second, &tail, &full);
    }

    /// Each varlen sequence (including an empty and a length-1 one) equals a
    /// separate run from its own initial state; batch rows likewise.
    #[test]
    fn varlen_sequences_and_batch_rows_equal_separate_runs() {
        let cu = [0i64, 3, 3, 4, 9];
        let problem = Mamba1Problem::random(13, dims(1, 4, 3, 9), 2, 4);
        let packed = selective_scan(&problem.params().with_cu_seqlens(&cu)).unwrap();
        let finals = packed.final_states.unwrap();
        let state = 4 * 3;
        for (s, w) in cu.windows(2).enumerate() {
            let (start, end) = (w[0] as usize, w[1] as usize);
            let alone = selective_scan(&problem.window(0, start, end, s).params()).unwrap();
            let packed_out: Vec<f64> = packed
                .out
                .chunks(9)
                .flat_map(|ch| ch[start..end].to_vec())
                .collect();
            assert_eq!(packed_out, alone.out, "sequence {s} output");
            let alone_final = alone.final_states.unwrap();
            assert_eq!(
                &finals[s * state..(s + 1) * state],
                &alone_final[..],
                "sequence {s} final"
            );
        }
        // The empty sequence hands back its initial state unchanged.
        assert_eq!(
            &finals[state..2 * state],
            &widen_f32(&problem.h0[state..2 * state])[..]
        );

        let batched = Mamba1Problem::random(14, dims(3, 4, 3, 5), 1, 3);
        let all = selective_scan(&batched.params()).unwrap();
        for row in 0..3 {
            let alone = selective_scan(&batched.window(row, 0, 5, row).params()).unwrap();
            assert_eq!(
                &all.out[row * 20..(row + 1) * 20],
                &alone.out[..],
                "row {row}"
            );
        }
    }

    /// Constant B/C is grouped B/C with one group per channel, repeated over t.
    #[test]
    fn constant_bc_equals_grouped_bc_repeated_over_time() {
        let problem = Mamba1Problem::random(15, dims(1, 3, 4, 6), 3, 1);
        let repeat =
            |bc: &[f64]| -> Vec<f64> { (0..12).flat_map(|dn| vec![bc[dn * 6]; 6]).collect() };
        // Constant (D_in, N): take each channel's B/C from t = 0 of its own group.
        let constant_b: Vec<f64> = (0..12).map(|dn| problem.b[dn * 6]).collect();
        let constant_c: Vec<f64> = (0..12).map(|dn| problem.c[dn * 6]).collect();
        let grouped = Mamba1Problem {
            b: repeat(&problem.b),
            c: repeat(&problem.c),
            ..problem.clone()
        };
        let constant = SelectiveScanParams {
            b: BcInput::Constant(&constant_b),
            c: BcInput::Constant(&constant_c),
            ..problem.params()
        };
        let want = selective_scan(&grouped.params()).unwrap();
        assert_eq!(selective_scan(&constant).unwrap(), want);
    }

    #[test]
    fn empty_input_returns_initial_states() {
        let h0 = [1.5f32, -2.0];
        let (a, bc) = ([-1f32; 2], [0.0f64; 0]);
        let bc_in = || BcInput::Grouped {
            groups: 1,
            data: &bc,
        };
        let p = SelectiveScanParams::new(dims(1, 1, 2, 0), &bc, &bc, &a, bc_in(), bc_in())
            .with_final_states(true);
        let got = selective_scan(&p).unwrap();
        assert!(got.out.is_empty());
        assert_eq!(got.final_states.unwrap(), vec![0.0, 0.0]);
        let got = selective_scan(&p.with_initial_states(&h0)).unwrap();
        assert_eq!(got.final_states.unwrap(), vec![1.5, -2.0]);
        let cu = [0i64, 0];
        let got = selective_scan(&p.with_initial_states(&h0).with_cu_seqlens(&cu)).unwrap();
        assert_eq!(got.final_states.unwrap(), vec![1.5, -2.0]);
    }

    /// Half-precision inputs are widened exactly: the same values given as f64 give
    /// bit-identical results.
    #[test]
    fn half_inputs_are_widened_exactly() {
        use half::bf16;
        let problem = Mamba1Problem::random(16, dims(2, 4, 3, 5), 2, 2);
        let round = |xs: &[f64]| xs.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>();
        let (u, delta, b, c, z) = (
            round(&problem.u),
            round(&problem.delta),
            round(&problem.b),
            round(&problem.c),
            round(&problem.z),
        );
        let widen = |xs: &[bf16]| xs.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
        let exact = Mamba1Problem {
            u: widen(&u),
            delta: widen(&delta),
            b: widen(&b),
            c: widen(&c),
            z: widen(&z),
            ..problem.clone()
        };
        let bc = |data| BcInput::Grouped { groups: 2, data };
        let half_params =
            SelectiveScanParams::new(problem.dims, &u, &delta, &problem.a, bc(&b), bc(&c))
                .with_d(&problem.d)
                .with_z(&z)
                .with_delta_bias(&problem.delta_bias)
                .with_delta_softplus(true)
                .with_initial_states(&problem.h0)
                .with_final_states(true);
        assert_eq!(
            selective_scan(&half_params).unwrap(),
            selective_scan(&exact.params()).unwrap()
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let problem = Mamba1Problem::random(17, dims(1, 2, 2, 3), 1, 1);
        let bad = SelectiveScanParams {
            u: &problem.u[1..],
            ..problem.params()
        };
        assert!(matches!(
            selective_scan(&bad),
            Err(SsmError::Shape { arg: "u", .. })
        ));
    }
}
