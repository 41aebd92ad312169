//! The base-2 exponential of the kernel, in plain f32 arithmetic.
//!
//! The scan spends almost all of its time in `exp2(dt * A * log2(e))`: N of them
//! per token and channel. `f32::exp2` is an opaque libm call that LLVM cannot
//! vectorize, so this file computes `2^x` from integer and float operations only;
//! applied lane by lane to a `[f32; LANES]` it compiles to SIMD.
//!
//! Accuracy and edge cases mirror the GPU's `ex2.approx.ftz.f32`:
//! * relative error below 1.5e-7 (about 1 ulp; 9.6e-8 measured) on the whole
//!   normal range;
//! * results below the smallest normal f32 (`x < -126`) flush to +0;
//! * `x >= 128` gives +inf, NaN gives NaN.

/// Adding 1.5 * 2^23 to |x| < 2^22 rounds x to an integer (to nearest even) and
/// leaves that integer in the low mantissa bits.
const ROUNDING_BIAS: f32 = 12_582_912.0;

/// Below this the result is not a normal f32: flushed to zero.
const MIN_EXPONENT: f32 = -126.0;
/// From here on the result overflows.
const OVERFLOW_EXPONENT: f32 = 128.0;

/// `2^x` (see the module documentation for accuracy and edge cases).
#[inline(always)]
pub(crate) fn exp2(x: f32) -> f32 {
    // Clamp first so that the bit tricks below see a representable exponent;
    // the out-of-range and NaN cases are selected at the end.
    let xc = x.clamp(MIN_EXPONENT, OVERFLOW_EXPONENT);
    // x = i + f with i = round(x), f in [-0.5, 0.5].
    let biased = xc + ROUNDING_BIAS;
    let i = biased.to_bits().wrapping_sub(ROUNDING_BIAS.to_bits()) as i32;
    let f = xc - (biased - ROUNDING_BIAS);
    // 2^f on [-0.5, 0.5]: the Cephes exp2f minimax polynomial.
    let p = 1.0
        + f * (6.931_472e-1
            + f * (2.402_264_8e-1
                + f * (5.550_332_5e-2
                    + f * (9.618_437e-3 + f * (1.339_887_4e-3 + f * 1.535_336_2e-4)))));
    // Multiply by 2^i by adding i to the exponent field. p is in [2^-0.5, 2^0.5]
    // and at the ends of the clamped range the sign of f keeps the sum normal
    // (i = -126 only with p >= 1, i = 128 only with p < 1 unless x >= 128).
    let scaled = f32::from_bits(p.to_bits().wrapping_add((i << 23) as u32));
    if x < MIN_EXPONENT {
        0.0
    } else if x >= OVERFLOW_EXPONENT {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(x: f32) -> f64 {
        let want = (x as f64).exp2();
        (exp2(x) as f64 - want).abs() / want
    }

    #[test]
    fn accurate_over_the_normal_range() {
        // A dense sweep plus every exactly representable integer and half-integer,
        // where the range reduction switches.
        let mut worst: f64 = 0.0;
        let steps = 2_000_000;
        for k in 0..=steps {
            let x = MIN_EXPONENT + (OVERFLOW_EXPONENT - MIN_EXPONENT) * (k as f32 / steps as f32);
            if x < OVERFLOW_EXPONENT {
                worst = worst.max(rel_err(x));
            }
        }
        for k in -252..256 {
            let x = k as f32 * 0.5;
            for x in [x.next_down(), x, x.next_up()] {
                if (MIN_EXPONENT..OVERFLOW_EXPONENT).contains(&x) {
                    worst = worst.max(rel_err(x));
                }
            }
        }
        eprintln!("exp2: worst relative error {worst:e}");
        assert!(worst < 1.5e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn small_arguments_and_exact_powers() {
        assert_eq!(exp2(0.0), 1.0);
        assert_eq!(exp2(-0.0), 1.0);
        assert_eq!(exp2(1.0), 2.0);
        assert_eq!(exp2(-3.0), 0.125);
        assert_eq!(exp2(127.0), 2f32.powi(127));
        assert_eq!(exp2(-126.0), f32::MIN_POSITIVE);
        assert!(rel_err(1e-30) < 1e-7);
    }

    #[test]
    fn out_of_range_and_nan() {
        assert_eq!(exp2(-126.5), 0.0);
        assert_eq!(exp2(-1e30), 0.0);
        assert_eq!(exp2(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2(128.0), f32::INFINITY);
        assert_eq!(exp2(f32::INFINITY), f32::INFINITY);
        assert!(exp2(f32::NAN).is_nan());
        assert!(exp2(127.99).is_finite());
    }
}
