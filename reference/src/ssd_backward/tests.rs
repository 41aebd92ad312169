//! Checks of the gradient oracle: (a) central finite differences of the f64
//! forward on every input, every option; (b) the reverse sweep against reverse
//! mode through the quadratic form; (c) the dot-product test
//! `<J v, w> = <v, J^T w>` with `J v` from directional differences.

use super::*;
use crate::ssd::ssd_recurrence;
use crate::test_support::{empty_ssd, rng, uniform, uniform_f32, weighted_loss};
use ssm_core::mamba2::{DSkip, SsdDims};
use ssm_core::tolerance::compare;

/// Which options a problem uses.
#[derive(Clone, Copy, Debug)]
struct Opts {
    dt_bias: bool,
    softplus: bool,
    /// A clamp that some steps hit from above and some from below.
    clamp: bool,
    d: Option<bool>, // Some(true): D per (head, p); Some(false): per head
    z: bool,
    initial: bool,
    final_states: bool,
}

const ALL: Opts = Opts {
    dt_bias: true,
    softplus: true,
    clamp: true,
    d: Some(true),
    z: true,
    initial: true,
    final_states: true,
};

const NONE: Opts = Opts {
    dt_bias: false,
    softplus: false,
    clamp: false,
    d: None,
    z: false,
    initial: false,
    final_states: false,
};

const LIMIT: (f32, f32) = (0.05, 0.9);

/// A problem with f64 tensors and f32 parameters quantized to multiples of 2^-16,
/// so that `theta +- h` for `h = 2^-10, 2^-11` is exact in f32 too.
#[derive(Clone, Debug)]
struct Problem {
    dims: SsdDims,
    opts: Opts,
    cu: Option<Vec<i64>>,
    x: Vec<f64>,
    dt: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    z: Vec<f64>,
    a: Vec<f32>,
    bias: Vec<f32>,
    d: Vec<f32>,
    h0: Vec<f32>,
    /// The weights of the loss `<w_out, out> + <w_final, final_states>`.
    w_out: Vec<f64>,
    w_final: Vec<f32>,
}

fn quantize(v: Vec<f32>) -> Vec<f32> {
    v.into_iter()
        .map(|x| (x * 65536.0).round() / 65536.0)
        .collect()
}

impl Problem {
    fn new(seed: u64, dims: SsdDims, opts: Opts, cu: Option<Vec<i64>>) -> Self {
        let mut r = rng(seed);
        let (heads, head_dim) = (dims.heads, dims.head_dim);
        let (blhp, blgn) = (dims.x_len(), dims.bc_len());
        let rows = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
        let state = dims.states_len(rows);
        let mut p = Problem {
            dims,
            opts,
            cu,
            x: uniform(&mut r, blhp, -1.0, 1.0),
            dt: uniform(&mut r, dims.dt_len(), -4.5, 1.5),
            b: uniform(&mut r, blgn, -1.0, 1.0),
            c: uniform(&mut r, blgn, -1.0, 1.0),
            z: uniform(&mut r, blhp, -2.0, 2.0),
            a: quantize(uniform_f32(&mut r, heads, -1.5, -0.2)),
            bias: quantize(uniform_f32(&mut r, heads, -0.5, 0.5)),
            d: quantize(uniform_f32(&mut r, heads * head_dim, -1.0, 1.0)),
            h0: quantize(uniform_f32(&mut r, state, -1.0, 1.0)),
            w_out: uniform(&mut r, blhp, -1.0, 1.0),
            w_final: quantize(uniform_f32(&mut r, state, -1.0, 1.0)),
        };
        if !opts.softplus {
            // Raw steps are the step sizes themselves: keep most of them positive.
            for v in &mut p.dt {
                *v = 0.5 * (*v + 3.0) - 0.3;
            }
        }
        p.keep_steps_off_kinks();
        p
    }

