//! Problem generators, slicing into rank segments, reassembly and the judge of
//! split == whole, shared by the CPU property tests and the GPU test.
#![allow(dead_code)] // each test binary uses part of it

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::tolerance::{compare, rel_l2_budget};
use ssm_core::DType;

#[path = "../../../mamba1-scan/tests/support/proptest_cases.rs"]
mod proptest_cases;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn randn(r: &mut StdRng, n: usize) -> Vec<f32> {
    // Sum of 4 uniforms, scaled to unit variance: normal enough for test data.
    (0..n)
        .map(|_| {
            let s: f32 = (0..4).map(|_| r.random::<f32>()).sum();
            (s - 2.0) * 3f32.sqrt()
        })
        .collect()
}

/// Decay rates `A = -exp(randn / 2)`: all negative, short and long memories.
pub fn decay_rates(r: &mut StdRng, n: usize) -> Vec<f32> {
    randn(r, n).into_iter().map(|v| -(0.5 * v).exp()).collect()
}

/// `v` rounded to `T`.
pub fn cast<T: ssm_core::Element>(v: Vec<f32>) -> Vec<T> {
    v.into_iter().map(T::from_f32).collect()
}

pub fn uniform(r: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * r.random::<f32>()).collect()
}

/// `count` sorted cut points in `0..=len` (repeats allowed: empty pieces).
pub fn cuts(r: &mut StdRng, len: usize, count: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (0..count).map(|_| r.random_range(0..=len)).collect();
    c.sort_unstable();
    c
}

/// Rank segments `[s, e)` from cut points.
pub fn segments(len: usize, cut_points: &[usize]) -> Vec<(usize, usize)> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cut_points);
    bounds.push(len);
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// `cu_seqlens` with `seqs` sequences over `len` tokens (empty ones included).
pub fn cu_seqlens(r: &mut StdRng, len: usize, seqs: usize) -> Vec<i64> {
    let mut cu = vec![0i64];
    cu.extend(cuts(r, len, seqs - 1).into_iter().map(|c| c as i64));
    cu.push(len as i64);
    cu
}

/// Token-major slice (`(rows, len, per)` -> `(rows, e - s, per)`): the SSD's layout.
pub fn slice_tokens<T: Copy>(
    data: &[T],
    rows: usize,
    len: usize,
    per: usize,
    s: usize,
    e: usize,
) -> Vec<T> {
    (0..rows)
        .flat_map(|b| {
            data[(b * len + s) * per..(b * len + e) * per]
                .iter()
                .copied()
        })
        .collect()
}

/// Time-last slice (`(rows, len)` -> `(rows, e - s)`): the scan's layout.
pub fn slice_time<T: Copy>(data: &[T], rows: usize, len: usize, s: usize, e: usize) -> Vec<T> {
    (0..rows)
        .flat_map(|r| data[r * len + s..r * len + e].iter().copied())
        .collect()
}

/// Inverse of [`slice_tokens`] over every rank's part.
pub fn join_tokens<T: Copy>(
    parts: &[Vec<T>],
    segs: &[(usize, usize)],
    rows: usize,
    per: usize,
) -> Vec<T> {
    let mut out = Vec::new();
    for b in 0..rows {
        for (part, &(s, e)) in parts.iter().zip(segs) {
            let n = (e - s) * per;
            out.extend_from_slice(&part[b * n..(b + 1) * n]);
        }
    }
    out
}

/// Inverse of [`slice_time`].
pub fn join_time<T: Copy>(parts: &[Vec<T>], segs: &[(usize, usize)], rows: usize) -> Vec<T> {
    join_tokens(parts, segs, rows, 1)
}

pub fn widen<T: ssm_core::Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// `K` of the tolerance model for any chunking: the largest sum of `|log decay|`
/// over `window` consecutive steps of one row (a sliding window covers every
/// chunk alignment, whole or split).
pub fn sliding_k(log_decays: &[f64], row_len: usize, window: usize) -> f64 {
    let mut best: f64 = 0.0;
    if row_len == 0 {
        return 0.0;
    }
    for row in log_decays.chunks(row_len) {
        for w in row.windows(window.min(row_len).max(1)) {
            best = best.max(w.iter().map(|a| a.abs()).sum());
        }
    }
    best
}

/// One judged quantity of split vs whole.
#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub rel_l2: f64,
    pub budget: f64,
    pub abs_err: f64,
    pub allowed_abs: f64,
    pub passed: bool,
}

