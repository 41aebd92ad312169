//! How well-conditioned one problem's result is, measured by the oracle itself
//! (docs/FUZZING.md, "The rule"; the derivation is in [`crate::fuzz::verdict`]).
//!
//! The tolerance model bounds the error *relative to the output*, which presumes
//! sums that do not cancel. When `C . h` (or `C . B`) nearly cancels, f32 loses
//! digits relative to the result although every operation is correctly rounded.
//! Two extra oracle runs say how much that is allowed to cost:
//!
//! - `magnitude`: the oracle on the absolute values of every linear input (`|x|`,
//!   `|B|`, `|C|`, `|D|`, `|h0|`; step sizes, rates and gates unchanged), the sums
//!   of absolute terms the classic rounding-error bounds are stated in;
//! - `shifted`: the oracle with every rate `A` moved outwards by 8 f32 ulps, the
//!   result's sensitivity to the rounding of `dt A` in the exponent.
//!
//! The fuzzers and the property tests share these, so both judge a near
//! cancellation the same way. Both runs are meant to be computed only when the
//! plain relative check fails.

use ssm_core::mamba1::{BcInput, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdParams};
use ssm_core::tolerance::Comparison;
use ssm_core::{DType, Element, ScanOutput};

use crate::gen::StepData;
use crate::impls::{Family, StepImpl};

/// The oracle's answers that widen a relative check for one problem.
#[derive(Clone, Debug, Default)]
pub struct Conditioning {
    /// The oracle on the absolute values of the linear inputs.
    pub magnitude: Option<ScanOutput<f64, f64>>,
    /// The oracle with the rates moved by [`shift_rates`].
    pub shifted: Option<ScanOutput<f64, f64>>,
}

impl Conditioning {
    /// Both runs for a Mamba-1 selective scan.
    pub fn of_scan<T: Element>(p: &SelectiveScanParams<'_, T>) -> Self {
        Conditioning {
            magnitude: scan_magnitude(p),
            shifted: scan_shifted(p),
        }
    }

    /// Both runs for a Mamba-2 SSD.
    pub fn of_ssd<T: Element>(p: &SsdParams<'_, T>) -> Self {
        Conditioning {
            magnitude: ssd_magnitude(p),
            shifted: ssd_shifted(p),
        }
    }

    /// Both runs for one decode step of `family` (inputs rounded to f32).
    pub fn of_step(family: Family, data: &StepData) -> Self {
        let run = |d: &StepData| {
            StepImpl::Reference
                .run(family, &d.inputs::<f32>(), None)
                .ok()
        };
        let magnitude = StepData {
            x: abs_of(&data.x),
            b: abs_of(&data.b),
            c: abs_of(&data.c),
            d: data.d.as_deref().map(abs_of),
            state: abs_of(&data.state),
            ..data.clone()
        };
        let shifted = StepData {
            a: shift_rates(&data.a),
            ..data.clone()
        };
        Conditioning {
            magnitude: run(&magnitude),
            shifted: run(&shifted),
        }
    }

    /// Absolute L2 allowance for the outputs (`states`: the final states) of a
    /// result whose oracle answer is `want`: `gamma * ||magnitude|| + ||shifted - want||`.
    pub fn allowance(&self, want: &[f64], gamma: f64, states: bool) -> f64 {
        let mag = part(self.magnitude.as_ref(), states).map_or(0.0, l2);
        let shift = part(self.shifted.as_ref(), states)
            .filter(|s| s.len() == want.len())
            .map_or(0.0, |s| {
                l2(&s.iter().zip(want).map(|(s, w)| s - w).collect::<Vec<_>>())
            });
        gamma * mag + shift
    }
}

/// The conditioning coefficient of an f32 implementation whose longest
/// reductions add up to `reduction` terms: `4 sqrt(n) u` (the probabilistic
/// growth of Higham and Mary, 2019), plus `4 eps32 K` for a chunked
/// implementation whose decay factors come from cumulative sums over windows of
/// largest `sum |dt A|` = `k` (0 for step-by-step implementations).
pub fn f32_gamma(reduction: usize, k: f64) -> f64 {
    4.0 * (reduction as f64).sqrt() * f32::EPSILON as f64 / 2.0 + log_decay_gamma(k)
}

/// The part of [`f32_gamma`] from decay factors formed as differences of f32
/// cumulative sums over windows of largest `sum |dt A|` = `k`: `4 eps32 k`.
pub fn log_decay_gamma(k: f64) -> f64 {
    4.0 * f32::EPSILON as f64 * k
}

/// Half the spacing of an element type's subnormals: the absolute error of
/// rounding a tiny output to it (the per-element `floor` of [`within`] for
/// outputs stored as `dtype`).
pub fn subnormal_half_ulp(dtype: DType) -> f64 {
    ssm_core::tolerance::subnormal_half_spacing(dtype)
}