    /// Move every pre-clamp step at least 0.03 away from a clamp bound (and from 0
    /// without softplus, where the default clamp sits): a difference quotient across
    /// a kink measures neither side's derivative.
    fn keep_steps_off_kinks(&mut self) {
        let heads = self.dims.heads;
        for (i, dt) in self.dt.iter_mut().enumerate() {
            let bias = if self.opts.dt_bias {
                f64::from(self.bias[i % heads])
            } else {
                0.0
            };
            let (lo, hi) = if self.opts.clamp {
                (f64::from(LIMIT.0), f64::from(LIMIT.1))
            } else {
                (0.0, f64::INFINITY)
            };
            loop {
                let v = *dt + bias;
                let u = if self.opts.softplus {
                    ssm_core::math::softplus(v)
                } else {
                    v
                };
                if (u - lo).abs() > 0.03 && (u - hi).abs() > 0.03 {
                    break;
                }
                *dt += 0.05;
            }
        }
    }

    fn params(&self) -> SsdParams<'_, f64> {
        let o = self.opts;
        let mut p = SsdParams::new(self.dims, &self.x, &self.dt, &self.a, &self.b, &self.c)
            .with_dt_softplus(o.softplus)
            .with_final_states(o.final_states);
        if o.dt_bias {
            p = p.with_dt_bias(&self.bias);
        }
        if o.clamp {
            p = p.with_dt_limit(LIMIT.0, LIMIT.1);
        }
        match o.d {
            Some(true) => p = p.with_d(DSkip::PerHeadDim(&self.d)),
            Some(false) => p = p.with_d(DSkip::PerHead(&self.d[..self.dims.heads])),
            None => {}
        }
        if o.z {
            p = p.with_z(&self.z);
        }
        if o.initial {
            p = p.with_initial_states(&self.h0);
        }
        if let Some(cu) = &self.cu {
            p = p.with_cu_seqlens(cu);
        }
        p
    }

    fn d_final(&self) -> Option<&[f32]> {
        self.opts.final_states.then_some(&self.w_final[..])
    }

    fn backward(&self) -> SsdGrads<f64, f64> {
        ssd_backward(&self.params(), &self.w_out, self.d_final()).unwrap()
    }

    /// The loss `<w_out, out> + <w_final, final_states>` of the f64 forward.
    fn loss(&self) -> f64 {
        weighted_loss(
            &ssd_recurrence(&self.params()).unwrap(),
            &self.w_out,
            &self.w_final,
        )
    }

    /// The forward's outputs and final states as one vector (for `J v`).
    fn outputs(&self) -> Vec<f64> {
        let out = ssd_recurrence(&self.params()).unwrap();
        let mut v = out.out;
        v.extend(out.final_states.unwrap_or_default());
        v
    }
}

/// The differentiable inputs, by the name of their gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    X,
    Dt,
    A,
    B,
    C,
    D,
    Z,
    Bias,
    H0,
}

impl Input {
    fn of(name: &str) -> Self {
        match name {
            "dx" => Input::X,
            "ddt" => Input::Dt,
            "dA" => Input::A,
            "dB" => Input::B,
            "dC" => Input::C,
            "dD" => Input::D,
            "dz" => Input::Z,
            "ddt_bias" => Input::Bias,
            "dinitial_states" => Input::H0,
            other => panic!("unknown gradient {other}"),
        }
    }

    fn len(self, p: &Problem) -> usize {
        match self {
            Input::X => p.x.len(),
            Input::Dt => p.dt.len(),
            Input::A => p.a.len(),
            Input::B => p.b.len(),
            Input::C => p.c.len(),
            Input::D => match p.opts.d {
                Some(true) => p.d.len(),
                _ => p.dims.heads,
            },
            Input::Z => p.z.len(),
            Input::Bias => p.bias.len(),
            Input::H0 => p.h0.len(),
        }
    }

    /// Add `delta` to element `i` (exact in f32 for the quantized parameters).
    fn nudge(self, p: &mut Problem, i: usize, delta: f64) {
        let f32_add = |v: &mut f32| {
            let new = f64::from(*v) + delta;
            *v = new as f32;
            assert_eq!(f64::from(*v), new, "perturbation not exact in f32");
        };
        match self {
            Input::X => p.x[i] += delta,
            Input::Dt => p.dt[i] += delta,
            Input::B => p.b[i] += delta,
            Input::C => p.c[i] += delta,
            Input::Z => p.z[i] += delta,
            Input::A => f32_add(&mut p.a[i]),
            Input::D => f32_add(&mut p.d[i]),
            Input::Bias => f32_add(&mut p.bias[i]),
            Input::H0 => f32_add(&mut p.h0[i]),
        }
    }
}

