//! The Mamba-2 SSD backward pass: its gradient inputs, their validation, the
//! gradients it returns, and the scalar derivatives every implementation shares
//! (derivation in docs/BACKWARD-SSD.md).
//!
//! The backward of a forward call `p` (an [`SsdParams`], the very struct given to
//! the forward) takes the gradient of the loss with respect to the output,
//! `d_out` `(b, L, H, P)` in the input element type, and optionally with respect
//! to the final states, `d_final_states` `(b or num_seqs, H, P, N)` in f32
//! (allowed only when `p.return_final_states` is set: a forward that returns no
//! final states has no gradient flowing into them). It returns an [`SsdGrads`]
//! with one gradient per differentiable input of `p`, `None` for the options `p`
//! does not use.
//!
//! Step sizes: `dt' = clamp(softplus?(dt + dt_bias), dt_min, dt_max)`, so
//! `d dt = d dt' * [dt_min <= u <= dt_max] * (sigmoid(v) if softplus and v <= 20)`
//! with `v = dt + dt_bias`, `u = softplus?(v)`: the gradient is zero where the
//! clamp is active (`u < dt_min` or `u > dt_max`), exactly as mamba_ssm's
//! `_chunk_cumsum_bwd_kernel` masks it; `d dt_bias` is the sum of `d dt` over every
//! token of its head. See [`dt_grad_factor`].

use crate::mamba2::{SsdLayout, SsdParams};
use crate::shape::{
    check_d_final_states, check_finite, check_finite_if_some, check_len, states_shape, Shape,
};
use crate::{Element, Result};

/// Validate a backward call: the forward parameters, then every gradient input
/// against the shape they imply. Returns the forward's layout.
pub fn validate_grad_inputs<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<SsdLayout> {
    let layout = p.validate()?;
    let dims = p.dims;
    check_len(
        "d_out",
        Shape(&[
            ("b", dims.batch),
            ("L", dims.seqlen),
            ("H", dims.heads),
            ("P", dims.head_dim),
        ]),
        d_out.len(),
    )?;
    let state = [("H", dims.heads), ("P", dims.head_dim), ("N", dims.d_state)];
    let shape = states_shape(p.cu_seqlens.is_some(), layout.num_seqs, &state);
    check_d_final_states(d_final_states, p.return_final_states, &shape)?;
    if p.check_finite {
        check_finite("d_out", d_out)?;
        check_finite_if_some("d_final_states", d_final_states)?;
    }
    Ok(layout)
}

/// The gradients of an SSD forward call, each in the layout of its input:
/// tensor inputs' gradients in `I` (the oracle: f64; the f32 port: the input
/// element type), parameters' and states' in `P` (f64 or f32).
#[derive(Clone, Debug, PartialEq)]
pub struct SsdGrads<I, P> {
    /// `(b, L, H, P)`.
    pub dx: Vec<I>,
    /// `(b, L, H)`: with respect to the raw `dt` input (through bias, softplus, clamp).
    pub ddt: Vec<I>,
    /// `(H)`.
    pub da: Vec<P>,
    /// `(b, L, G, N)`.
    pub db: Vec<I>,
    /// `(b, L, G, N)`.
    pub dc: Vec<I>,
    /// `(H)` or `(H, P)`, as the forward's `D`; `None` without `D`.
    pub dd: Option<Vec<P>>,
    /// `(b, L, H, P)`; `None` without `z`.
    pub dz: Option<Vec<I>>,
    /// `(H)`; `None` without `dt_bias`.
    pub ddt_bias: Option<Vec<P>>,
    /// `(b or num_seqs, H, P, N)`; `None` without initial states.
    pub dinitial_states: Option<Vec<P>>,
}

impl<I: Element, P: Element> SsdGrads<I, P> {
    /// Widen to f64 for comparison against the oracle.
    pub fn to_f64(&self) -> SsdGrads<f64, f64> {
        use crate::element::widen;
        SsdGrads {
            dx: widen(&self.dx),
            ddt: widen(&self.ddt),
            da: widen(&self.da),
            db: widen(&self.db),
            dc: widen(&self.dc),
            dd: self.dd.as_deref().map(widen),
            dz: self.dz.as_deref().map(widen),
            ddt_bias: self.ddt_bias.as_deref().map(widen),
            dinitial_states: self.dinitial_states.as_deref().map(widen),
        }
    }
}

