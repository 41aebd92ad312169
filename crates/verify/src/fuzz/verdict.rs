//! The rule every fuzzed implementation is held to (docs/FUZZING.md, "The rule").
//!
//! The oracle runs first on exactly the inputs the implementation sees. Then:
//!
//! | class | when | the implementation must |
//! | --- | --- | --- |
//! | `Invalid` | the oracle returns an error | return an error (the same one, for the CPU ports) |
//! | `InModel` | inputs finite, `dt' >= 0`, no decay above 1, the envelope fits the implementation's precision, the oracle's outputs fit the output type | match the oracle within the tolerance model, widened for ill-conditioned sums, for decays far from 1 and for underflow (below) |
//! | `NonFinite` | some input is NaN/Inf, otherwise as `InModel` | be finite wherever the oracle is finite |
//! | `OutOfRange` | anything else (growth, a non-finite `dt'` or `A`, overflow of the precision or the output type, a tolerance budget of 100% or more) | not panic, return `Ok` with outputs of the right shape |
//!
//! In every class the call must not panic, and a CUDA implementation may decline
//! a problem with `SsmError::Unsupported`.
//!
//! The tolerance model bounds the error *relative to the output*. That presumes
//! well-conditioned sums: when `C . h` (or `C . B`) nearly cancels, f32 loses
//! digits relative to the result although every operation is correctly rounded
//! (one token with G = 1 shares one `C . B` across all outputs, so one near
//! cancellation fails the whole comparison). An `InModel` result therefore passes
//! when its absolute L2 error is within
//!
//! ```text
//! budget * ||ref|| + gamma * ||mag|| + ||shifted - ref|| + floor * sqrt(len)
//! gamma = 4 sqrt(n) u + 4 eps32 K,   n = N + L + P (the longest reductions)
//! ```
//!
//! where `mag` is the oracle run on the absolute values of every linear input
//! (`|u|, |B|, |C|, |D|, |h0|`; step sizes, rates and gates unchanged): the sums
//! of absolute terms that the classic rounding-error bounds are stated in, with the
//! probabilistic `sqrt(n)` growth of Higham and Mary (2019). `K` is the tolerance
//! model's cumulative log-decay (0 for step-by-step implementations): a chunked
//! implementation's decay factors carry a relative error of up to `4 eps32 K`
//! each, which near cancellation is relative to the terms, not to the sum.
//!
//! `shifted` is the oracle with every rate `A` moved outwards by 8 f32 ulps (at
//! least 4 eps32 relative, [`shift_rates`]): the conditioning of the result in
//! its log-decays. An f32 implementation rounds each `dt A` (and `A log2 e`) to
//! a few eps32 relative, which is an *absolute* error of `eps32 |dt A|` in the
//! exponent, so a decay `exp(dt A) = exp(-100)` is off by 1e-5 relative however
//! carefully it is computed. It matters when the result is dominated by such a
//! decayed term (a tiny input next to a state that decayed by `exp(-100)` in one
//! step: the fuzzer's `x:Tiny A:VeryNegative`), and it is zero where nothing
//! decays. Both widenings are computed only when the plain relative check fails.
//! `floor` is the underflow floor of [`super::envelope`].

use ssm_core::tolerance::compare;
use ssm_core::{DType, Result, ScanOutput, SsmError};

use super::envelope::Envelope;
use crate::conditioning::{f32_gamma, log_decay_gamma, subnormal_half_ulp, within};
pub use crate::conditioning::{shift_rates, Conditioning};