/// `f'(0)` of `f(eps)` by central differences with one Richardson step:
/// `(4 D(h/2) - D(h)) / 3` has error O(h^4) ~ 1e-12 at h = 2^-10.
fn richardson(f: impl Fn(f64) -> f64) -> f64 {
    let h = 1.0 / 1024.0;
    let d1 = (f(h) - f(-h)) / (2.0 * h);
    let d2 = (f(h / 2.0) - f(-h / 2.0)) / h;
    (4.0 * d2 - d1) / 3.0
}

/// (a): every gradient of the oracle against difference quotients of the loss.
fn check_finite_differences(what: &str, p: &Problem) {
    let grads = p.backward();
    let named = grads.named();
    assert!(!named.is_empty());
    for (name, grad) in named {
        let input = Input::of(name);
        let grad: Vec<f64> = match grad {
            ssm_core::mamba2_grad::GradRef::Input(g) | ssm_core::mamba2_grad::GradRef::Param(g) => {
                g.to_vec()
            }
        };
        assert_eq!(grad.len(), input.len(p), "{what}: {name} length");
        let fd: Vec<f64> = (0..grad.len())
            .map(|i| {
                richardson(|eps| {
                    let mut q = p.clone();
                    input.nudge(&mut q, i, eps);
                    q.loss()
                })
            })
            .collect();
        let cmp = compare(&grad, &fd);
        eprintln!(
            "{what}: {name} rel_l2 {:.2e} (|g| {:.2e})",
            cmp.rel_l2,
            l2(&fd)
        );
        assert!(
            l2(&fd) > 0.0 || name == "ddt_bias",
            "{what}: {name} is identically zero, the test cannot fail"
        );
        assert!(
            cmp.rel_l2 <= 1e-6,
            "{what}: {name} rel_l2 {:e} vs finite differences\n  oracle {grad:?}\n  fd     {fd:?}",
            cmp.rel_l2
        );
    }
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn finite_differences_every_option() {
    let p = Problem::new(1, SsdDims::new(2, 6, 2, 2, 3, 1), ALL, None);
    // The clamp must be active somewhere, from both sides, or its mask is untested.
    let pp = p.params();
    let dts: Vec<f64> = (0..2)
        .flat_map(|b| (0..6).flat_map(move |t| (0..2).map(move |h| (b, t, h))))
        .map(|(b, t, h)| pp.dt_at(b, t, h))
        .collect();
    assert!(dts.iter().any(|&d| d == f64::from(LIMIT.0)), "{dts:?}");
    assert!(dts.iter().any(|&d| d == f64::from(LIMIT.1)), "{dts:?}");
    assert!(dts
        .iter()
        .any(|&d| d > f64::from(LIMIT.0) && d < f64::from(LIMIT.1)));
    check_finite_differences("all options", &p);
}

#[test]
fn finite_differences_no_options() {
    check_finite_differences(
        "no options",
        &Problem::new(2, SsdDims::new(1, 5, 2, 3, 2, 1), NONE, None),
    );
}

#[test]
fn finite_differences_option_by_option() {
    let one = |f: fn(&mut Opts)| {
        let mut o = NONE;
        f(&mut o);
        o
    };
    let cases: [(&str, Opts); 8] = [
        ("dt_bias", one(|o| o.dt_bias = true)),
        ("softplus", one(|o| o.softplus = true)),
        ("clamp", one(|o| o.clamp = true)),
        ("D per head", one(|o| o.d = Some(false))),
        ("D per head-dim", one(|o| o.d = Some(true))),
        ("z", one(|o| o.z = true)),
        ("initial states", one(|o| o.initial = true)),
        ("final states", one(|o| o.final_states = true)),
    ];
    for (seed, (what, opts)) in cases.into_iter().enumerate() {
        let p = Problem::new(10 + seed as u64, SsdDims::new(1, 5, 2, 2, 3, 1), opts, None);
        check_finite_differences(what, &p);
    }
}

#[test]
fn finite_differences_groups() {
    let p = Problem::new(3, SsdDims::new(1, 5, 4, 2, 3, 2), ALL, None);
    check_finite_differences("G=2 H=4", &p);
}

#[test]
fn finite_differences_varlen_with_per_sequence_states() {
    // An empty sequence first and inside, a single-token one, a longer one.
    let cu = vec![0i64, 0, 1, 4, 4, 8];
    let p = Problem::new(4, SsdDims::new(1, 8, 2, 2, 2, 1), ALL, Some(cu));
    check_finite_differences("varlen", &p);
    // The empty sequences' initial-state gradients are their final-state gradients.
    let g = p.backward();
    let d_init = g.dinitial_states.unwrap();
    let row = 2 * 2 * 2;
    for s in [0, 3] {
        let want: Vec<f64> = p.w_final[s * row..(s + 1) * row]
            .iter()
            .map(|&w| f64::from(w))
            .collect();
        assert_eq!(&d_init[s * row..(s + 1) * row], &want[..]);
    }
}

#[test]
fn finite_differences_single_token() {
    let p = Problem::new(5, SsdDims::new(3, 1, 2, 2, 3, 1), ALL, None);
    check_finite_differences("L=1", &p);
}

/// (b): the reverse sweep and reverse mode through the quadratic form agree.
#[test]
fn sweep_equals_quadratic_form_gradient() {
    let cases = [
        (
            "all",
            Problem::new(6, SsdDims::new(2, 9, 4, 3, 5, 2), ALL, None),
        ),
        (
            "none",
            Problem::new(7, SsdDims::new(1, 7, 2, 2, 3, 1), NONE, None),
        ),
        (
            "varlen",
            Problem::new(
                8,
                SsdDims::new(1, 12, 2, 2, 4, 1),
                ALL,
                Some(vec![0, 3, 3, 4, 12]),
            ),
        ),
        (
            "L=1",
            Problem::new(9, SsdDims::new(2, 1, 2, 2, 2, 1), ALL, None),
        ),
        (
            "D per head",
            Problem::new(
                10,
                SsdDims::new(1, 6, 2, 2, 2, 1),
                Opts {
                    d: Some(false),
                    ..ALL
                },
                None,
            ),
        ),
    ];
    for (what, p) in cases {
        let sweep = p.backward();
        let quad = ssd_backward_quadratic(&p.params(), &p.w_out, p.d_final()).unwrap();
        let (s, q) = (sweep.named(), quad.named());
        assert_eq!(s.len(), q.len());
        for ((name, a), (_, b)) in s.into_iter().zip(q) {
            let flat = |g: ssm_core::mamba2_grad::GradRef<'_, f64, f64>| match g {
                ssm_core::mamba2_grad::GradRef::Input(v)
                | ssm_core::mamba2_grad::GradRef::Param(v) => v.to_vec(),
            };
            let (a, b) = (flat(a), flat(b));
            let cmp = compare(&a, &b);
            assert!(l2(&b) > 0.0, "{what}: {name} all zero");
            assert!(
                cmp.rel_l2 <= 1e-12,
                "{what}: {name} rel_l2 {:e}",
                cmp.rel_l2
            );
        }
    }
}