/// Within the relative `budget`; failing that, an absolute L2 error within
/// `budget * ||reference|| + allowance() + floor * sqrt(len)`. Non-finite
/// values where the reference is finite always fail. `allowance` runs only when
/// the relative check fails.
pub fn within(
    c: &Comparison,
    reference: &[f64],
    budget: f64,
    floor: f64,
    allowance: impl FnOnce() -> f64,
) -> bool {
    if c.non_finite > 0 {
        return false;
    }
    if c.rel_l2 <= budget {
        return true;
    }
    let ref_l2 = l2(reference);
    let abs_l2 = if ref_l2 > 0.0 {
        c.rel_l2 * ref_l2
    } else {
        c.rel_l2
    };
    abs_l2 <= budget * ref_l2 + allowance() + floor * (reference.len() as f64).sqrt()
}

/// The L2 norm of the finite values.
pub fn l2(xs: &[f64]) -> f64 {
    xs.iter()
        .filter(|v| v.is_finite())
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
}

/// The outputs (`states`: the final states) of an oracle run, if it has them.
fn part(o: Option<&ScanOutput<f64, f64>>, states: bool) -> Option<&[f64]> {
    let o = o?;
    if states {
        o.final_states.as_deref()
    } else {
        Some(&o.out)
    }
}

/// Rates moved outwards by 8 f32 ulps: at least 4 eps32 relative for normal
/// values (an ulp is between eps32 / 2 and eps32 of the value). Zero and values
/// whose shift would not be finite stay as they are.
pub fn shift_rates(a: &[f32]) -> Vec<f32> {
    a.iter()
        .map(|&v| {
            let moved = f32::from_bits(v.to_bits().wrapping_add(8));
            if v == 0.0 || !v.is_finite() || !moved.is_finite() {
                v
            } else {
                moved
            }
        })
        .collect()
}

/// `|x|` elementwise (exact in every element type).
pub fn abs_of<T: Element>(xs: &[T]) -> Vec<T> {
    xs.iter().map(|v| T::from_f64(v.to_f64().abs())).collect()
}

/// The scan oracle on the absolute values of the linear inputs (`None` where it fails).
pub fn scan_magnitude<T: Element>(p: &SelectiveScanParams<'_, T>) -> Option<ScanOutput<f64, f64>> {
    let (u, b, c) = (abs_of(p.u), abs_of(p.b.data()), abs_of(p.c.data()));
    let (d, h0) = (p.d.map(abs_of), p.initial_states.map(abs_of));
    let like = |bc: &BcInput<'_, T>, data| match *bc {
        BcInput::Grouped { groups, .. } => BcInput::Grouped { groups, data },
        BcInput::Constant(_) => BcInput::Constant(data),
    };
    let q = SelectiveScanParams {
        u: &u,
        b: like(&p.b, &b),
        c: like(&p.c, &c),
        d: d.as_deref(),
        initial_states: h0.as_deref(),
        ..*p
    };
    ssm_reference::selective_scan(&q).ok()
}

/// The scan oracle with the rates moved by [`shift_rates`].
pub fn scan_shifted<T: Element>(p: &SelectiveScanParams<'_, T>) -> Option<ScanOutput<f64, f64>> {
    let a = shift_rates(p.a);
    ssm_reference::selective_scan(&SelectiveScanParams { a: &a, ..*p }).ok()
}

/// The SSD oracle on the absolute values of the linear inputs (`None` where it fails).
pub fn ssd_magnitude<T: Element>(p: &SsdParams<'_, T>) -> Option<ScanOutput<f64, f64>> {
    let (x, b, c) = (abs_of(p.x), abs_of(p.b), abs_of(p.c));
    let s0 = p.initial_states.map(abs_of);
    let d = p.d.as_ref().map(|d| abs_of(d.data()));
    let q = SsdParams {
        x: &x,
        b: &b,
        c: &c,
        initial_states: s0.as_deref(),
        d: match (&p.d, &d) {
            (Some(DSkip::PerHead(_)), Some(d)) => Some(DSkip::PerHead(d)),
            (Some(DSkip::PerHeadDim(_)), Some(d)) => Some(DSkip::PerHeadDim(d)),
            _ => None,
        },
        ..*p
    };
    ssm_reference::ssd_recurrence(&q).ok()
}

/// The SSD oracle with the rates moved by [`shift_rates`].
pub fn ssd_shifted<T: Element>(p: &SsdParams<'_, T>) -> Option<ScanOutput<f64, f64>> {
    let a = shift_rates(p.a);
    ssm_reference::ssd_recurrence(&SsdParams { a: &a, ..*p }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_move_outwards_by_at_least_four_eps() {
        let eps = f32::EPSILON as f64;
        for a in [-1.0f32, -1.9999999, -3.0e-3, -7.5e4, 2.0] {
            let moved = shift_rates(&[a])[0] as f64;
            let rel = moved / a as f64 - 1.0;
            assert!((4.0 * eps..=8.0 * eps).contains(&rel), "{a}: {rel:e}");
        }
        assert_eq!(
            shift_rates(&[0.0, f32::NEG_INFINITY, -f32::MAX]),
            [0.0, f32::NEG_INFINITY, -f32::MAX]
        );
    }

    #[test]
    fn the_gamma_of_a_chunked_implementation_grows_with_its_log_decay() {
        let step = f32_gamma(64, 0.0);
        assert!((step - 16.0 * f32::EPSILON as f64).abs() < 1e-20);
        assert!(f32_gamma(64, 185.0) > step + 700.0 * f32::EPSILON as f64);
    }
}
