//! The Mamba-1 selective-scan backward: its gradient inputs and its gradients
//! (docs/DESIGN.md §1.1, §1.4; derivation in docs/BACKWARD-MAMBA1.md).
//!
//! A backward call takes the forward's parameters ([`SelectiveScanParams`]) plus
//! the incoming gradients:
//!
//! - `d_out`: the gradient of the loss with respect to `out`, `(b, D_in, L)`, in
//!   the output's element type;
//! - `d_final_states` (optional): the gradient with respect to the final states,
//!   `(b or num_seqs, D_in, N)`, f32 like the states. Only allowed when the
//!   forward returns final states; absent means zero.
//!
//! It returns [`ScanGrads`]: one gradient per differentiable input, in that
//! input's layout and precision class (tensor inputs in their element type,
//! f32 parameters and states in f32), present exactly when the input was given.

use crate::mamba1::{BcInput, Mamba1Dims, Mamba1Layout, SelectiveScanParams};
use crate::shape::{
    check_d_final_states, check_finite, check_finite_if_some, check_len, states_shape, Shape,
};
use crate::{Element, Result};

/// The incoming gradients of a backward call.
#[derive(Clone, Copy, Debug)]
pub struct ScanGradInputs<'a, O> {
    /// `dL/d out`, `(b, D_in, L)`.
    pub d_out: &'a [O],
    /// `dL/d final_states`, `(b or num_seqs, D_in, N)`; `None` is zero.
    pub d_final_states: Option<&'a [f32]>,
}

impl<'a, O: Element> ScanGradInputs<'a, O> {
    /// `d_out` `(b, D_in, L)`; `d_final_states` `(b or num_seqs, D_in, N)` or `None` for zero.
    pub fn new(d_out: &'a [O], d_final_states: Option<&'a [f32]>) -> Self {
        ScanGradInputs {
            d_out,
            d_final_states,
        }
    }

    /// Validate the forward's parameters, then these gradients against them.
    ///
    /// Errors name the gradient tensor (`d_out`, `d_final_states`) and its
    /// expected shape; a `d_final_states` given to a forward that does not
    /// return final states is an error too (it would be silently ignored
    /// otherwise, or the caller has the wrong forward in mind). With
    /// `check_finite` set, NaN/Inf in either gradient is an error.
    pub fn validate<T: Element>(&self, p: &SelectiveScanParams<'_, T>) -> Result<Mamba1Layout> {
        let layout = p.validate()?;
        check_len("d_out", Shape(&p.dims.io_shape()), self.d_out.len())?;
        let state = [("D_in", p.dims.d_inner), ("N", p.dims.d_state)];
        let shape = states_shape(p.cu_seqlens.is_some(), layout.num_seqs, &state);
        check_d_final_states(self.d_final_states, p.return_final_states, &shape)?;
        if p.check_finite {
            check_finite("d_out", self.d_out)?;
            check_finite_if_some("d_final_states", self.d_final_states)?;
        }
        Ok(layout)
    }
}

/// Gradients of a selective scan, each in the layout of its input.
///
/// `G` is the element type of the tensor inputs' gradients (`du`, `ddelta`,
/// `dB`, `dC`, `dz`), `P` that of the f32 parameters' and states' (`dA`, `dD`,
/// `ddelta_bias`, `dinitial_states`). The oracle returns `ScanGrads<f64, f64>`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanGrads<G, P> {
    /// `(b, D_in, L)`.
    pub du: Vec<G>,
    /// `(b, D_in, L)`: with respect to the `delta` given (before bias and softplus).
    pub ddelta: Vec<G>,
    /// `(D_in, N)`.
    pub da: Vec<P>,
    /// The layout of B: `(b, G_B, N, L)` when grouped (summed over the channels
    /// of each group), `(D_in, N)` when constant (summed over batch and time).
    pub db: Vec<G>,
    /// The layout of C, as for `db`.
    pub dc: Vec<G>,
    /// `(D_in)`, when D was given.
    pub dd: Option<Vec<P>>,
    /// `(b, D_in, L)`, when z was given.
    pub dz: Option<Vec<G>>,
    /// `(D_in)`, when delta_bias was given.
    pub ddelta_bias: Option<Vec<P>>,
    /// `(b or num_seqs, D_in, N)`, when initial states were given.
    pub dinitial_states: Option<Vec<P>>,
}

/// The name of each gradient in [`ScanGrads::named`] order.
pub const GRAD_NAMES: [&str; 9] = [
    "du",
    "ddelta",
    "dA",
    "dB",
    "dC",
    "dD",
    "dz",
    "ddelta_bias",
    "dinitial_states",
];

