//! Error metrics and the tolerance model (docs/DESIGN.md §4; derivation in
//! docs/TOLERANCES.md).
//!
//! The oracle is fed exactly the inputs the implementation saw (already rounded
//! to its input dtype), so the error left is the implementation's own: f32
//! arithmetic and the final rounding of the output to its storage type.
//!
//! Budget on the relative L2 error `||out - ref|| / ||ref||`:
//!
//! ```text
//! budget = base(out dtype) + 4 * eps32 * K
//! base   = 1e-5 for f32/f64 outputs, 4e-3 for f16/bf16 outputs
//! K      = largest cumulative log-decay |sum a_t| that the implementation
//!          exponentiates as a difference of two f32 cumulative sums
//! ```
//!
//! * `base` for half outputs: rounding the output alone costs a relative RMS error
//!   of u/sqrt(3) (1.1e-3 for bf16, 2.8e-4 for f16); the rest is headroom for the
//!   f32 accumulation, which mamba_ssm measures at about 2.4e-3 overall.
//! * `base` for f32: reductions of length N (and of the chunk length Q) in f32 give
//!   errors near sqrt(N + Q) * eps32 ~ 2e-6 for N = 256, Q = 256.
//! * `K`: a chunked implementation forms `exp(s_i - s_j)` from f32 cumulative sums;
//!   each sum carries an absolute rounding error of about eps32 * |s|, which becomes
//!   a relative error of the decay factor. Step-by-step recurrences exponentiate
//!   one step at a time and have `K = 0`. See [`max_window_log_decay`].
//!
//! NaN or Inf in the output (where the reference is finite) always fails.

use crate::DType;

/// Result of comparing an output with the reference.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// `||out - ref||_2 / ||ref||_2` (absolute L2 error when `||ref|| = 0`).
    pub rel_l2: f64,
    /// Largest `|out - ref|` over elements.
    pub max_abs: f64,
    /// Elements that are NaN or infinite in `out` while finite in `ref`.
    pub non_finite: usize,
    /// Elements of the reference.
    pub len: usize,
}

impl Comparison {
    /// No non-finite element and `rel_l2 <= budget`.
    pub fn passes(&self, budget: f64) -> bool {
        self.non_finite == 0 && self.rel_l2 <= budget
    }
}

/// Compare `out` against `reference` (same length; shorter input compares the prefix
/// and counts missing elements as non-finite so that a short output never passes).
pub fn compare(out: &[f64], reference: &[f64]) -> Comparison {
    let n = out.len().min(reference.len());
    let mut diff2 = 0.0;
    let mut ref2 = 0.0;
    let mut max_abs: f64 = 0.0;
    let mut non_finite = out.len().abs_diff(reference.len());
    for (&o, &r) in out[..n].iter().zip(&reference[..n]) {
        if !o.is_finite() && r.is_finite() {
            non_finite += 1;
            continue;
        }
        let d = o - r;
        diff2 += d * d;
        ref2 += r * r;
        max_abs = max_abs.max(d.abs());
    }
    let rel_l2 = if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    Comparison {
        rel_l2,
        max_abs,
        non_finite,
        len: reference.len(),
    }
}

/// Relative-L2 budget for an output stored as `out_dtype`, see the module docs.
pub fn rel_l2_budget(out_dtype: DType, max_log_decay: f64) -> f64 {
    let base = match out_dtype {
        DType::F64 | DType::F32 => 1e-5,
        DType::F16 | DType::Bf16 => 4e-3,
    };
    base + 4.0 * f32::EPSILON as f64 * max_log_decay.abs()
}

/// Half the spacing of `dtype`'s subnormals: rounding a value that small to
/// `dtype` can be off by this much absolutely, whatever its relative budget says
/// (an f16 gradient of 5e-6 is stored to within 3e-8, 0.6% of itself). The
/// forward's conditioning rule and the backward judges allow it per element.
pub fn subnormal_half_spacing(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 0.0,
        DType::F32 => 2f64.powi(-150),
        DType::F16 => 2f64.powi(-25),
        DType::Bf16 => 2f64.powi(-134),
    }
}

/// Budget for final states (always f32) of a computation fed `in_dtype` inputs.
pub fn state_budget(max_log_decay: f64) -> f64 {
    rel_l2_budget(DType::F32, max_log_decay)
}

/// Unit roundoff `u = 2^-p` of a storage type with `p` significant bits: the
/// largest relative error of rounding to nearest (bf16 2^-8, f16 2^-11, f32
/// 2^-24, f64 2^-53).
pub fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 2f64.powi(-53),
        DType::F32 => 2f64.powi(-24),
        DType::F16 => 2f64.powi(-11),
        DType::Bf16 => 2f64.powi(-8),
    }
}

