//! Decode steps (docs/DESIGN.md §1.3) in f64; the state cache is updated in place.
//!
//! One token of each recurrence: Mamba-1 with state cache `(cache_rows, D_in, N)`,
//! Mamba-2 with `(cache_rows, H, P, N)`. Batch row `i` reads and writes cache row
//! `ssm_core::decode::cache_row(state_batch_indices, i)`; a padding row (negative
//! index) gets a zero output and touches no state.
//!
//! Why it is trustworthy: it is the same single update as the full recurrences in
//! [`crate::mamba1`] and [`crate::ssd`], written out once more for the step layouts
//! (tested equal to them when unrolled over a sequence), with the step sizes from
//! the shared `ssm_core::math` definitions and every input widened exactly.

use ssm_core::decode::{cache_row, Mamba1StepParams, Mamba2StepParams};
use ssm_core::math::{scan_dt, ssd_dt};
use ssm_core::{Element, Result, StepOutput};

use crate::sequence::gate;

/// One Mamba-1 step: `dt = scan_dt(dt + dt_bias)`, `h = exp(dt A) h + dt B x`,
/// `y = C . h + D x`, gated by z. Layouts: x, dt, z, out `(b, D_in)`; B, C `(b, G, N)`.
pub fn mamba1_step<T: Element>(
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f64],
) -> Result<StepOutput<f64>> {
    p.validate(state.len())?;
    let (d_inner, d_state, groups) = (p.d_inner, p.d_state, p.groups);
    let channels_per_group = d_inner / groups;
    let mut out = vec![0.0; p.batch * d_inner];

    for i in 0..p.batch {
        let Some(cache) = cache_row(p.state_batch_indices, i) else {
            continue; // padding: output stays zero, no state is touched
        };
        for d in 0..d_inner {
            let at = i * d_inner + d;
            let x = p.x[at].to_f64();
            let bias = p.dt_bias.map_or(0.0, |bias| f64::from(bias[d]));
            let dt = scan_dt(p.dt[at].to_f64(), bias, p.dt_softplus);
            let bc_at = (i * groups + d / channels_per_group) * d_state;
            let h =
                &mut state[(cache * d_inner + d) * d_state..(cache * d_inner + d + 1) * d_state];
            let mut y = 0.0;
            for (n, h_n) in h.iter_mut().enumerate() {
                let a = f64::from(p.a[d * d_state + n]);
                *h_n = (dt * a).exp() * *h_n + dt * p.b[bc_at + n].to_f64() * x;
                y += p.c[bc_at + n].to_f64() * *h_n;
            }
            y += p.d.map_or(0.0, |skip| f64::from(skip[d])) * x;
            out[at] = gate(y, p.z.map(|z| z[at].to_f64()));
        }
    }
    Ok(StepOutput { out })
}