impl<I, P> SsdGrads<I, P> {
    /// `(name, gradient)` for every gradient present, in a fixed order, so tests
    /// and tables can walk them without naming each field.
    pub fn named(&self) -> Vec<(&'static str, GradRef<'_, I, P>)> {
        let mut v = vec![
            ("dx", GradRef::Input(&self.dx[..])),
            ("ddt", GradRef::Input(&self.ddt[..])),
            ("dA", GradRef::Param(&self.da[..])),
            ("dB", GradRef::Input(&self.db[..])),
            ("dC", GradRef::Input(&self.dc[..])),
        ];
        if let Some(d) = &self.dd {
            v.push(("dD", GradRef::Param(d)));
        }
        if let Some(d) = &self.dz {
            v.push(("dz", GradRef::Input(d)));
        }
        if let Some(d) = &self.ddt_bias {
            v.push(("ddt_bias", GradRef::Param(d)));
        }
        if let Some(d) = &self.dinitial_states {
            v.push(("dinitial_states", GradRef::Param(d)));
        }
        v
    }
}

/// One gradient of [`SsdGrads::named`]: a tensor input's or a parameter's.
#[derive(Clone, Copy, Debug)]
pub enum GradRef<'a, I, P> {
    /// A gradient in the input element type (a tensor input's).
    Input(&'a [I]),
    /// A gradient in f32 (a parameter's or the initial states').
    Param(&'a [P]),
}

/// `d dt' / d dt` at raw step `dt` with bias `bias` (the chain of
/// `ssm_core::math::ssd_dt`): 0 where the clamp is active (`u < min` or
/// `u > max`, mamba_ssm's mask; at a bound itself the gradient passes), times
/// `sigmoid(v)` (softplus' derivative) when softplus is on and `v <= 20`.
pub fn dt_grad_factor(dt: f64, bias: f64, softplus_on: bool, limit: (f32, f32)) -> f64 {
    let v = dt + bias;
    let u = if softplus_on {
        crate::math::softplus(v)
    } else {
        v
    };
    if u < f64::from(limit.0) || u > f64::from(limit.1) {
        return 0.0;
    }
    if softplus_on && v <= crate::math::SOFTPLUS_THRESHOLD {
        1.0 / (1.0 + (-v).exp())
    } else {
        1.0
    }
}

/// f32 twin of [`dt_grad_factor`], with the f32 softplus.
pub fn dt_grad_factor_f32(dt: f32, bias: f32, softplus_on: bool, limit: (f32, f32)) -> f32 {
    let v = dt + bias;
    let u = if softplus_on {
        crate::math::softplus_f32(v)
    } else {
        v
    };
    if u < limit.0 || u > limit.1 {
        return 0.0;
    }
    if softplus_on && v <= crate::math::SOFTPLUS_THRESHOLD as f32 {
        1.0 / (1.0 + (-v).exp())
    } else {
        1.0
    }
}

/// `d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))`.
pub fn silu_grad(z: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z * (1.0 - s))
}