impl<G: Element, P: Element> ScanGrads<G, P> {
    /// Widen every gradient to f64 for comparison against the oracle.
    pub fn to_f64(&self) -> ScanGrads<f64, f64> {
        use crate::element::widen;
        ScanGrads {
            du: widen(&self.du),
            ddelta: widen(&self.ddelta),
            da: widen(&self.da),
            db: widen(&self.db),
            dc: widen(&self.dc),
            dd: self.dd.as_deref().map(widen),
            dz: self.dz.as_deref().map(widen),
            ddelta_bias: self.ddelta_bias.as_deref().map(widen),
            dinitial_states: self.dinitial_states.as_deref().map(widen),
        }
    }
}

impl ScanGrads<f64, f64> {
    /// Every gradient with its name ([`GRAD_NAMES`]); absent ones are `None`.
    pub fn named(&self) -> [(&'static str, Option<&[f64]>); 9] {
        [
            (GRAD_NAMES[0], Some(&self.du[..])),
            (GRAD_NAMES[1], Some(&self.ddelta[..])),
            (GRAD_NAMES[2], Some(&self.da[..])),
            (GRAD_NAMES[3], Some(&self.db[..])),
            (GRAD_NAMES[4], Some(&self.dc[..])),
            (GRAD_NAMES[5], self.dd.as_deref()),
            (GRAD_NAMES[6], self.dz.as_deref()),
            (GRAD_NAMES[7], self.ddelta_bias.as_deref()),
            (GRAD_NAMES[8], self.dinitial_states.as_deref()),
        ]
    }
}

/// Element count of the gradient of a B or C input (its own layout).
pub fn bc_grad_len<T>(bc: &BcInput<'_, T>, dims: Mamba1Dims) -> usize {
    match *bc {
        BcInput::Grouped { groups, .. } => dims.bc_len(groups),
        BcInput::Constant(_) => dims.a_len(),
    }
}

/// Derivative of `ssm_core::math::softplus` as the forward defines it:
/// `sigmoid(x)` where the forward computes `log1p(exp(x))` (`x <= 20`, the
/// threshold itself included), `1` where it returns `x` (`x > 20`). This is
/// PyTorch's `softplus_backward` with the same threshold rule. Not the
/// derivative of a smooth function at 20: softplus jumps there by
/// `log1p(exp(-20)) ~ 2e-9`, which central differences across it see.
pub fn softplus_grad(x: f64) -> f64 {
    if x > crate::math::SOFTPLUS_THRESHOLD {
        1.0
    } else {
        1.0 / (1.0 + (-x).exp())
    }
}

/// f32 [`softplus_grad`] with the same threshold.
pub fn softplus_grad_f32(x: f32) -> f32 {
    if x > crate::math::SOFTPLUS_THRESHOLD as f32 {
        1.0
    } else {
        1.0 / (1.0 + (-x).exp())
    }
}

/// `silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))`.
pub fn silu_grad(z: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z * (1.0 - s))
}

/// The magnitude of `silu'(z)` as a sum of absolute terms,
/// `sigmoid(z) (1 + |z| (1 - sigmoid(z)))`: what the rounding of `silu'` in
/// floating point is proportional to. Near the root of `silu'` (z = -1.278)
/// the two terms cancel and `|silu'(z)|` alone would understate it; the
/// oracles' magnitude sweeps (the tolerance allowances) use this instead.
pub fn silu_grad_magnitude(z: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z.abs() * (1.0 - s))
}

