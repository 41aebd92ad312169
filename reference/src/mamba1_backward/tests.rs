//! The adjoint against central finite differences of the f64 forward.
//!
//! The loss is `sum(w_out * out) + sum(w_final * final_states)` for random
//! weights, so its gradient is exactly what the backward returns for
//! `d_out = w_out`, `d_final_states = w_final`. Each input element is moved by
//! `+-h` and the loss recomputed with [`crate::selective_scan`].
//!
//! The f32 parameters (A, D, delta_bias, initial states) are drawn on a grid of
//! 2^-12 and moved by h = 2^-14, so that `x +- h` is exact in f32 and the
//! difference quotient is the symmetric one; f64 tensors use h = 1e-5. The
//! truncation error is then about h^2 |f'''| / 6 ~ 1e-10 and the rounding error
//! eps64 |loss| / h ~ 1e-11, far below the 1e-6 asked of every gradient.

use super::*;
use crate::selective_scan;
use crate::test_support::{rng, weighted_loss};
use rand::rngs::StdRng;
use rand::Rng;
use ssm_core::mamba1_grad::GRAD_NAMES;
use ssm_core::math::softplus;
use ssm_core::tolerance::compare;

/// f32 parameters live on this grid so that +- `F32_STEP` is exact.
const GRID: f64 = 4096.0;
const F32_STEP: f64 = 1.0 / 16384.0;
const F64_STEP: f64 = 1e-5;
/// Relative L2 error allowed between the adjoint and finite differences.
const FD_BUDGET: f64 = 1e-6;

#[derive(Clone, Debug)]
struct Options {
    b_groups: Option<usize>,
    c_groups: Option<usize>,
    d: bool,
    z: bool,
    bias: bool,
    softplus: bool,
    h0: bool,
    final_states: bool,
    cu: Option<Vec<i64>>,
}

impl Options {
    fn all(b_groups: Option<usize>, c_groups: Option<usize>) -> Self {
        Options {
            b_groups,
            c_groups,
            d: true,
            z: true,
            bias: true,
            softplus: true,
            h0: true,
            final_states: true,
            cu: None,
        }
    }

    fn none() -> Self {
        Options {
            d: false,
            z: false,
            bias: false,
            softplus: false,
            h0: false,
            final_states: false,
            ..Options::all(Some(1), Some(1))
        }
    }
}

#[derive(Clone, Debug)]
struct Problem {
    dims: Mamba1Dims,
    opts: Options,
    u: Vec<f64>,
    delta: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    z: Vec<f64>,
    a: Vec<f32>,
    d: Vec<f32>,
    bias: Vec<f32>,
    h0: Vec<f32>,
    /// The loss weights: `d_out` and `d_final_states`.
    w_out: Vec<f64>,
    w_final: Vec<f32>,
}

fn on_grid(rng: &mut StdRng, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..len)
        .map(|_| ((rng.random_range(lo..hi) * GRID).round() / GRID) as f32)
        .collect()
}