/// Split vs whole, two f32 computations of the same thing that differ in
/// rounding order: each within `budget` of the truth, so within twice it of
/// each other; or, where the quantity cancels, within `gamma ||mag||`
/// absolutely (docs/TOLERANCES.md, "Backward").
pub fn judge(name: &str, split: &[f64], whole: &[f64], budget: f64, gamma_mag: f64) -> Check {
    let c = compare(split, whole);
    let norm = whole.iter().map(|x| x * x).sum::<f64>().sqrt();
    let abs_err = c.rel_l2 * if norm > 0.0 { norm } else { 1.0 };
    let allowed_abs = 2.0 * budget * norm + gamma_mag;
    let passed = c.non_finite == 0 && (c.rel_l2 <= 2.0 * budget || abs_err <= allowed_abs);
    Check {
        name: name.into(),
        rel_l2: c.rel_l2,
        budget: 2.0 * budget,
        abs_err,
        allowed_abs,
        passed,
    }
}

pub fn gamma(n: usize) -> f64 {
    4.0 * (n as f64).sqrt() * f64::from(f32::EPSILON) / 2.0
}

pub fn f32_budget(k: f64) -> f64 {
    rel_l2_budget(DType::F32, k)
}

pub fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

// ---------------------------------------------------------------------------
// What both split == whole property tests do the same way
// ---------------------------------------------------------------------------

/// The property tests' configuration: 48 cases, `SSM_PROPTEST_CASES=N` for more;
/// shrinking capped.
pub fn config() -> proptest::test_runner::Config {
    proptest_cases::config(48, Some(300))
}

/// A case's options: its exchange, and the additive pass 2 or the rerun.
pub fn cp_options(
    exchange: ssm_context_parallel::Exchange,
    add: bool,
) -> ssm_context_parallel::CpOptions {
    use ssm_context_parallel::Pass2;
    ssm_context_parallel::CpOptions {
        exchange,
        pass2: if add {
            Pass2::AddContribution
        } else {
            Pass2::Rerun
        },
    }
}

/// A forward's result: the output and the final states.
pub type Forward = ssm_core::ScanOutput<f32, f32>;

/// One family's split == whole case on CPU thread ranks (the scan's, the
/// SSD's): what the properties both families share need of it.
pub trait SplitCase: Sync {
    /// The backward's gradients.
    type Grads: Send + PartialEq + std::fmt::Debug;

    fn ranks(&self) -> usize;

    /// The plain forward and backward of the whole sequence.
    fn whole(&self) -> (Forward, Self::Grads);

    /// `comm`'s rank: the context-parallel forward and backward of its segment.
    fn on_rank(
        &self,
        comm: &ssm_context_parallel::ThreadComm,
    ) -> Result<(Forward, Self::Grads), ssm_context_parallel::CpError>;

    /// Every rank's part of a per-step tensor, in the whole sequence's layout.
    fn join_out(&self, parts: &[Vec<f32>]) -> Vec<f32>;
}

/// Every rank's `(forward, backward)` in rank order, or the first rank's error.
pub fn run_split<C: SplitCase>(
    case: &C,
) -> Result<(Vec<Forward>, Vec<C::Grads>), proptest::test_runner::TestCaseError> {
    let results = ssm_context_parallel::ThreadComm::run(case.ranks(), |comm| case.on_rank(comm));
    let mut fwds = Vec::new();
    let mut bwds = Vec::new();
    for r in results {
        let (f, b) = r.map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}")))?;
        fwds.push(f);
        bwds.push(b);
    }
    Ok((fwds, bwds))
}

/// One rank: the context-parallel calls give the plain calls' bits.
pub fn one_rank_is_the_plain_call<C: SplitCase>(
    case: &C,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let (whole, whole_g) = case.whole();
    let (f, g) = run_split(case)?;
    proptest::prop_assert_eq!(&f[0], &whole);
    proptest::prop_assert_eq!(&g[0], &whole_g);
    Ok(())
}

/// The split forward judged against the whole call's: the joined output, and
/// the final states, which every rank must get the same.
pub fn judge_forward<C: SplitCase>(
    case: &C,
    fwds: &[Forward],
    whole: &Forward,
    budget: f64,
    checks: &mut Vec<Check>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let out: Vec<Vec<f32>> = fwds.iter().map(|f| f.out.clone()).collect();
    checks.push(judge(
        "out",
        &widen(&case.join_out(&out)),
        &widen(&whole.out),
        budget,
        0.0,
    ));
    for f in fwds {
        proptest::prop_assert_eq!(
            &f.final_states,
            &fwds[0].final_states,
            "every rank gets the same final states"
        );
    }
    match (&fwds[0].final_states, &whole.final_states) {
        (Some(a), Some(b)) => checks.push(judge("final_states", &widen(a), &widen(b), budget, 0.0)),
        (None, None) => {}
        _ => proptest::prop_assert!(false, "final states present on one side only"),
    }
    Ok(())
}

/// The verdict of a case: every check passed (the failures listed with the
/// segments and offsets).
pub fn all_passed(
    checks: &[Check],
    segs: &[(usize, usize)],
    cu: &Option<Vec<i64>>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.passed).collect();
    proptest::prop_assert!(
        failed.is_empty(),
        "segments {:?} cu {:?}: {:#?}",
        segs,
        cu,
        failed
    );
    Ok(())
}
