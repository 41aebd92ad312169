//! How close the f32 chunked backward must come to the f64 adjoint, per
//! gradient (docs/TOLERANCES.md, "Backward"). The property tests
//! (`tests/backward_support`) and the differential fuzz target
//! (`ssm_verify::fuzz`, `ssd_bwd_diff`) judge through [`judge_grads`].
//!
//! A gradient passes when its relative L2 error is within the forward's budget
//! for its storage type at the problem's chunked log-decay `K`
//! (`ssm_core::tolerance::rel_l2_budget`), or, where it nearly cancels, when
//!
//! ```text
//! ||got - want|| <= budget ||want|| + gamma ||magnitude||
//! ```
//!
//! with `magnitude` the oracle's sums of absolute terms
//! (`ssm_reference::ssd_backward::ssd_backward_magnitude`) and `gamma` from
//! [`reduction_gamma`].

use ssm_core::mamba2::SsdParams;
use ssm_core::mamba2_grad::GradRef;
use ssm_core::tolerance::{compare, rel_l2_budget, subnormal_half_spacing};
use ssm_core::{DType, Element, SsdGrads};

/// One gradient's comparison.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// The gradient's field name in [`SsdGrads`] (`dx`, `ddt`, ...).
    pub name: &'static str,
    /// Relative L2 error of the port against the oracle (absolute L2 where the
    /// oracle's gradient is all zero).
    pub rel_l2: f64,
    /// Largest elementwise absolute difference.
    pub max_abs: f64,
    /// The relative L2 budget for this gradient's storage type and the problem's
    /// log-decay (`ssm_core::tolerance::rel_l2_budget`).
    pub budget: f64,
    /// The absolute allowance for a cancelling reduction (0 where none applies).
    pub allowance: f64,
    /// Within `budget` relatively, or within `budget * |want| + allowance`
    /// absolutely; never with a NaN or Inf.
    pub passed: bool,
}

/// Judge every gradient of `got` (the port's, widened to f64) against the
/// oracle's `want`, for a run with chunk length `chunk` on a problem whose
/// largest chunked log-decay is `k`. `magnitude` (the oracle on absolute
/// values) is called at most once, only when a relative check fails.
///
/// Panics when the two sides return different sets of gradients: both are
/// computed from the same parameters, so that is a bug of the caller's setup.
pub fn judge_grads<T: Element>(
    p: &SsdParams<'_, T>,
    got: &SsdGrads<f64, f64>,
    want: &SsdGrads<f64, f64>,
    chunk: usize,
    k: f64,
    magnitude: impl FnOnce() -> SsdGrads<f64, f64>,
) -> Vec<GradCheck> {
    let gamma = reduction_gamma(p, chunk, k);
    let mags = std::cell::OnceCell::new();
    let mut magnitude = Some(magnitude);
    let mut magnitude_of = |name: &str| -> f64 {
        let m: &SsdGrads<f64, f64> =
            mags.get_or_init(|| (magnitude.take().expect("called once"))());
        let (_, m) = m
            .named()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("same gradients");
        match m {
            GradRef::Input(m) | GradRef::Param(m) => l2(m),
        }
    };
    let (g, w) = (got.named(), want.named());
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
            // Cancellation (the magnitude oracle's reductions), plus half a
            // subnormal spacing per element for gradients stored in a half type.
            let allowance = if relative {
                0.0
            } else {
                gamma * magnitude_of(name)
                    + subnormal_half_spacing(dtype) * (want.len() as f64).sqrt()
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
pub fn reduction_gamma<T>(p: &SsdParams<'_, T>, chunk: usize, k: f64) -> f64 {
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

/// Euclidean norm of `v`.
pub fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}
