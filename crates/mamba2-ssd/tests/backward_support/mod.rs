//! The backward's judge, shared by the example-based and the property tests: the
//! f32 chunked backward against the f64 adjoint (`ssm_reference::ssd_backward`)
//! on the same rounded inputs, each gradient within the budget derived in
//! docs/TOLERANCES.md ("Backward").
#![allow(dead_code)]

use crate::cpu_support::{chunked_log_decay, Case, Rounded};
use mamba2_ssd::backward_cpu::ssd_backward_chunked;
use mamba2_ssd::backward_cpu::tolerance::judge_grads;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use ssm_core::mamba2::SsdParams;
use ssm_core::mamba2_grad::GradRef;
use ssm_core::tolerance::compare;
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

pub use mamba2_ssd::backward_cpu::tolerance::GradCheck;

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
    judge_with_oracle(&p, inc, &got, chunk)
}

/// Judge `got`, any implementation's gradients of `p` for the incoming `inc`,
/// against the f64 oracle run here.
pub fn judge_with_oracle<T: Element>(
    p: &SsdParams<'_, T>,
    inc: &Incoming<T>,
    got: &SsdGrads<f64, f64>,
    chunk: usize,
) -> Vec<GradCheck> {
    let want = ssd_backward_detailed(p, &inc.d_out, inc.d_final.as_deref()).expect("valid problem");
    judge_against(p, &inc.d_out, inc.d_final.as_deref(), got, &want, chunk)
}

/// The judgement itself (see docs/TOLERANCES.md, "Backward"), shared with the
/// fuzz target: `mamba2_ssd::backward_cpu::tolerance::judge_grads`.
pub fn judge_against<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final: Option<&[f32]>,
    got: &SsdGrads<f64, f64>,
    want: &ssm_reference::ssd_backward::SsdBackwardDetail,
    chunk: usize,
) -> Vec<GradCheck> {
    judge_grads(
        p,
        got,
        &want.grads,
        chunk,
        chunked_log_decay(p, chunk),
        || {
            ssd_backward_magnitude(p, d_out, d_final)
                .expect("valid problem")
                .grads
        },
    )
}

/// Print every check of one run, a line each with failures marked; returns
/// the failed ones.
pub fn print_checks(what: &str, dtype: DType, chunk: usize, checks: &[GradCheck]) -> Vec<String> {
    let mut failed = Vec::new();
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
        if !c.passed {
            failed.push(format!("{what} [{dtype} Q={chunk}] {}: {c:?}", c.name));
        }
    }
    failed
}

/// Assert every check passed, printing all of them.
#[track_caller]
pub fn assert_passed(what: &str, dtype: DType, chunk: usize, checks: &[GradCheck]) {
    let failed = print_checks(what, dtype, chunk, checks);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
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