fn reals(rng: &mut StdRng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

impl Problem {
    fn random(seed: u64, dims: Mamba1Dims, opts: Options) -> Self {
        let mut r = rng(seed);
        let (batch, d_inner, d_state) = (dims.batch, dims.d_inner, dims.d_state);
        let seqlen = dims.seqlen;
        let bdl = batch * d_inner * seqlen;
        let bc_len =
            |g: Option<usize>| g.map_or(d_inner * d_state, |g| batch * g * d_state * seqlen);
        let rows = opts.cu.as_ref().map_or(batch, |cu| cu.len() - 1);
        // Pre-activations around softplus(-1.5) when softplus is on; positive
        // step sizes when it is off.
        let delta = (0..bdl)
            .map(|_| {
                let pre = r.random_range(-3.0..1.0);
                if opts.softplus {
                    pre
                } else {
                    softplus(pre)
                }
            })
            .collect();
        Problem {
            dims,
            u: reals(&mut r, bdl, -1.0, 1.0),
            delta,
            b: reals(&mut r, bc_len(opts.b_groups), -1.0, 1.0),
            c: reals(&mut r, bc_len(opts.c_groups), -1.0, 1.0),
            z: reals(&mut r, bdl, -2.0, 2.0),
            a: on_grid(&mut r, d_inner * d_state, -2.0, -0.1),
            d: on_grid(&mut r, d_inner, -1.0, 1.0),
            bias: on_grid(&mut r, d_inner, -0.5, 0.5),
            h0: on_grid(&mut r, rows * d_inner * d_state, -1.0, 1.0),
            w_out: reals(&mut r, bdl, -1.0, 1.0),
            w_final: on_grid(&mut r, rows * d_inner * d_state, -1.0, 1.0),
            opts,
        }
    }

    fn params(&self) -> SelectiveScanParams<'_, f64> {
        let o = &self.opts;
        let mut p = SelectiveScanParams::new(
            self.dims,
            &self.u,
            &self.delta,
            &self.a,
            BcInput::from_groups(o.b_groups, &self.b),
            BcInput::from_groups(o.c_groups, &self.c),
        )
        .with_delta_softplus(o.softplus)
        .with_final_states(o.final_states);
        p.d = o.d.then_some(&self.d[..]);
        p.z = o.z.then_some(&self.z[..]);
        p.delta_bias = o.bias.then_some(&self.bias[..]);
        p.initial_states = o.h0.then_some(&self.h0[..]);
        p.cu_seqlens = o.cu.as_deref();
        p
    }

    fn d_final(&self) -> Option<&[f32]> {
        self.opts.final_states.then_some(&self.w_final[..])
    }

    fn loss(&self) -> f64 {
        weighted_loss(
            &selective_scan(&self.params()).unwrap(),
            &self.w_out,
            &self.w_final,
        )
    }

    fn backward(&self) -> ScanGrads<f64, f64> {
        selective_scan_backward(&self.params(), &self.w_out, self.d_final()).unwrap()
    }

    /// Number of elements of the input behind gradient `name`.
    fn input_len(&self, name: &str) -> usize {
        match name {
            "du" => self.u.len(),
            "ddelta" => self.delta.len(),
            "dA" => self.a.len(),
            "dB" => self.b.len(),
            "dC" => self.c.len(),
            "dD" => self.d.len(),
            "dz" => self.z.len(),
            "ddelta_bias" => self.bias.len(),
            "dinitial_states" => self.h0.len(),
            _ => unreachable!("{name}"),
        }
    }

    /// A copy with element `i` of the input behind gradient `name` moved by
    /// `steps` times that input's step; returns the copy and the step.
    fn moved(&self, name: &str, i: usize, steps: f64) -> (Problem, f64) {
        let mut p = self.clone();
        let f64_move = |xs: &mut Vec<f64>| xs[i] += steps * F64_STEP;
        let f32_move = |xs: &mut Vec<f32>| {
            let moved = f64::from(xs[i]) + steps * F32_STEP;
            xs[i] = moved as f32;
            assert_eq!(f64::from(xs[i]), moved, "grid step not exact");
        };
        let step = match name {
            "du" | "ddelta" | "dB" | "dC" | "dz" => {
                f64_move(match name {
                    "du" => &mut p.u,
                    "ddelta" => &mut p.delta,
                    "dB" => &mut p.b,
                    "dC" => &mut p.c,
                    _ => &mut p.z,
                });
                F64_STEP
            }
            _ => {
                f32_move(match name {
                    "dA" => &mut p.a,
                    "dD" => &mut p.d,
                    "ddelta_bias" => &mut p.bias,
                    _ => &mut p.h0,
                });
                F32_STEP
            }
        };
        (p, step)
    }

    /// Central differences of the loss with respect to the input behind `name`.
    fn finite_differences(&self, name: &str) -> Vec<f64> {
        (0..self.input_len(name))
            .map(|i| {
                let (plus, h) = self.moved(name, i, 1.0);
                let (minus, _) = self.moved(name, i, -1.0);
                (plus.loss() - minus.loss()) / (2.0 * h)
            })
            .collect()
    }
}

