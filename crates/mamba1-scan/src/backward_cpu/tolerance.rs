//! How close the f32 backward must come to the f64 oracle, per gradient
//! (docs/TOLERANCES.md, "Mamba-1 backward"). The property tests and the unit
//! tests judge through [`judge_all`].
//!
//! A gradient passes when its relative L2 error is within the forward's budget
//! for its storage type (`1e-5` f32, `4e-3` f16/bf16: `ssm_core::tolerance`),
//! or, where it nearly cancels, when
//!
//! ```text
//! ||got - want|| <= budget ||want|| + gamma(n) ||magnitude||,   gamma(n) = 4 sqrt(n) u32
//! ```
//!
//! with `magnitude` the oracle's sums of absolute terms
//! (`ssm_reference::mamba1_backward::selective_scan_backward_magnitudes`) and
//! `n` the number of f32 terms on the longest chain of sums behind one element
//! ([`reduction_terms`]).

use ssm_core::mamba1::{BcInput, SelectiveScanParams};
use ssm_core::mamba1_grad::ScanGrads;
use ssm_core::tolerance::{compare, rel_l2_budget, subnormal_half_spacing, Comparison};
use ssm_core::{DType, Element};

/// The verdict on one gradient.
#[derive(Clone, Debug)]
pub struct GradVerdict {
    /// The gradient's field name in [`ScanGrads`] (`du`, `ddelta`, ...).
    pub name: &'static str,
    /// The port's gradient against the oracle's (relative L2, max abs, non-finite count).
    pub comparison: Comparison,
    /// The relative budget of the gradient's storage type.
    pub budget: f64,
    /// The absolute allowance `gamma(n) ||magnitude||` (used only when the
    /// relative check fails).
    pub allowance: f64,
    /// Within `budget` relatively, or within the allowance absolutely; never
    /// with a NaN or Inf.
    pub passes: bool,
}

/// `gamma(n) = 4 sqrt(n) u32`: the random-walk size of the rounding errors of
/// `n` f32 additions, relative to the sum of the absolute terms, with a factor
/// 4 of headroom (as `crates/verify/src/conditioning.rs` for the forward).
pub fn gamma(n: usize) -> f64 {
    4.0 * (n as f64).sqrt() * DType::F32.unit_roundoff()
}

/// Terms on the longest chain of f32 sums behind one element of gradient `name`:
/// every gradient goes through the adjoint (a recurrence over at most L steps)
/// and an N-term sum over the state; the reductions add their own length: over
/// time and batch rows (`b L`) for dA, dD, ddelta_bias and constant dB/dC, over
/// the channels of a group for grouped dB/dC.
pub fn reduction_terms<T>(name: &str, p: &SelectiveScanParams<'_, T>) -> usize {
    let dims = p.dims;
    let chain = 2 * dims.d_state + dims.seqlen;
    let over_time = dims.batch * dims.seqlen;
    let bc = |bc: &BcInput<'_, T>| match *bc {
        BcInput::Grouped { groups, .. } => dims.d_inner / groups,
        BcInput::Constant(_) => over_time,
    };
    chain
        + match name {
            "dA" | "dD" | "ddelta_bias" => over_time,
            "dB" => bc(&p.b),
            "dC" => bc(&p.c),
            _ => 0,
        }
}

/// Judge every gradient of `got` against the oracle's `want`, with the
/// oracle's `magnitude` for the cancellation allowance. A gradient present on
/// one side only fails (reported as all non-finite).
pub fn judge_all<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    got: &ScanGrads<T, f32>,
    want: &ScanGrads<f64, f64>,
    magnitude: &ScanGrads<f64, f64>,
) -> Vec<GradVerdict> {
    let got = got.to_f64();
    got.named()
        .into_iter()
        .zip(want.named())
        .zip(magnitude.named())
        .filter_map(|(((name, got), (_, want)), (_, mag))| {
            let dtype = match name {
                "du" | "ddelta" | "dB" | "dC" | "dz" => T::DTYPE,
                _ => DType::F32,
            };
            let budget = rel_l2_budget(dtype, 0.0);
            match (got, want) {
                (None, None) => None,
                (Some(got), Some(want)) => {
                    let comparison = compare(got, want);
                    let mag_norm = mag.map_or(0.0, l2);
                    // Cancellation, plus half a subnormal spacing per element for
                    // gradients stored in a half type (tiny values round coarsely).
                    let allowance = gamma(reduction_terms(name, p)) * mag_norm
                        + subnormal_half_spacing(dtype) * (want.len() as f64).sqrt();
                    let abs_err = comparison.rel_l2 * l2(want).max(f64::MIN_POSITIVE);
                    let passes = comparison.passes(budget)
                        || (comparison.non_finite == 0 && abs_err <= budget * l2(want) + allowance);
                    Some(GradVerdict {
                        name,
                        comparison,
                        budget,
                        allowance,
                        passes,
                    })
                }
                (got, want) => Some(GradVerdict {
                    name,
                    comparison: Comparison {
                        rel_l2: f64::INFINITY,
                        max_abs: f64::INFINITY,
                        non_finite: got.or(want).map_or(1, |v| v.len().max(1)),
                        len: want.map_or(0, |w| w.len()),
                    },
                    budget,
                    allowance: 0.0,
                    passes: false,
                }),
            }
        })
        .collect()
}

fn l2(xs: &[f64]) -> f64 {
    xs.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_core::mamba1::Mamba1Dims;

    #[test]
    fn reduction_terms_follow_the_layout() {
        let dims = Mamba1Dims::new(2, 8, 4, 10);
        let (u, a) = (vec![0f32; 160], vec![0f32; 32]);
        let p = SelectiveScanParams::new(
            dims,
            &u,
            &u,
            &a,
            BcInput::Grouped {
                groups: 2,
                data: &[],
            },
            BcInput::Constant(&a),
        );
        assert_eq!(reduction_terms("du", &p), 18);
        assert_eq!(reduction_terms("dA", &p), 38);
        assert_eq!(reduction_terms("dB", &p), 22);
        assert_eq!(reduction_terms("dC", &p), 38);
        assert!((gamma(100) - 40.0 * 2f64.powi(-24)).abs() < 1e-20);
    }
}