/// One Mamba-2 step: `dt' = ssd_dt(dt, dt_bias, softplus, dt_limit)`,
/// `S = exp(dt' A_h) S + dt' x B^T`, `y = S C + D x`, gated by z.
/// Layouts: x, z, out `(b, H, P)`; dt `(b, H)`; B, C `(b, G, N)`.
pub fn mamba2_step<T: Element>(
    p: &Mamba2StepParams<'_, T>,
    state: &mut [f64],
) -> Result<StepOutput<f64>> {
    p.validate(state.len())?;
    let (heads, head_dim, d_state, groups) = (p.heads, p.head_dim, p.d_state, p.groups);
    let heads_per_group = heads / groups;
    let state_size = head_dim * d_state;
    let mut out = vec![0.0; p.batch * heads * head_dim];

    for i in 0..p.batch {
        let Some(cache) = cache_row(p.state_batch_indices, i) else {
            continue; // padding: output stays zero, no state is touched
        };
        for h in 0..heads {
            let bias = p.dt_bias.map_or(0.0, |bias| f64::from(bias[h]));
            let dt = ssd_dt(
                p.dt[i * heads + h].to_f64(),
                bias,
                p.dt_softplus,
                p.dt_limit,
            );
            let decay = (dt * f64::from(p.a[h])).exp();
            let bc_at = (i * groups + h / heads_per_group) * d_state;
            let block = cache * heads + h;
            let s = &mut state[block * state_size..(block + 1) * state_size];
            for (pi, s_row) in s.chunks_exact_mut(d_state).enumerate() {
                let at = (i * heads + h) * head_dim + pi;
                let x = p.x[at].to_f64();
                let mut y = 0.0;
                for (n, s_n) in s_row.iter_mut().enumerate() {
                    *s_n = decay * *s_n + dt * x * p.b[bc_at + n].to_f64();
                    y += *s_n * p.c[bc_at + n].to_f64();
                }
                y += p.d.map_or(0.0, |skip| f64::from(skip.get(head_dim, h, pi))) * x;
                out[at] = gate(y, p.z.map(|z| z[at].to_f64()));
            }
        }
    }
    Ok(StepOutput { out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, widen_f32, Mamba1Problem, SsdProblem};
    use crate::{selective_scan, ssd_recurrence};
    use ssm_core::mamba1::Mamba1Dims;
    use ssm_core::mamba2::{DSkip, SsdDims};

    /// Inputs of Mamba-1 step `t`, gathered from a channel-major sequence problem.
    struct Mamba1Token {
        x: Vec<f64>,
        dt: Vec<f64>,
        b: Vec<f64>,
        c: Vec<f64>,
        z: Vec<f64>,
    }

    impl Mamba1Token {
        fn at(problem: &Mamba1Problem, t: usize) -> Self {
            let seqlen = problem.dims.seqlen;
            // Every tensor is (b, lanes, L): step t takes element t of each lane.
            let column = |data: &[f64]| data.iter().skip(t).step_by(seqlen).copied().collect();
            Mamba1Token {
                x: column(&problem.u),
                dt: column(&problem.delta),
                b: column(&problem.b),
                c: column(&problem.c),
                z: column(&problem.z),
            }
        }

        fn params<'a>(&'a self, problem: &'a Mamba1Problem) -> Mamba1StepParams<'a, f64> {
            let Mamba1Dims {
                batch,
                d_inner,
                d_state,
                ..
            } = problem.dims;
            let mut p = Mamba1StepParams::new(
                batch,
                d_inner,
                d_state,
                problem.groups,
                &self.x,
                &self.dt,
                &problem.a,
                &self.b,
                &self.c,
            );
            p.d = Some(&problem.d);
            p.z = Some(&self.z);
            p.dt_bias = Some(&problem.delta_bias);
            p.dt_softplus = true;
            p
        }
    }

    /// Inputs of Mamba-2 step `t`, gathered from a token-major sequence problem.
    struct SsdToken {
        x: Vec<f64>,
        dt: Vec<f64>,
        b: Vec<f64>,
        c: Vec<f64>,
        z: Vec<f64>,
    }

    impl SsdToken {
        fn at(problem: &SsdProblem, t: usize) -> Self {
            let SsdDims {
                batch,
                seqlen,
                heads,
                head_dim,
                d_state,
                groups,
            } = problem.dims;
            // Every tensor is (b, L, width): step t takes block t of each batch row.
            let block = |data: &[f64], width: usize| -> Vec<f64> {
                (0..batch)
                    .flat_map(|row| {
                        data[(row * seqlen + t) * width..(row * seqlen + t + 1) * width].to_vec()
                    })
                    .collect()
            };
            SsdToken {
                x: block(&problem.x, heads * head_dim),
                dt: block(&problem.dt, heads),
                b: block(&problem.b, groups * d_state),
                c: block(&problem.c, groups * d_state),
                z: block(&problem.z, heads * head_dim),
            }
        }

        fn params<'a>(&'a self, problem: &'a SsdProblem) -> Mamba2StepParams<'a, f64> {
            let SsdDims {
                batch,
                heads,
                head_dim,
                d_state,
                groups,
                ..
            } = problem.dims;
            let mut p = Mamba2StepParams::new(
                batch, heads, head_dim, d_state, groups, &self.x, &self.dt, &problem.a, &self.b,
                &self.c,
            );
            p.d = Some(DSkip::PerHeadDim(&problem.d));
            p.z = Some(&self.z);
            p.dt_bias = Some(&problem.dt_bias);
            p.dt_softplus = true;
            p.dt_limit = problem.dt_limit;
            p
        }
    }

    /// Transpose (b, D_in, L) step outputs gathered as [t][b * D_in] into (b, D_in, L).
    fn channel_major(steps: &[Vec<f64>]) -> Vec<f64> {
        let lanes = steps[0].len();
        (0..lanes)
            .flat_map(|lane| steps.iter().map(move |s| s[lane]))
            .collect()
    }

    #[test]
    fn mamba1_steps_unrolled_equal_the_scan() {
        let dims = Mamba1Dims {
            batch: 3,
            d_inner: 4,
            d_state: 3,
            seqlen: 6,
        };
        let problem = Mamba1Problem::random(21, dims, 2, 3);
        let scan = selective_scan(&problem.params()).unwrap();

        let mut state = widen_f32(&problem.h0);
        let steps: Vec<Vec<f64>> = (0..dims.seqlen)
            .map(|t| {
                let token = Mamba1Token::at(&problem, t);
                mamba1_step(&token.params(&problem), &mut state)
                    .unwrap()
                    .out
            })
            .collect();
        assert_close("out", &channel_major(&steps), &scan.out, 1e-14);
        assert_close("state", &state, &scan.final_states.unwrap(), 1e-14);
    }

    #[test]
    fn mamba2_steps_unrolled_equal_the_recurrence() {
        let dims = SsdDims {
            batch: 2,
            seqlen: 7,
            heads: 4,
            head_dim: 3,
            d_state: 5,
            groups: 2,
        };
        let problem = SsdProblem::random(22, dims, 2);
        let full = ssd_recurrence(&problem.params()).unwrap();

        let mut state = widen_f32(&problem.h0);
        let token_size = dims.heads * dims.head_dim;
        let mut out = vec![0.0; full.out.len()];
        for t in 0..dims.seqlen {
            let token = SsdToken::at(&problem, t);
            let step = mamba2_step(&token.params(&problem), &mut state)
                .unwrap()
                .out;
            for (row, values) in step.chunks(token_size).enumerate() {
                let at = (row * dims.seqlen + t) * token_size;
                out[at..at + token_size].copy_from_slice(values);
            }
        }
        assert_close("out", &out, &full.out, 1e-14);
        assert_close("state", &state, &full.final_states.unwrap(), 1e-14);
    }

    /// `state_batch_indices = [2, -1, 0]` on a 4-row cache: row 1 is padding (zero
    /// output), cache rows 1 and 3 stay untouched, and rows 0 and 2 of the batch
    /// update cache rows 2 and 0 exactly as a cache of their own would.
    #[test]
    fn state_indices_route_rows_and_padding_touches_nothing() {
        let indices = [2i64, -1, 0];
        let dims = Mamba1Dims {
            batch: 3,
            d_inner: 2,
            d_state: 3,
            seqlen: 1,
        };
        let m1 = Mamba1Problem::random(23, dims, 1, 4);
        let token = Mamba1Token::at(&m1, 0);
        let mut routed = token.params(&m1);
        routed.cache_rows = 4;
        routed.state_batch_indices = Some(&indices);
        let row_size = 2 * 3;
        check_routing(
            &indices,
            row_size,
            widen_f32(&m1.h0),
            |state| mamba1_step(&routed, state).unwrap().out,
            |i, own| {
                let alone = m1.window(i, 0, 1, 0);
                let token = Mamba1Token::at(&alone, 0);
                mamba1_step(&token.params(&alone), own).unwrap().out
            },
        );

        let dims = SsdDims {
            batch: 3,
            seqlen: 1,
            heads: 2,
            head_dim: 2,
            d_state: 3,
            groups: 1,
        };
        let m2 = SsdProblem::random(24, dims, 4);
        let token = SsdToken::at(&m2, 0);
        let mut routed = token.params(&m2);
        routed.cache_rows = 4;
        routed.state_batch_indices = Some(&indices);
        let row_size = 2 * 2 * 3;
        check_routing(
            &indices,
            row_size,
            widen_f32(&m2.h0),
            |state| mamba2_step(&routed, state).unwrap().out,
            |i, own| {
                let alone = m2.window(i, 0, 1, 0);
                let token = SsdToken::at(&alone, 0);
                mamba2_step(&token.params(&alone), own).unwrap().out
            },
        );
    }

    /// Run `routed` on `cache`, then check every batch row against `alone(i, own_state)`,
    /// a batch-1 step of row `i` on a private copy of its cache row.
    fn check_routing(
        indices: &[i64],
        row_size: usize,
        cache: Vec<f64>,
        routed: impl Fn(&mut [f64]) -> Vec<f64>,
        alone: impl Fn(usize, &mut [f64]) -> Vec<f64>,
    ) {
        let mut updated = cache.clone();
        let out = routed(&mut updated);
        let out_size = out.len() / indices.len();
        let mut touched = vec![false; cache.len() / row_size];
        for (i, &index) in indices.iter().enumerate() {
            let out_i = &out[i * out_size..(i + 1) * out_size];
            if index < 0 {
                assert!(out_i.iter().all(|&v| v == 0.0), "padding row {i} output");
                continue;
            }
            let row = index as usize;
            touched[row] = true;
            let mut own = cache[row * row_size..(row + 1) * row_size].to_vec();
            let want = alone(i, &mut own);
            assert!(
                want.iter().any(|&v| v != 0.0),
                "row {i} output should not vanish"
            );
            assert_eq!(out_i, &want[..], "row {i} output");
            assert_eq!(
                &updated[row * row_size..(row + 1) * row_size],
                &own[..],
                "cache row {row}"
            );
        }
        for (row, _) in touched.iter().enumerate().filter(|(_, &t)| !t) {
            let span = row * row_size..(row + 1) * row_size;
            assert_eq!(
                &updated[span.clone()],
                &cache[span],
                "untouched cache row {row}"
            );
        }
    }

    #[test]
    fn bad_cache_is_an_error() {
        let dims = SsdDims {
            batch: 1,
            seqlen: 1,
            heads: 1,
            head_dim: 1,
            d_state: 2,
            groups: 1,
        };
        let m2 = SsdProblem::random(25, dims, 1);
        let token = SsdToken::at(&m2, 0);
        let mut short = vec![0.0; 1];
        assert!(mamba2_step(&token.params(&m2), &mut short).is_err());
    }
}
