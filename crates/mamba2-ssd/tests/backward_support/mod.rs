//! The backward's judge, shared by the example-based and the property tests: the
//! f32 chunked backward against the f64 adjoint (`ssm_reference::ssd_backward`)
//! on the same rounded inputs, each gradient within the budget derived in
//! docs/TOLERANCES.md ("Backward").
#![allow(dead_code)]

use crate::cpu_support::{chunked_log_decay, Case, Rounded};
use mamba2_ssd::backward_cpu::ssd_backward_chunked;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use ssm_core::mamba2::SsdParams;
use ssm_core::mamba2_grad::GradRef;
use ssm_core::tolerance::{compare, rel_l2_budget};
use ssm_core::{DType, Element, SsdGrads};
use ssm_reference::ssd_backward::{ssd_backward_detailed, ssd_backward_magnitude};

/// The incoming gradients of a case: `d_out` rounded to `T`, `d_final_states` in
/// f32 when the case returns final states.
pub struct Incoming<T> {
    pub d_out: Vec<T>,
    pub d_final: Option<Vec<f32>>,
}

pub fn incoming<T: Element>(case: &Case, seed: u64) -> Incoming<T> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let n_out = case.x.len();
    let d_out: Vec<f32> = (0..n_out).map(|_| rng.sample(StandardNormal)).collect();
    let d_final = case.opts.final_states.then(|| {
        (0..case.initial_states.len())
            .map(|_| rng.sample(StandardNormal))
            .collect()
    });
    Incoming {
        d_out: ssm_core::element::round_slice(&d_out),
        d_final,
    }
}

/// One gradient's comparison.
#[derive(Clone, Debug)]
pub struct GradCheck {
    pub name: &'static str,
    pub rel_l2: f64,
    pub max_abs: f64,
    pub budget: f64,
    /// The absolute allowance for a cancelling reduction (0 where none applies).
    pub allowance: f64,
    pub passed: bool,
}

/// Run the port with chunk `chunk` and the oracle on `case` rounded to `T`, and
/// judge every gradient. Returns the checks (the caller asserts or reports).
pub fn judge<T: Element>(
    case: &Case,
    r: &Rounded<T>,
    inc: &Incoming<T>,
    chunk: usize,
) -> Vec<GradCheck> {
    let p = case.params(r);
    let got = ssd_backward_chunked(&p, &inc.d_out, inc.d_final.as_deref(), chunk)
        .expect("valid problem")
        .to_f64();
    let want =
        ssd_backward_detailed(&p, &inc.d_out, inc.d_final.as_deref()).expect("valid problem");
    judge_against(&p, &inc.d_out, inc.d_final.as_deref(), &got, &want, chunk)
}

/// The judgement itself (see docs/TOLERANCES.md, "Backward").
pub fn judge_against<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final: Option<&[f32]>,
    got: &SsdGrads<f64, f64>,
    want: &ssm_reference::ssd_backward::SsdBackwardDetail,
    chunk: usize,
) -> Vec<GradCheck> {
    let k = chunked_log_decay(p, chunk);
    let gamma = reduction_gamma(p, chunk, k);
    // The oracle on absolute values, computed only when a relative check fails.
    let mags = std::cell::OnceCell::new();
    let magnitude = || {
        mags.get_or_init(|| {
            ssd_backward_magnitude(p, d_out, d_final)
                .expect("valid problem")
                .grads
        })
    };
    let (g, w) = (got.named(), want.grads.named());
    assert_eq!(
        g.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        w.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "the port and the oracle return different gradients"
    );
    g.into_iter()
        .zip(w)
        .map(|((name, got), (_, want))| {
            let (got, want, dtype) = match (got, want) {
                (GradRef::Input(g), GradRef::Input(w)) => (g, w, T::DTYPE),
                (GradRef::Param(g), GradRef::Param(w)) => (g, w, DType::F32),
                _ => unreachable!("same field, same kind"),
            };
            let cmp = compare(got, want);
            let budget = rel_l2_budget(dtype, k);
            let relative = cmp.non_finite == 0 && cmp.rel_l2 <= budget;
            let allowance = if relative {
                0.0
            } else {
                let (_, m) = magnitude()
                    .named()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .expect("same gradients");
                let m = match m {
                    GradRef::Input(m) | GradRef::Param(m) => m,
                };
                gamma * l2(m)
            };
            // compare() reports the absolute L2 error when the reference is zero.
            let norm = l2(want);
            let diff = if norm > 0.0 {
                cmp.rel_l2 * norm
            } else {
                cmp.rel_l2
            };
            let passed = relative || (cmp.non_finite == 0 && diff <= budget * norm + allowance);
            GradCheck {
                name,
                rel_l2: cmp.rel_l2,
                max_abs: cmp.max_abs,
                budget,
                allowance,
                passed,
            }
        })
        .collect()
}

/// `gamma = 4 sqrt(n) u32 + 4 eps32 K` with `n` the longest chain of roundings a
/// term goes through: the state and its gradient each accumulate over the tokens of
/// a sequence (and the parameter gradients sum over them: `2 L` for all rows), the
/// `(Q/2)^2` pair terms of a log-decay gradient inside a chunk, and the `P N` terms
/// of `<G, S>`.
fn reduction_gamma<T>(p: &SsdParams<'_, T>, chunk: usize, k: f64) -> f64 {
    let longest = ssm_core::shape::segments(p.cu_seqlens, p.dims.seqlen)
        .iter()
        .map(|(s, e)| e - s)
        .max()
        .unwrap_or(0);
    let rows = if p.cu_seqlens.is_some() {
        1
    } else {
        p.dims.batch
    };
    let q = chunk.min(longest) as f64;
    let n = (2 * longest * rows + p.dims.d_state * p.dims.head_dim) as f64 + q * q / 4.0;
    let eps = f32::EPSILON as f64;
    4.0 * n.sqrt() * eps / 2.0 + 4.0 * eps * k
}