/// Which rule applies to one implementation on one problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// The oracle returned an error: the implementation must return one too.
    Invalid,
    /// Inside the tolerance model: match the oracle within the widened budget.
    InModel,
    /// Some input is NaN or Inf: be finite wherever the oracle is.
    NonFinite,
    /// Outside the model: only no panic and outputs of the right shape.
    OutOfRange,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 4] = [
        Class::Invalid,
        Class::InModel,
        Class::NonFinite,
        Class::OutOfRange,
    ];

    /// The class of an implementation computing in a precision whose largest finite
    /// value is `max_finite`, with outputs stored as `out_dtype` (`None`: not rounded).
    pub fn of(
        env: &Envelope,
        want: &ScanOutput<f64, f64>,
        max_finite: f64,
        out_dtype: Option<DType>,
    ) -> Class {
        if env.growth || !env.finite_log_decays || !env.fits(max_finite) {
            return Class::OutOfRange;
        }
        let out_max = want
            .out
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        if out_dtype.is_some_and(|t| out_max > largest_finite(t) / 2.0) {
            return Class::OutOfRange;
        }
        if !env.finite_inputs {
            return Class::NonFinite;
        }
        Class::InModel
    }
}

impl Class {
    /// `InModel` only while the model's own budget bounds something: a relative
    /// budget of 1 or more (a chunked implementation whose cumulative log-decay
    /// over a chunk passes `1 / (4 eps) = 2e6`, e.g. one `dt = 1e20`, where f32
    /// cumulative sums lose every later step) says nothing, so the problem is
    /// `OutOfRange` for that implementation.
    pub fn bounded_by(self, budget: &Budget) -> Class {
        if self == Class::InModel && (budget.out >= 1.0 || budget.state >= 1.0) {
            Class::OutOfRange
        } else {
            self
        }
    }
}

/// Largest finite value of an element type.
pub fn largest_finite(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MAX,
        DType::F32 => f32::MAX as f64,
        DType::F16 => half::f16::MAX.to_f64(),
        DType::Bf16 => half::bf16::MAX.to_f64(),
    }
}

/// Budgets of one implementation: relative L2 for outputs and states, the
/// conditioning coefficient `gamma` and the absolute floors (per element) that
/// underflow may add (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Relative L2 budget of the output.
    pub out: f64,
    /// Relative L2 budget of the final states.
    pub state: f64,
    /// The conditioning coefficient `gamma` (module docs).
    pub gamma: f64,
    /// Absolute underflow floor per output element.
    pub out_floor: f64,
    /// Absolute underflow floor per state element.
    pub state_floor: f64,
}

impl Budget {
    /// Nothing is compared (the `Invalid` class).
    pub const NONE: Budget = Budget {
        out: 0.0,
        state: 0.0,
        gamma: 0.0,
        out_floor: 0.0,
        state_floor: 0.0,
    };

    /// An f32 implementation whose outputs are stored as `out_dtype`; `reduction`
    /// is the `n` of `gamma`.
    pub fn f32(out: f64, state: f64, out_dtype: DType, reduction: usize, env: &Envelope) -> Self {
        let underflow = f32::MIN_POSITIVE as f64 * env.amplification;
        Budget {
            out,
            state,
            gamma: f32_gamma(reduction, 0.0),
            out_floor: underflow + subnormal_half_ulp(out_dtype),
            state_floor: underflow,
        }
    }

    /// A chunked implementation whose decays come from cumulative sums over
    /// windows of largest `sum |a|` = `k`: each term's decay may be off by
    /// `4 eps32 k` relative, so near cancellation that much of `||mag||` is allowed
    /// too (module docs).
    pub fn with_log_decay(self, k: f64) -> Self {
        Budget {
            gamma: self.gamma + log_decay_gamma(k),
            ..self
        }
    }

    /// An f64 implementation (the quadratic form): `1e-9` plus the growth of the
    /// rounding of its f64 cumulative sums over `k` (the largest `sum |a|`).
    pub fn f64(k: f64, reduction: usize, env: &Envelope) -> Self {
        let b = 1e-9 + 8.0 * f64::EPSILON * k;
        let underflow = f64::MIN_POSITIVE * env.amplification;
        Budget {
            out: b,
            state: b,
            gamma: 4.0 * (reduction as f64).sqrt() * f64::EPSILON / 2.0 + 8.0 * f64::EPSILON * k,
            out_floor: underflow,
            state_floor: underflow,
        }
    }
}