/// Budget for a decode state cache stored as `state_dtype` after `steps`
/// decode steps from an initial state exactly representable in it (docs/
/// TOLERANCES.md, "A state stored in 16 bits"): each step rounds every stored
/// element once (relative RMS at most `u / sqrt(3)`), the contractive update
/// carries old roundings forward at most undamped, and independent roundings add
/// like a random walk:
///
/// ```text
/// stored_state_budget = state_budget(0) + sqrt(steps) * u(state_dtype)
/// ```
///
/// (`u` instead of `u / sqrt(3)`: the same headroom over the rounding alone as
/// the half-output base, 4e-3 over 2.3e-3.) An f32 state is [`state_budget`]`(0)`.
pub fn stored_state_budget(state_dtype: DType, steps: usize) -> f64 {
    match state_dtype {
        DType::F32 | DType::F64 => state_budget(0.0),
        DType::F16 | DType::Bf16 => {
            state_budget(0.0) + (steps.max(1) as f64).sqrt() * unit_roundoff(state_dtype)
        }
    }
}

/// Budget for the output (stored as `out_dtype`) of decode step `step` (1 for
/// the first) when the state is stored as `state_dtype`: the output of a step is
/// formed from the unrounded f32 state in registers, so only the `step - 1`
/// earlier roundings of the stored state reach it, through `C . S` (relative
/// error of the sum about that of the state):
///
/// ```text
/// budget = rel_l2_budget(out_dtype, 0) + sqrt(step - 1) * u(state_dtype)
/// ```
pub fn stored_state_output_budget(out_dtype: DType, state_dtype: DType, step: usize) -> f64 {
    let carried = match state_dtype {
        DType::F32 | DType::F64 => 0.0,
        DType::F16 | DType::Bf16 => {
            (step.saturating_sub(1) as f64).sqrt() * unit_roundoff(state_dtype)
        }
    };
    rel_l2_budget(out_dtype, 0.0) + carried
}

/// `K` of the tolerance model: the largest `sum |log_decay|` over any `window`
/// consecutive steps of any row. `log_decays` holds rows of `row_len` steps.
pub fn max_window_log_decay(log_decays: &[f64], row_len: usize, window: usize) -> f64 {
    if row_len == 0 || window == 0 {
        return 0.0;
    }
    let mut best: f64 = 0.0;
    for row in log_decays.chunks(row_len) {
        // Chunks start at multiples of the window, as chunked kernels cut them.
        for chunk in row.chunks(window) {
            best = best.max(chunk.iter().map(|a| a.abs()).sum());
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_have_zero_error() {
        let c = compare(&[1.0, 2.0], &[1.0, 2.0]);
        assert_eq!(c.rel_l2, 0.0);
        assert!(c.passes(0.0));
    }

    #[test]
    fn nan_and_short_outputs_always_fail() {
        assert!(!compare(&[f64::NAN, 2.0], &[1.0, 2.0]).passes(1.0));
        assert!(!compare(&[1.0], &[1.0, 2.0]).passes(1.0));
    }

    #[test]
    fn relative_error_is_scale_free() {
        let a = compare(&[1.1, 2.0], &[1.0, 2.0]);
        let b = compare(&[110.0, 200.0], &[100.0, 200.0]);
        assert!((a.rel_l2 - b.rel_l2).abs() < 1e-12);
        assert!((a.max_abs - 0.1).abs() < 1e-12);
    }

    #[test]
    fn budget_grows_with_log_decay() {
        assert_eq!(rel_l2_budget(DType::F32, 0.0), 1e-5);
        assert!(rel_l2_budget(DType::F32, 1000.0) > 4e-4);
        assert_eq!(rel_l2_budget(DType::Bf16, 0.0), 4e-3);
    }

    #[test]
    fn stored_state_budgets() {
        // An f32 state keeps the f32 budget whatever the steps.
        assert_eq!(stored_state_budget(DType::F32, 8), state_budget(0.0));
        assert_eq!(stored_state_output_budget(DType::F32, DType::F32, 8), 1e-5);
        // bf16: one rounding (u = 2^-8 = 3.9e-3) per step, added in quadrature.
        let one = stored_state_budget(DType::Bf16, 1);
        assert!((one - (1e-5 + 2f64.powi(-8))).abs() < 1e-12);
        let four = stored_state_budget(DType::Bf16, 4);
        assert!((four - (1e-5 + 2.0 * 2f64.powi(-8))).abs() < 1e-12);
        assert!(stored_state_budget(DType::F16, 4) < four / 4.0);
        // The first step's output sees no stored rounding.
        assert_eq!(
            stored_state_output_budget(DType::Bf16, DType::Bf16, 1),
            rel_l2_budget(DType::Bf16, 0.0)
        );
        assert!(stored_state_output_budget(DType::F32, DType::Bf16, 5) > 7e-3);
        assert_eq!(unit_roundoff(DType::F16), 2f64.powi(-11));
    }

    #[test]
    fn window_log_decay() {
        let a = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        assert_eq!(max_window_log_decay(&a, 3, 2), 9.0);
        assert_eq!(max_window_log_decay(&a, 6, 4), 11.0);
    }
}
