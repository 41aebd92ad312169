//! Scalar definitions every implementation must share exactly (docs/DESIGN.md §1.1).

/// Above this argument softplus returns its input unchanged (as PyTorch and mamba_ssm do).
pub const SOFTPLUS_THRESHOLD: f64 = 20.0;

/// `softplus(x) = x` for `x > 20`, else `log1p(exp(x))`.
pub fn softplus(x: f64) -> f64 {
    if x > SOFTPLUS_THRESHOLD {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// f32 softplus with the same threshold.
pub fn softplus_f32(x: f32) -> f32 {
    if x > SOFTPLUS_THRESHOLD as f32 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `silu(z) = z * sigmoid(z)`.
pub fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

/// f32 [`silu`].
pub fn silu_f32(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

/// Mamba-2 step size: bias, optional softplus, then clamp to `dt_limit`.
pub fn ssd_dt(dt: f64, bias: f64, softplus_on: bool, limit: (f32, f32)) -> f64 {
    let v = dt + bias;
    let v = if softplus_on { softplus(v) } else { v };
    v.clamp(limit.0 as f64, limit.1 as f64)
}

/// f32 [`ssd_dt`].
pub fn ssd_dt_f32(dt: f32, bias: f32, softplus_on: bool, limit: (f32, f32)) -> f32 {
    let v = dt + bias;
    let v = if softplus_on { softplus_f32(v) } else { v };
    v.clamp(limit.0, limit.1)
}

/// Mamba-1 step size: optional bias, optional softplus (no clamp).
pub fn scan_dt(delta: f64, bias: f64, softplus_on: bool) -> f64 {
    let v = delta + bias;
    if softplus_on {
        softplus(v)
    } else {
        v
    }
}

/// f32 [`scan_dt`].
pub fn scan_dt_f32(delta: f32, bias: f32, softplus_on: bool) -> f32 {
    let v = delta + bias;
    if softplus_on {
        softplus_f32(v)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_threshold_and_small_values() {
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(0.0) - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((softplus(-30.0) - (-30f64).exp()).abs() < 1e-25);
        assert!((softplus_f32(3.0) as f64 - softplus(3.0)).abs() < 1e-6);
    }

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.7310585786300049).abs() < 1e-15);
    }

    #[test]
    fn ssd_dt_clamps_after_softplus() {
        assert_eq!(ssd_dt(100.0, 0.0, true, (0.0, 5.0)), 5.0);
        assert_eq!(ssd_dt(-100.0, 0.0, false, (0.001, 5.0)), 0.001f32 as f64);
    }
}