/// Every gradient that the options produce against finite differences.
#[track_caller]
fn check_against_finite_differences(problem: &Problem) {
    let grads = problem.backward();
    let mut checked = 0;
    for (name, grad) in grads.named() {
        let Some(grad) = grad else { continue };
        let fd = problem.finite_differences(name);
        assert_eq!(grad.len(), fd.len(), "{name}: length");
        let cmp = compare(grad, &fd);
        eprintln!(
            "{name:>16}: rel_l2 {:.2e} over {} elements",
            cmp.rel_l2,
            fd.len()
        );
        assert!(
            cmp.passes(FD_BUDGET),
            "{name}: rel_l2 {:e} (max abs {:e}) vs finite differences; {:?}",
            cmp.rel_l2,
            cmp.max_abs,
            problem.opts
        );
        // A gradient that is zero everywhere would pass trivially.
        assert!(
            fd.iter().any(|v| v.abs() > 1e-3),
            "{name}: finite differences all ~0"
        );
        checked += 1;
    }
    let o = &problem.opts;
    let want = 5 + [o.d, o.z, o.bias, o.h0].iter().filter(|&&x| x).count();
    assert_eq!(checked, want, "gradients present");
}

fn dims(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Mamba1Dims {
    Mamba1Dims::new(batch, d_inner, d_state, seqlen)
}

#[test]
fn every_option_with_independent_groups_matches_finite_differences() {
    check_against_finite_differences(&Problem::random(
        1,
        dims(2, 4, 3, 7),
        Options::all(Some(2), Some(1)),
    ));
    check_against_finite_differences(&Problem::random(
        2,
        dims(1, 6, 2, 5),
        Options::all(Some(3), Some(2)),
    ));
}

#[test]
fn constant_b_and_c_match_finite_differences() {
    check_against_finite_differences(&Problem::random(
        3,
        dims(2, 3, 3, 6),
        Options::all(None, Some(3)),
    ));
    check_against_finite_differences(&Problem::random(
        4,
        dims(2, 2, 4, 5),
        Options::all(Some(1), None),
    ));
    check_against_finite_differences(&Problem::random(
        5,
        dims(2, 2, 2, 6),
        Options::all(None, None),
    ));
}

#[test]
fn without_options_matches_finite_differences() {
    check_against_finite_differences(&Problem::random(6, dims(2, 3, 3, 6), Options::none()));
    // Each option alone.
    let base = Options::none();
    for (seed, opts) in [
        Options {
            d: true,
            ..base.clone()
        },
        Options {
            z: true,
            ..base.clone()
        },
        Options {
            bias: true,
            softplus: true,
            ..base.clone()
        },
        Options {
            h0: true,
            ..base.clone()
        },
        Options {
            final_states: true,
            ..base.clone()
        },
    ]
    .into_iter()
    .enumerate()
    {
        check_against_finite_differences(&Problem::random(7 + seed as u64, dims(1, 2, 3, 5), opts));
    }
}

#[test]
fn varlen_with_per_sequence_states_matches_finite_differences() {
    // An empty sequence, a one-step one and two longer ones.
    let opts = Options {
        cu: Some(vec![0, 3, 3, 4, 9]),
        ..Options::all(Some(2), Some(1))
    };
    let problem = Problem::random(20, dims(1, 4, 3, 9), opts);
    check_against_finite_differences(&problem);
    // The empty sequence passes its final-state gradient to its initial state.
    let grads = problem.backward();
    let state = 4 * 3;
    let dh0 = grads.dinitial_states.unwrap();
    let want: Vec<f64> = problem.w_final[state..2 * state]
        .iter()
        .map(|&w| f64::from(w))
        .collect();
    assert_eq!(&dh0[state..2 * state], &want[..]);
}

#[test]
fn one_step_matches_finite_differences() {
    check_against_finite_differences(&Problem::random(
        21,
        dims(2, 4, 3, 1),
        Options::all(Some(2), Some(4)),
    ));
    check_against_finite_differences(&Problem::random(
        22,
        dims(1, 2, 5, 1),
        Options::all(None, None),
    ));
}

/// Varlen gradients equal those of each sequence run alone.
#[test]
fn varlen_equals_separate_runs() {
    let cu = [0i64, 2, 2, 7, 8];
    let opts = Options {
        cu: Some(cu.to_vec()),
        ..Options::all(Some(1), Some(2))
    };
    let packed = Problem::random(23, dims(1, 4, 2, 8), opts);
    let grads = packed.backward();
    let (d_inner, d_state, seqlen) = (4, 2, 8);
    let state = d_inner * d_state;
    let mut da = vec![0.0; d_inner * d_state];
    for (s, w) in cu.windows(2).enumerate() {
        let (start, end) = (w[0] as usize, w[1] as usize);
        let len = end - start;
        let cut = |data: &[f64], lanes: usize| -> Vec<f64> {
            (0..lanes)
                .flat_map(|lane| data[lane * seqlen + start..lane * seqlen + end].to_vec())
                .collect()
        };
        let alone = Problem {
            dims: dims(1, d_inner, d_state, len),
            opts: Options {
                cu: None,
                ..packed.opts.clone()
            },
            u: cut(&packed.u, d_inner),
            delta: cut(&packed.delta, d_inner),
            b: cut(&packed.b, d_state),
            c: cut(&packed.c, 2 * d_state),
            z: cut(&packed.z, d_inner),
            h0: packed.h0[s * state..(s + 1) * state].to_vec(),
            w_out: cut(&packed.w_out, d_inner),
            w_final: packed.w_final[s * state..(s + 1) * state].to_vec(),
            ..packed.clone()
        };
        let g = alone.backward();
        assert_eq!(cut(&grads.du, d_inner), g.du, "sequence {s} du");
        assert_eq!(cut(&grads.ddelta, d_inner), g.ddelta, "sequence {s} ddelta");
        assert_eq!(cut(grads.dz.as_deref().unwrap(), d_inner), g.dz.unwrap());
        assert_eq!(cut(&grads.db, d_state), g.db, "sequence {s} dB");
        assert_eq!(cut(&grads.dc, 2 * d_state), g.dc, "sequence {s} dC");
        assert_eq!(
            &grads.dinitial_states.as_deref().unwrap()[s * state..(s + 1) * state],
            &g.dinitial_states.unwrap()[..]
        );
        for (acc, v) in da.iter_mut().zip(&g.da) {
            *acc += v;
        }
    }
    let cmp = compare(&grads.da, &da);
    assert!(
        cmp.rel_l2 < 1e-14,
        "dA: sum over sequences {:e}",
        cmp.rel_l2
    );
}

/// Step sizes at and around the softplus threshold: the derivative there is
/// the forward's (sigmoid up to and including 20, 1 above). Central
/// differences would straddle the jump of ~2e-9 at 20, so elements closer to
/// 20 than the step use a left-sided second-order difference (at exactly 20)
/// or a step smaller than their distance.
#[test]
fn softplus_derivative_at_the_threshold() {
    let opts = Options {
        bias: false,
        ..Options::all(Some(1), Some(1))
    };
    let mut problem = Problem::random(24, dims(1, 2, 2, 6), opts);
    // Pre-activations: exactly 20, just below and above, far on each side.
    let pre = [20.0, 20.0 - 1e-3, 20.0 + 1e-3, 25.0, 15.0, -2.0];
    for ch in problem.delta.chunks_mut(6) {
        ch.copy_from_slice(&pre);
    }
    // Large steps forget the state; keep the rates small so that gradients
    // through the decays stay visible.
    for a in &mut problem.a {
        *a = -1.0 / 64.0;
    }
    let grads = problem.backward();
    let loss_at = |i: usize, x: f64| {
        let mut p = problem.clone();
        p.delta[i] = x;
        p.loss()
    };
    for (i, &g) in grads.ddelta.iter().enumerate() {
        let x = problem.delta[i];
        let h = 1e-5;
        let fd = if x == 20.0 {
            (3.0 * loss_at(i, x) - 4.0 * loss_at(i, x - h) + loss_at(i, x - 2.0 * h)) / (2.0 * h)
        } else {
            let h = h.min((x - 20.0).abs() / 4.0);
            (loss_at(i, x + h) - loss_at(i, x - h)) / (2.0 * h)
        };
        assert!(
            (g - fd).abs() <= 1e-6 * fd.abs().max(1e-3),
            "ddelta[{i}] at pre-activation {x}: adjoint {g:e}, differences {fd:e}"
        );
    }
    // At exactly 20 the derivative is sigmoid(20), not 1: check the factor
    // against the same element with softplus off (derivative 1).
    let i = 0;
    let off = Problem {
        delta: problem.delta.iter().map(|&x| softplus(x)).collect(),
        opts: Options {
            softplus: false,
            ..problem.opts.clone()
        },
        ..problem.clone()
    };
    let g_off = off.backward().ddelta[i];
    let sigmoid_20 = 1.0 / (1.0 + (-20f64).exp());
    assert_eq!(grads.ddelta[i], g_off * sigmoid_20);
}

/// `<J v, w> = <v, J^T w>` for random directions v over every input at once,
/// with `J v` from central differences of the forward along v and `J^T w` from
/// the adjoint; the forward's outputs and final states both enter w.
#[test]
fn dot_product_test() {
    let cases = [
        (31, dims(2, 4, 3, 9), Options::all(Some(2), Some(1))),
        (32, dims(2, 3, 2, 4), Options::all(None, Some(3))),
        (
            33,
            dims(1, 4, 3, 8),
            Options {
                cu: Some(vec![0, 1, 1, 5, 8]),
                ..Options::all(Some(4), None)
            },
        ),
    ];
    for (seed, d, opts) in cases {
        let problem = Problem::random(seed, d, opts);
        let grads = problem.backward();
        let mut r = rng(seed + 100);
        let mut plus = problem.clone();
        let mut minus = problem.clone();
        // f64 inputs: real directions; f32 parameters: integer multiples of the
        // grid step, so that the moved values are exact.
        let mut predicted = 0.0;
        let mut magnitude = 0.0;
        for (name, grad) in grads.named() {
            let Some(grad) = grad else { continue };
            for (i, &g) in grad.iter().enumerate() {
                let f64_input = matches!(name, "du" | "ddelta" | "dB" | "dC" | "dz");
                let dir: f64 = if f64_input {
                    r.random_range(-1.0..1.0)
                } else {
                    f64::from(r.random_range(-3i32..=3))
                };
                // Scale the f32 directions to the step the f64 ones use.
                let step = if f64_input { F64_STEP } else { F32_STEP };
                apply(&mut plus, name, i, dir * step);
                apply(&mut minus, name, i, -dir * step);
                predicted += dir * step * g;
                magnitude += (dir * step * g).abs();
            }
        }
        let measured = (plus.loss() - minus.loss()) / 2.0;
        assert!(
            (measured - predicted).abs() <= 1e-6 * magnitude,
            "seed {seed}: <Jv, w> = {measured:e}, <v, J^T w> = {predicted:e} (scale {magnitude:e})"
        );
    }
}

/// Move element `i` of the input behind gradient `name` by `by` (exact for the
/// grid-valued f32 inputs).
fn apply(p: &mut Problem, name: &str, i: usize, by: f64) {
    match name {
        "du" => p.u[i] += by,
        "ddelta" => p.delta[i] += by,
        "dB" => p.b[i] += by,
        "dC" => p.c[i] += by,
        "dz" => p.z[i] += by,
        _ => {
            let xs = match name {
                "dA" => &mut p.a,
                "dD" => &mut p.d,
                "ddelta_bias" => &mut p.bias,
                _ => &mut p.h0,
            };
            let moved = f64::from(xs[i]) + by;
            xs[i] = moved as f32;
            assert_eq!(f64::from(xs[i]), moved);
        }
    }
}

#[test]
fn magnitudes_bound_the_gradients() {
    let problem = Problem::random(40, dims(2, 4, 3, 7), Options::all(Some(2), None));
    let p = problem.params();
    let exact = selective_scan_backward(&p, &problem.w_out, problem.d_final()).unwrap();
    let mag = selective_scan_backward_magnitudes(&p, &problem.w_out, problem.d_final()).unwrap();
    for ((name, e), (_, m)) in exact.named().into_iter().zip(mag.named()) {
        let (e, m) = (e.unwrap(), m.unwrap());
        for (x, y) in e.iter().zip(m) {
            assert!(x.abs() <= y * (1.0 + 1e-12) + 1e-300, "{name}: |{x}| > {y}");
        }
        // And they differ: the problem has terms of both signs.
        assert!(e.iter().zip(m).any(|(x, y)| x.abs() < 0.99 * y), "{name}");
    }
    // With every linear input and weight non-negative (and no z, whose gate
    // changes sign), the magnitudes are the gradients of terms that do not
    // cancel, except where A's sign enters (ddelta and delta_bias).
    let positive = Problem {
        u: problem.u.iter().map(|x| x.abs()).collect(),
        b: problem.b.iter().map(|x| x.abs()).collect(),
        c: problem.c.iter().map(|x| x.abs()).collect(),
        d: problem.d.iter().map(|x| x.abs()).collect(),
        h0: problem.h0.iter().map(|x| x.abs()).collect(),
        w_out: problem.w_out.iter().map(|x| x.abs()).collect(),
        w_final: problem.w_final.iter().map(|x| x.abs()).collect(),
        opts: Options {
            z: false,
            ..problem.opts.clone()
        },
        ..problem.clone()
    };
    let p = positive.params();
    let exact = selective_scan_backward(&p, &positive.w_out, positive.d_final()).unwrap();
    let mag = selective_scan_backward_magnitudes(&p, &positive.w_out, positive.d_final()).unwrap();
    for ((name, e), (_, m)) in exact.named().into_iter().zip(mag.named()) {
        if matches!(name, "ddelta" | "ddelta_bias") || e.is_none() {
            continue;
        }
        let cmp = compare(e.unwrap(), m.unwrap());
        assert!(cmp.rel_l2 < 1e-14, "{name}: {:e}", cmp.rel_l2);
    }
}

#[test]
fn empty_sequence_passes_the_final_state_gradient_through() {
    let problem = Problem::random(41, dims(1, 2, 3, 0), Options::all(Some(1), Some(1)));
    let grads = problem.backward();
    assert!(grads.du.is_empty() && grads.db.is_empty());
    assert!(grads.da.iter().all(|&v| v == 0.0));
    let want: Vec<f64> = problem.w_final.iter().map(|&w| f64::from(w)).collect();
    assert_eq!(GRAD_NAMES.len(), grads.named().len());
    assert_eq!(grads.dinitial_states.unwrap(), want);
}

#[test]
fn bad_gradient_shapes_are_errors() {
    let problem = Problem::random(42, dims(2, 2, 3, 4), Options::all(Some(1), Some(1)));
    let p = problem.params();
    let err = selective_scan_backward(&p, &problem.w_out[1..], problem.d_final()).unwrap_err();
    assert!(
        matches!(err, ssm_core::SsmError::Shape { arg: "d_out", .. }),
        "{err}"
    );
    let err = selective_scan_backward(&p, &problem.w_out, Some(&problem.w_final[2..])).unwrap_err();
    assert!(
        matches!(
            err,
            ssm_core::SsmError::Shape {
                arg: "d_final_states",
                ..
            }
        ),
        "{err}"
    );
}