/// Elements finite in `want` but not in `got`.
fn newly_non_finite(got: &[f64], want: &[f64]) -> usize {
    got.iter()
        .zip(want)
        .filter(|(g, w)| w.is_finite() && !g.is_finite())
        .count()
}

/// Check one implementation's result against the oracle's under `class`.
/// `may_decline`: the implementation may answer `SsmError::Unsupported`;
/// `conditioning`: the widening oracle runs (module docs), computed on demand.
/// Returns `Ok(false)` when it declined, `Ok(true)` when checked, `Err(why)` on a finding.
pub fn judge<'m>(
    class: Class,
    got: &Result<ScanOutput<f64, f64>>,
    want: &Result<ScanOutput<f64, f64>>,
    budget: &Budget,
    may_decline: bool,
    conditioning: impl Fn() -> &'m Conditioning,
) -> std::result::Result<bool, String> {
    let (got, want) = match (got, want) {
        (Err(SsmError::Unsupported { .. }), _) if may_decline => return Ok(false),
        (Err(g), Err(w)) => {
            // By message: `NonFinite` carries the value, and NaN != NaN.
            return if may_decline || g.to_string() == w.to_string() {
                Ok(true)
            } else {
                Err(format!(
                    "rejected the problem with a different error than the oracle: `{g}` vs `{w}`"
                ))
            };
        }
        (Ok(_), Err(w)) => return Err(format!("accepted a problem the oracle rejects (`{w}`)")),
        (Err(g), Ok(_)) => {
            return Err(format!(
                "returned an error where the oracle succeeds: `{g}`"
            ))
        }
        (Ok(g), Ok(w)) => (g, w),
    };
    debug_assert_ne!(class, Class::Invalid);
    if got.out.len() != want.out.len() {
        return Err(format!(
            "output has {} elements, the oracle's {}",
            got.out.len(),
            want.out.len()
        ));
    }
    let states = match (&got.final_states, &want.final_states) {
        (None, None) => None,
        (Some(g), Some(w)) if g.len() == w.len() => Some((g, w)),
        (g, w) => {
            return Err(format!(
                "final states: {:?} elements, the oracle's {:?}",
                g.as_ref().map(Vec::len),
                w.as_ref().map(Vec::len)
            ))
        }
    };
    match class {
        Class::Invalid | Class::OutOfRange => {}
        Class::NonFinite => {
            let bad_out = newly_non_finite(&got.out, &want.out);
            let bad_state = states.map_or(0, |(g, w)| newly_non_finite(g, w));
            if bad_out + bad_state > 0 {
                return Err(format!(
                    "non-finite where the oracle is finite: {bad_out} outputs, {bad_state} state values"
                ));
            }
        }
        Class::InModel => {
            let out = compare(&got.out, &want.out);
            let allow_out = || conditioning().allowance(&want.out, budget.gamma, false);
            if !within(&out, &want.out, budget.out, budget.out_floor, allow_out) {
                return Err(format!(
                    "output: rel L2 {:.3e} (budget {:.1e}, floor {:.1e}), max abs {:.3e}, non-finite {}",
                    out.rel_l2, budget.out, budget.out_floor, out.max_abs, out.non_finite
                ));
            }
            if let Some((g, w)) = states {
                let st = compare(g, w);
                let allow_state = || conditioning().allowance(w, budget.gamma, true);
                if !within(&st, w, budget.state, budget.state_floor, allow_state) {
                    return Err(format!(
                        "final states: rel L2 {:.3e} (budget {:.1e}, floor {:.1e}), max abs {:.3e}, non-finite {}",
                        st.rel_l2, budget.state, budget.state_floor, st.max_abs, st.non_finite
                    ));
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            finite_inputs: true,
            growth: false,
            finite_log_decays: true,
            peak: 10.0,
            amplification: 1e6,
        }
    }

    fn no_mag() -> &'static Conditioning {
        static NONE: Conditioning = Conditioning {
            magnitude: None,
            shifted: None,
        };
        &NONE
    }

    fn out(v: &[f64]) -> Result<ScanOutput<f64, f64>> {
        Ok(ScanOutput {
            out: v.to_vec(),
            final_states: None,
        })
    }

    #[test]
    fn classes_follow_the_envelope_and_the_output_range() {
        let want = out(&[1.0, 70_000.0]).unwrap();
        assert_eq!(
            Class::of(&env(), &want, f32::MAX as f64, None),
            Class::InModel
        );
        assert_eq!(
            Class::of(&env(), &want, f32::MAX as f64, Some(DType::F16)),
            Class::OutOfRange
        );
        let grow = Envelope {
            growth: true,
            ..env()
        };
        assert_eq!(Class::of(&grow, &want, f64::MAX, None), Class::OutOfRange);
        let nan = Envelope {
            finite_inputs: false,
            ..env()
        };
        assert_eq!(Class::of(&nan, &want, f64::MAX, None), Class::NonFinite);
    }

    #[test]
    fn a_budget_of_100_percent_takes_the_problem_out_of_the_model() {
        let b = Budget::f32(0.2, 0.2, DType::F32, 16, &env());
        assert_eq!(Class::InModel.bounded_by(&b), Class::InModel);
        let b = Budget::f32(1.5, 1e-5, DType::F32, 16, &env());
        assert_eq!(Class::InModel.bounded_by(&b), Class::OutOfRange);
        assert_eq!(Class::NonFinite.bounded_by(&b), Class::NonFinite);
    }

    #[test]
    fn in_model_holds_to_the_budget_and_always_rejects_nan() {
        let b = Budget::f32(1e-5, 1e-5, DType::F32, 16, &env());
        let want = out(&[1.0, 2.0]);
        let judge_as = |class, got: &[f64]| judge(class, &out(got), &want, &b, false, no_mag);
        assert_eq!(judge_as(Class::InModel, &[1.0, 2.0]), Ok(true));
        assert!(judge_as(Class::InModel, &[1.001, 2.0]).is_err());
        assert!(judge_as(Class::InModel, &[f64::NAN, 2.0]).is_err());
        assert!(judge_as(Class::OutOfRange, &[f64::NAN, 2.0]).is_ok());
        assert!(judge_as(Class::OutOfRange, &[1.0]).is_err());
    }

    #[test]
    fn the_floor_absorbs_underflow_only() {
        let b = Budget::f32(1e-5, 1e-5, DType::F32, 16, &env());
        // Outputs near 1e-38: an f32 port that flushed them is within the floor.
        let want = out(&[3e-38, -2e-38]);
        assert!(judge(Class::InModel, &out(&[0.0, 0.0]), &want, &b, false, no_mag).is_ok());
        let want = out(&[3e-3, -2e-3]);
        assert!(judge(Class::InModel, &out(&[0.0, 0.0]), &want, &b, false, no_mag).is_err());
    }

    #[test]
    fn cancellation_is_judged_against_the_sum_of_absolute_terms() {
        let b = Budget::f32(1e-5, 1e-5, DType::F32, 16, &env());
        // A result of 1e-3 from terms of size 10: f32 rounding of the terms alone
        // is 6e-7 absolute, 6e-4 relative.
        let want = out(&[1e-3]);
        let got = out(&[1e-3 + 6e-7]);
        let mag = Conditioning {
            magnitude: out(&[10.0]).ok(),
            shifted: None,
        };
        assert!(judge(Class::InModel, &got, &want, &b, false, no_mag).is_err());
        assert!(judge(Class::InModel, &got, &want, &b, false, || &mag).is_ok());
        // Ten times the rounding error is still a finding.
        let got = out(&[1e-3 + 6e-5]);
        assert!(judge(Class::InModel, &got, &want, &b, false, || &mag).is_err());
    }

    #[test]
    fn a_decay_of_exp_minus_60_is_judged_by_its_conditioning() {
        let b = Budget::f32(1e-5, 1e-5, DType::F32, 16, &env());
        // y = exp(dt A) h with dt A = -60: rounding dt A by 2 eps32 moves y by
        // 1.4e-5 relative.
        let y = (-60.0f64).exp();
        let want = out(&[y]);
        let got = out(&[y * (1.0 + 1.4e-5)]);
        let a = [-60.0f32];
        let shifted_rate = shift_rates(&a)[0] as f64;
        assert!(shifted_rate / -60.0 - 1.0 >= 4.0 * f32::EPSILON as f64);
        let cond = Conditioning {
            magnitude: out(&[y]).ok(),
            shifted: out(&[shifted_rate.exp()]).ok(),
        };
        assert!(judge(Class::InModel, &got, &want, &b, false, no_mag).is_err());
        assert!(judge(Class::InModel, &got, &want, &b, false, || &cond).is_ok());
        // Far more than the conditioning is still a finding.
        let got = out(&[y * (1.0 + 1e-3)]);
        assert!(judge(Class::InModel, &got, &want, &b, false, || &cond).is_err());
    }

    #[test]
    fn chunked_log_decays_widen_the_cancellation_allowance() {
        // A state of 4.6e-3 from terms adding up to 0.43 in absolute value, each
        // term's decay off by up to 4 eps32 K relative (K = 185: 8.8e-5).
        let base = Budget::f32(1e-4, 1e-4, DType::F32, 64, &env());
        let chunked = base.with_log_decay(185.0);
        let want = out(&[4.6e-3]);
        let got = out(&[4.6e-3 + 2.4e-6]);
        let mag = Conditioning {
            magnitude: out(&[0.43]).ok(),
            shifted: None,
        };
        assert!(judge(Class::InModel, &got, &want, &base, false, || &mag).is_err());
        assert!(judge(Class::InModel, &got, &want, &chunked, false, || &mag).is_ok());
        // Ten times the terms' own error is still a finding.
        let got = out(&[4.6e-3 + 4e-4]);
        assert!(judge(Class::InModel, &got, &want, &chunked, false, || &mag).is_err());
    }

    #[test]
    fn non_finite_class_only_asks_for_finiteness_where_the_oracle_is_finite() {
        let b = Budget::f32(1e-5, 1e-5, DType::F32, 16, &env());
        let want = out(&[f64::NAN, 2.0]);
        assert!(judge(
            Class::NonFinite,
            &out(&[f64::INFINITY, 7.0]),
            &want,
            &b,
            false,
            no_mag
        )
        .is_ok());
        assert!(judge(
            Class::NonFinite,
            &out(&[1.0, f64::NAN]),
            &want,
            &b,
            false,
            no_mag
        )
        .is_err());
    }

    #[test]
    fn errors_must_agree_and_cuda_may_decline() {
        let b = Budget::f32(1e-5, 1e-5, DType::F32, 16, &env());
        let e = SsmError::DtLimit { min: 1.0, max: 0.0 };
        let declined = Err(SsmError::Unsupported {
            implementation: "cuda",
            what: "x".into(),
        });
        let want = out(&[1.0]);
        assert_eq!(
            judge(Class::InModel, &declined, &want, &b, true, no_mag),
            Ok(false)
        );
        assert!(judge(Class::InModel, &declined, &want, &b, false, no_mag).is_err());
        assert!(judge(
            Class::Invalid,
            &Err(e.clone()),
            &Err(e.clone()),
            &b,
            false,
            no_mag
        )
        .is_ok());
        assert!(judge(
            Class::Invalid,
            &out(&[1.0]),
            &Err(e.clone()),
            &b,
            false,
            no_mag
        )
        .is_err());
        let other = Err(SsmError::Backend("x".into()));
        assert!(judge(Class::Invalid, &other, &Err(e), &b, false, no_mag).is_err());
    }
}