pub fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Assert every check passed, printing all of them.
#[track_caller]
pub fn assert_passed(what: &str, dtype: DType, chunk: usize, checks: &[GradCheck]) {
    for c in checks {
        eprintln!(
            "{what} [{dtype} Q={chunk}] {:>15}: rel_l2 {:.3e} max_abs {:.3e} (budget {:.3e}, allowance {:.1e}){}",
            c.name,
            c.rel_l2,
            c.max_abs,
            c.budget,
            c.allowance,
            if c.passed { "" } else { "  FAIL" }
        );
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{what} [{dtype} Q={chunk}]: {failed:?}");
}

/// Positions `start..end` of batch row `row` of `case` as a batch-1 case whose
/// initial state is `initial` (a `(H, P, N)` row) when given.
pub fn window(
    case: &Case,
    row: usize,
    start: usize,
    end: usize,
    initial: Option<Vec<f32>>,
) -> Case {
    let d = case.dims;
    let cut = |v: &[f32], width: usize| {
        v[(row * d.seqlen + start) * width..(row * d.seqlen + end) * width].to_vec()
    };
    let mut opts = case.opts.clone();
    opts.cu_seqlens = None;
    opts.initial_states = initial.is_some();
    Case {
        dims: ssm_core::mamba2::SsdDims {
            batch: 1,
            seqlen: end - start,
            ..d
        },
        opts,
        x: cut(&case.x, d.heads * d.head_dim),
        dt: cut(&case.dt, d.heads),
        a: case.a.clone(),
        b: cut(&case.b, d.groups * d.d_state),
        c: cut(&case.c, d.groups * d.d_state),
        z: cut(&case.z, d.heads * d.head_dim),
        dt_bias: case.dt_bias.clone(),
        d: case.d.clone(),
        initial_states: initial.unwrap_or_default(),
    }
}

/// Per-token gradients of `parts` (in order) concatenated, the parameter
/// gradients summed, the initial-state gradient of the first part: what the
/// gradients of the whole must equal.
pub fn concatenate(parts: &[SsdGrads<f32, f32>]) -> SsdGrads<f32, f32> {
    let cat = |f: fn(&SsdGrads<f32, f32>) -> &[f32]| {
        parts
            .iter()
            .flat_map(|g| f(g).to_vec())
            .collect::<Vec<f32>>()
    };
    let sum = |f: fn(&SsdGrads<f32, f32>) -> Option<&Vec<f32>>| {
        f(&parts[0]).map(|first| {
            let mut acc = vec![0f32; first.len()];
            for g in parts {
                for (a, v) in acc.iter_mut().zip(f(g).expect("same options")) {
                    *a += v;
                }
            }
            acc
        })
    };
    SsdGrads {
        dx: cat(|g| &g.dx),
        ddt: cat(|g| &g.ddt),
        da: sum(|g| Some(&g.da)).expect("always present"),
        db: cat(|g| &g.db),
        dc: cat(|g| &g.dc),
        dd: sum(|g| g.dd.as_ref()),
        dz: parts[0]
            .dz
            .as_ref()
            .map(|_| cat(|g| g.dz.as_deref().expect("same options"))),
        ddt_bias: sum(|g| g.ddt_bias.as_ref()),
        dinitial_states: parts[0].dinitial_states.clone(),
    }
}

/// Every gradient of `got` within relative L2 `budget` of `want` (f32 results of
/// two f32 computations that differ only in rounding order).
#[track_caller]
pub fn assert_grads_close(
    what: &str,
    got: &SsdGrads<f32, f32>,
    want: &SsdGrads<f32, f32>,
    budget: f64,
) {
    let (g, w) = (got.to_f64(), want.to_f64());
    for ((name, a), (_, b)) in g.named().into_iter().zip(w.named()) {
        let (a, b) = match (a, b) {
            (GradRef::Input(a), GradRef::Input(b)) | (GradRef::Param(a), GradRef::Param(b)) => {
                (a, b)
            }
            _ => unreachable!(),
        };
        let cmp = compare(a, b);
        assert!(
            cmp.passes(budget),
            "{what}: {name} rel_l2 {:e} > {budget:e}",
            cmp.rel_l2
        );
    }
}

/// The per-token gradients (`dx, ddt, dB, dC, dz`) and the initial-state gradient
/// bit for bit equal; the parameter gradients (summed in another order) within 1e-6.
#[track_caller]
pub fn assert_grads_identical_per_token(
    what: &str,
    got: &SsdGrads<f32, f32>,
    want: &SsdGrads<f32, f32>,
) {
    assert_eq!(got.dx, want.dx, "{what}: dx");
    assert_eq!(got.ddt, want.ddt, "{what}: ddt");
    assert_eq!(got.db, want.db, "{what}: dB");
    assert_eq!(got.dc, want.dc, "{what}: dC");
    assert_eq!(got.dz, want.dz, "{what}: dz");
    assert_eq!(
        got.dinitial_states, want.dinitial_states,
        "{what}: dinitial_states"
    );
    assert_grads_close(what, got, want, 1e-6);
}