/// `d silu(z) / dz = s (1 + z (1 - s))`, `s = sigmoid(z)`, in f32.
pub fn silu_grad_f32(z: f32) -> f32 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z * (1.0 - s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::{silu, softplus};
    use crate::SsmError;

    fn params<'a>(u: &'a [f32], a: &'a [f32], bc: &'a [f32]) -> SelectiveScanParams<'a, f32> {
        let dims = Mamba1Dims::new(2, 4, 3, 5);
        SelectiveScanParams::new(
            dims,
            u,
            u,
            a,
            BcInput::Grouped {
                groups: 2,
                data: bc,
            },
            BcInput::Constant(a),
        )
    }

    #[test]
    fn silu_grad_magnitude_bounds_silu_grad_and_stays_away_from_its_root() {
        for i in -400..=400 {
            let z = i as f64 * 0.05;
            assert!(silu_grad_magnitude(z) >= silu_grad(z).abs(), "z = {z}");
        }
        // silu' has a root near -1.2785: the value vanishes, its terms do not.
        let root = -1.278_464_542_761_074;
        assert!(silu_grad(root).abs() < 1e-12);
        assert!(silu_grad_magnitude(root) > 0.3);
    }

    #[test]
    fn gradient_shapes_are_checked_and_named() {
        let (u, a, bc) = (vec![0f32; 40], vec![-1f32; 12], vec![0f32; 60]);
        let p = params(&u, &a, &bc).with_final_states(true);
        let dh = vec![0f32; 24];
        assert_eq!(
            ScanGradInputs::new(&u, Some(&dh))
                .validate(&p)
                .unwrap()
                .num_seqs,
            2
        );
        let err = ScanGradInputs::new(&u[1..], None).validate(&p).unwrap_err();
        assert!(matches!(err, SsmError::Shape { arg: "d_out", .. }), "{err}");
        assert!(err.to_string().contains("(b=2, D_in=4, L=5)"), "{err}");
        let err = ScanGradInputs::new(&u, Some(&dh[1..]))
            .validate(&p)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SsmError::Shape {
                    arg: "d_final_states",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("(b=2, D_in=4, N=3)"), "{err}");
        // d_final_states for a forward without final states.
        let no_final = p.with_final_states(false);
        let err = ScanGradInputs::new(&u, Some(&dh))
            .validate(&no_final)
            .unwrap_err();
        assert!(matches!(
            err,
            SsmError::Dimension {
                arg: "d_final_states",
                ..
            }
        ));
        // The forward's own errors come first.
        let bad = SelectiveScanParams { u: &u[2..], ..p };
        let err = ScanGradInputs::new(&u, None).validate(&bad).unwrap_err();
        assert!(matches!(err, SsmError::Shape { arg: "u", .. }));
    }

    #[test]
    fn varlen_final_state_gradient_has_one_row_per_sequence() {
        let (u, a, bc) = (vec![0f32; 20], vec![-1f32; 12], vec![0f32; 30]);
        let dims = Mamba1Dims::new(1, 4, 3, 5);
        let cu = [0i64, 2, 2, 5];
        let p = SelectiveScanParams {
            dims,
            ..params(&u, &a, &bc)
        }
        .with_cu_seqlens(&cu)
        .with_final_states(true);
        let dh = vec![0f32; 3 * 12];
        assert!(ScanGradInputs::new(&u, Some(&dh)).validate(&p).is_ok());
        let err = ScanGradInputs::new(&u, Some(&dh[..24]))
            .validate(&p)
            .unwrap_err();
        assert!(
            err.to_string().contains("(num_seqs=3, D_in=4, N=3)"),
            "{err}"
        );
    }

    #[test]
    fn finite_check_covers_the_gradients() {
        let (u, a, bc) = (vec![0f32; 40], vec![-1f32; 12], vec![0f32; 60]);
        let p = params(&u, &a, &bc)
            .with_final_states(true)
            .with_check_finite(true);
        let mut g = u.clone();
        g[3] = f32::INFINITY;
        let err = ScanGradInputs::new(&g, None).validate(&p).unwrap_err();
        assert!(matches!(
            err,
            SsmError::NonFinite {
                arg: "d_out",
                index: 3,
                ..
            }
        ));
        let mut dh = vec![0f32; 24];
        dh[5] = f32::NAN;
        let err = ScanGradInputs::new(&u, Some(&dh)).validate(&p).unwrap_err();
        assert!(matches!(
            err,
            SsmError::NonFinite {
                arg: "d_final_states",
                index: 5,
                ..
            }
        ));
        // Without check_finite the values are not inspected.
        assert!(ScanGradInputs::new(&g, None)
            .validate(&p.with_check_finite(false))
            .is_ok());
    }

    #[test]
    fn scalar_derivatives_match_central_differences() {
        let h = 1e-6;
        for x in [-30.0, -3.0, -0.5, 0.0, 0.7, 5.0, 19.9, 20.1, 40.0] {
            let fd = (softplus(x + h) - softplus(x - h)) / (2.0 * h);
            assert!((softplus_grad(x) - fd).abs() < 1e-8, "softplus' at {x}");
            let fd = (silu(x + h) - silu(x - h)) / (2.0 * h);
            assert!((silu_grad(x) - fd).abs() < 1e-8, "silu' at {x}");
            assert!((softplus_grad_f32(x as f32) as f64 - softplus_grad(x)).abs() < 1e-6);
            assert!((silu_grad_f32(x as f32) as f64 - silu_grad(x)).abs() < 1e-5);
        }
        // At the threshold itself the forward takes the log1p branch: sigmoid(20).
        assert_eq!(softplus_grad(20.0), 1.0 / (1.0 + (-20f64).exp()));
        assert!(softplus_grad(20.0) < 1.0);
        assert_eq!(softplus_grad(20.000001), 1.0);
        // Left-sided second-order difference at 20 matches sigmoid(20).
        let x = 20.0;
        let left = (3.0 * softplus(x) - 4.0 * softplus(x - h) + softplus(x - 2.0 * h)) / (2.0 * h);
        assert!((left - softplus_grad(x)).abs() < 1e-8);
    }

    #[test]
    fn grad_lengths_follow_the_input_layout() {
        let dims = Mamba1Dims::new(2, 4, 3, 5);
        let g = BcInput::Grouped::<f32> {
            groups: 2,
            data: &[],
        };
        assert_eq!(bc_grad_len(&g, dims), 60);
        assert_eq!(bc_grad_len(&BcInput::<f32>::Constant(&[]), dims), 12);
    }
}