/// (c): `<J v, w> = <v, J^T w>`, `J v` by a directional difference quotient.
#[test]
fn dot_product_test() {
    for (seed, (opts, cu)) in [(ALL, None), (ALL, Some(vec![0i64, 2, 2, 7])), (NONE, None)]
        .into_iter()
        .enumerate()
    {
        let batch = if cu.is_some() { 1 } else { 2 };
        let p = Problem::new(
            20 + seed as u64,
            SsdDims::new(batch, 7, 2, 2, 3, 1),
            opts,
            cu,
        );
        // A random direction v over every differentiable input.
        let mut r = rng(99 + seed as u64);
        let inputs: Vec<Input> = p
            .backward()
            .named()
            .iter()
            .map(|(n, _)| Input::of(n))
            .collect();
        let v: Vec<Vec<f64>> = inputs
            .iter()
            .map(|i| {
                // Multiples of 2^-6, so that eps * v stays exact in f32 parameters.
                uniform(&mut r, i.len(&p), -1.0, 1.0)
                    .into_iter()
                    .map(|x| (x * 64.0).round() / 64.0)
                    .collect()
            })
            .collect();
        let moved = |eps: f64| {
            let mut q = p.clone();
            for (input, dir) in inputs.iter().zip(&v) {
                for (i, &d) in dir.iter().enumerate() {
                    input.nudge(&mut q, i, eps * d);
                }
            }
            q.outputs()
        };
        let w: Vec<f64> = {
            let mut w = p.w_out.clone();
            if p.opts.final_states {
                w.extend(p.w_final.iter().map(|&x| f64::from(x)));
            }
            w
        };
        // J v by Richardson on every output, then <J v, w>.
        let jv_w = richardson(|eps| moved(eps).iter().zip(&w).map(|(o, w)| o * w).sum());
        let grads = p.backward();
        let v_jtw: f64 = grads
            .named()
            .into_iter()
            .zip(&v)
            .map(|((_, g), dir)| {
                let g = match g {
                    ssm_core::mamba2_grad::GradRef::Input(g)
                    | ssm_core::mamba2_grad::GradRef::Param(g) => g,
                };
                g.iter().zip(dir).map(|(a, b)| a * b).sum::<f64>()
            })
            .sum();
        let rel = (jv_w - v_jtw).abs() / v_jtw.abs();
        eprintln!("dot product {seed}: <Jv,w> {jv_w:.12e} <v,J^T w> {v_jtw:.12e} rel {rel:.1e}");
        assert!(rel <= 1e-8, "case {seed}: {jv_w} vs {v_jtw}");
    }
}