/// f32 twin of [`silu_grad`].
pub fn silu_grad_f32(z: f32) -> f32 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z * (1.0 - s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mamba2::SsdDims;
    use crate::SsmError;

    fn dims() -> SsdDims {
        SsdDims::new(2, 3, 2, 2, 3, 1)
    }

    #[test]
    fn every_gradient_input_is_validated_by_name_and_shape() {
        let x = vec![0f32; 2 * 3 * 2 * 2];
        let dt = vec![0f32; 2 * 3 * 2];
        let a = vec![-1f32; 2];
        let bc = vec![0f32; 2 * 3 * 3];
        let p = SsdParams::new(dims(), &x, &dt, &a, &bc, &bc);
        let d_out = x.clone();
        let ds = vec![0f32; 2 * 2 * 2 * 3];
        assert!(validate_grad_inputs(&p, &d_out, None).is_ok());
        let err = validate_grad_inputs(&p, &d_out[1..], None).unwrap_err();
        assert!(
            matches!(&err, SsmError::Shape { arg: "d_out", expected, .. } if expected == "(b=2, L=3, H=2, P=2)"),
            "{err}"
        );
        // Final-state gradient without final states: a typed error, not ignored.
        let err = validate_grad_inputs(&p, &d_out, Some(&ds)).unwrap_err();
        assert!(
            matches!(
                err,
                SsmError::Dimension {
                    arg: "d_final_states",
                    ..
                }
            ),
            "{err}"
        );
        let pf = p.with_final_states(true);
        assert!(validate_grad_inputs(&pf, &d_out, Some(&ds)).is_ok());
        let err = validate_grad_inputs(&pf, &d_out, Some(&ds[1..])).unwrap_err();
        assert!(
            matches!(&err, SsmError::Shape { arg: "d_final_states", expected, .. } if expected == "(b=2, H=2, P=2, N=3)"),
            "{err}"
        );
        // Forward parameters are validated first.
        let err = validate_grad_inputs(&SsdParams { c: &bc[1..], ..p }, &d_out, None).unwrap_err();
        assert!(matches!(err, SsmError::Shape { arg: "C", .. }));
        // Finiteness, when asked for.
        let mut bad = d_out.clone();
        bad[3] = f32::NAN;
        let err = validate_grad_inputs(&p.with_check_finite(true), &bad, None).unwrap_err();
        assert!(matches!(
            err,
            SsmError::NonFinite {
                arg: "d_out",
                index: 3,
                ..
            }
        ));
        let mut bad_ds = ds.clone();
        bad_ds[0] = f32::INFINITY;
        let err =
            validate_grad_inputs(&pf.with_check_finite(true), &d_out, Some(&bad_ds)).unwrap_err();
        assert!(matches!(
            err,
            SsmError::NonFinite {
                arg: "d_final_states",
                ..
            }
        ));
    }

    #[test]
    fn varlen_final_state_gradient_has_one_row_per_sequence() {
        let d = SsdDims {
            batch: 1,
            seqlen: 5,
            ..dims()
        };
        let x = vec![0f32; 5 * 2 * 2];
        let dt = vec![0f32; 5 * 2];
        let a = vec![-1f32; 2];
        let bc = vec![0f32; 5 * 3];
        let cu = [0i64, 2, 2, 5];
        let p = SsdParams::new(d, &x, &dt, &a, &bc, &bc)
            .with_cu_seqlens(&cu)
            .with_final_states(true);
        let ds = vec![0f32; 3 * 2 * 2 * 3];
        assert_eq!(validate_grad_inputs(&p, &x, Some(&ds)).unwrap().num_seqs, 3);
        let err = validate_grad_inputs(&p, &x, Some(&ds[..12])).unwrap_err();
        assert!(err.to_string().contains("num_seqs=3"), "{err}");
    }

    #[test]
    fn dt_factor_masks_the_clamp_and_chains_softplus() {
        let lim = (0.1f32, 2.0f32);
        // softplus(0) = ln 2 inside the limits: sigmoid(0) = 1/2.
        assert_eq!(dt_grad_factor(0.0, 0.0, true, lim), 0.5);
        // Clamped above and below: no gradient.
        assert_eq!(dt_grad_factor(5.0, 0.0, true, lim), 0.0);
        assert_eq!(dt_grad_factor(-5.0, 0.0, true, lim), 0.0);
        assert_eq!(dt_grad_factor(0.05, 0.0, false, lim), 0.0);
        // Without softplus the bias just shifts.
        assert_eq!(dt_grad_factor(0.5, 0.25, false, lim), 1.0);
        // Above the softplus threshold softplus is the identity.
        assert_eq!(dt_grad_factor(25.0, 0.0, true, (0.0, f32::INFINITY)), 1.0);
        assert_eq!(dt_grad_factor_f32(0.0, 0.0, true, lim), 0.5);
        assert_eq!(dt_grad_factor_f32(5.0, 0.0, true, lim), 0.0);
    }

    #[test]
    fn silu_grad_matches_a_difference_quotient() {
        for z in [-3.0, -0.5, 0.0, 0.7, 4.0] {
            let h = 1e-6;
            let fd = (crate::math::silu(z + h) - crate::math::silu(z - h)) / (2.0 * h);
            assert!((silu_grad(z) - fd).abs() < 1e-8, "z = {z}");
            assert!((silu_grad_f32(z as f32) as f64 - fd).abs() < 1e-6);
        }
    }
}