#[test]
fn gradient_inputs_are_validated() {
    let p = Problem::new(30, SsdDims::new(1, 3, 2, 2, 2, 1), ALL, None);
    let err = ssd_backward(&p.params(), &p.w_out[1..], p.d_final()).unwrap_err();
    assert!(err.to_string().contains("`d_out`"), "{err}");
    let err = ssd_backward(&p.params(), &p.w_out, Some(&p.w_final[1..])).unwrap_err();
    assert!(err.to_string().contains("`d_final_states`"), "{err}");
    let err = ssd_backward_quadratic(&p.params().with_final_states(false), &p.w_out, p.d_final())
        .unwrap_err();
    assert!(err.to_string().contains("`d_final_states`"), "{err}");
}

#[test]
fn empty_input_passes_the_final_state_gradient_through() {
    let s0 = [0.5f32, 2.0];
    let ds = [3.0f32, -1.0];
    let p = empty_ssd().with_initial_states(&s0);
    for f in [ssd_backward::<f64>, ssd_backward_quadratic::<f64>] {
        let g = f(&p, &[], Some(&ds)).unwrap();
        assert_eq!(g.dinitial_states.unwrap(), vec![3.0, -1.0]);
        assert_eq!(g.da, vec![0.0]);
    }
}

/// The magnitude sweep bounds every gradient elementwise (triangle inequality) and
/// is strictly larger somewhere on a problem with mixed signs.
#[test]
fn magnitude_bounds_every_gradient() {
    let p = Problem::new(40, SsdDims::new(2, 9, 4, 3, 5, 2), ALL, None);
    let g = p.backward();
    let m = ssd_backward_magnitude(&p.params(), &p.w_out, p.d_final())
        .unwrap()
        .grads;
    let flat = |g: ssm_core::mamba2_grad::GradRef<'_, f64, f64>| match g {
        ssm_core::mamba2_grad::GradRef::Input(v) | ssm_core::mamba2_grad::GradRef::Param(v) => {
            v.to_vec()
        }
    };
    for ((name, a), (_, b)) in g.named().into_iter().zip(m.named()) {
        let (a, b) = (flat(a), flat(b));
        for (x, y) in a.iter().zip(&b) {
            assert!(x.abs() <= y * (1.0 + 1e-12) + 1e-300, "{name}: |{x}| > {y}");
        }
        assert!(l2(&b) > l2(&a), "{name}: no cancellation at all?");
    }
}
