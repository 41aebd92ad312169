//! The Mamba-1 selective scan problem (docs/DESIGN.md §1.1, layouts §2).
//!
//! Layouts (mamba_ssm's, last dimension contiguous):
//! `u, delta, z, out: (b, D_in, L)`; `A: (D_in, N)`; `B, C: (b, G, N, L)` or
//! constant `(D_in, N)`; `D, delta_bias: (D_in)`; states `(b, D_in, N)`, or
//! `(num_seqs, D_in, N)` for varlen input.

use crate::shape::{
    check_finite, check_finite_if_some, check_groups, check_len, check_nonzero, check_sequences,
    Shape,
};
use crate::{Element, Result};

/// Sizes of a selective-scan call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mamba1Dims {
    /// `b`, the batch size (1 for varlen input).
    pub batch: usize,
    /// `D_in`, the number of independent channels.
    pub d_inner: usize,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// `L`, the sequence length (total packed length for varlen).
    pub seqlen: usize,
}

impl Mamba1Dims {
    /// The sizes in the order of the names `(b, D_in, N, L)`: the one constructor
    /// from loose sizes, so callers do not each spell the literal.
    pub const fn new(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Self {
        Mamba1Dims {
            batch,
            d_inner,
            d_state,
            seqlen,
        }
    }

    /// `(b, D_in, L)` by name: the shape of `u`, `delta`, `z` and the output.
    pub fn io_shape(&self) -> [(&'static str, usize); 3] {
        [
            ("b", self.batch),
            ("D_in", self.d_inner),
            ("L", self.seqlen),
        ]
    }

    /// Elements of `u`, `delta`, `z` and the output, `b * D_in * L`.
    pub fn io_len(&self) -> usize {
        self.batch * self.d_inner * self.seqlen
    }

    /// Elements of `A` (and of a constant B or C), `D_in * N`.
    pub fn a_len(&self) -> usize {
        self.d_inner * self.d_state
    }

    /// Elements of a grouped B or C with `groups` groups, `b * G * N * L`.
    pub fn bc_len(&self, groups: usize) -> usize {
        self.batch * groups * self.d_state * self.seqlen
    }

    /// Elements of the states of `rows` sequences, `rows * D_in * N`.
    pub fn states_len(&self, rows: usize) -> usize {
        rows * self.a_len()
    }
}

/// `b{batch} D{d_inner} N{d_state} L{seqlen}`: the label of a shape in reports.
impl std::fmt::Display for Mamba1Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "b{} D{} N{} L{}",
            self.batch, self.d_inner, self.d_state, self.seqlen
        )
    }
}

/// B or C: either time-varying and shared by groups of channels, or constant per channel.
#[derive(Clone, Copy, Debug)]
pub enum BcInput<'a, T> {
    /// `(b, G, N, L)`; channel `d` uses group `d / (D_in / G)`.
    Grouped {
        /// `G`, which must divide `D_in`.
        groups: usize,
        /// `(b, G, N, L)`.
        data: &'a [T],
    },
    /// `(D_in, N)`, the same at every step (the LTI / S4D case).
    Constant(&'a [T]),
}

impl<'a, T> BcInput<'a, T> {
    /// Grouped `(b, G, N, L)` with `groups` groups when given, else constant
    /// `(D_in, N)`: the layout a test or generator describes as an option.
    pub fn from_groups(groups: Option<usize>, data: &'a [T]) -> Self {
        match groups {
            Some(groups) => BcInput::Grouped { groups, data },
            None => BcInput::Constant(data),
        }
    }

    /// The flat data, whichever the layout.
    pub fn data(&self) -> &'a [T] {
        match *self {
            BcInput::Grouped { data, .. } => data,
            BcInput::Constant(data) => data,
        }
    }
}

/// Every input of a selective scan. Build with [`SelectiveScanParams::new`] and the
/// `with_*` methods; every implementation calls [`SelectiveScanParams::validate`].
#[derive(Clone, Copy, Debug)]
pub struct SelectiveScanParams<'a, T> {
    /// The sizes.
    pub dims: Mamba1Dims,
    /// `(b, D_in, L)`: the input.
    pub u: &'a [T],
    /// `(b, D_in, L)`: the raw step size, before `delta_bias` and softplus.
    pub delta: &'a [T],
    /// `(D_in, N)`: the (negative, for a decaying state) transition.
    pub a: &'a [f32],
    /// B, grouped `(b, G, N, L)` or constant `(D_in, N)`.
    pub b: BcInput<'a, T>,
    /// C, grouped `(b, G, N, L)` or constant `(D_in, N)`.
    pub c: BcInput<'a, T>,
    /// `(D_in)`: the skip term `D u`.
    pub d: Option<&'a [f32]>,
    /// `(b, D_in, L)`: the output gate `silu(z)`.
    pub z: Option<&'a [T]>,
    /// `(D_in)`, added to `delta`.
    pub delta_bias: Option<&'a [f32]>,
    /// Softplus is applied to `delta + delta_bias`.
    pub delta_softplus: bool,
    /// `(b, D_in, N)`, or `(num_seqs, D_in, N)` with `cu_seqlens`.
    pub initial_states: Option<&'a [f32]>,
    /// Varlen prefix offsets (`num_seqs + 1` entries, batch must be 1).
    pub cu_seqlens: Option<&'a [i64]>,
    /// Also return the state after each row's (or sequence's) last step.
    pub return_final_states: bool,
    /// Reject NaN/Inf in any input (costs one pass over the inputs).
    pub check_finite: bool,
}

/// Facts established by validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mamba1Layout {
    /// Number of independent sequences: `batch`, or the varlen count.
    pub num_seqs: usize,
}

impl<'a, T: Element> SelectiveScanParams<'a, T> {
    /// The required inputs, every option off (see the `with_*` methods).
    pub fn new(
        dims: Mamba1Dims,
        u: &'a [T],
        delta: &'a [T],
        a: &'a [f32],
        b: BcInput<'a, T>,
        c: BcInput<'a, T>,
    ) -> Self {
        SelectiveScanParams {
            dims,
            u,
            delta,
            a,
            b,
            c,
            d: None,
            z: None,
            delta_bias: None,
            delta_softplus: false,
            initial_states: None,
            cu_seqlens: None,
            return_final_states: false,
            check_finite: false,
        }
    }

    /// Add the skip term `D u`, `D` `(D_in)`.
    pub fn with_d(mut self, d: &'a [f32]) -> Self {
        self.d = Some(d);
        self
    }
    /// Add `delta_bias` `(D_in)` to `delta`.
    pub fn with_delta_bias(mut self, bias: &'a [f32]) -> Self {
        self.delta_bias = Some(bias);
        self
    }
    /// Apply softplus to `delta + delta_bias`.
    pub fn with_delta_softplus(mut self, on: bool) -> Self {
        self.delta_softplus = on;
        self
    }
    sequence_setters!('a, T);

    /// Group index of channel `d` for B or C (0 for constant B/C).
    pub fn group_of(bc: &BcInput<'_, T>, d_inner: usize, d: usize) -> usize {
        match *bc {
            BcInput::Grouped { groups, .. } => d / (d_inner / groups),
            BcInput::Constant(_) => 0,
        }
    }

    /// Check every shape and option; returns the number of sequences.
    pub fn validate(&self) -> Result<Mamba1Layout> {
        let dims = self.dims;
        let (batch, d_inner, d_state, seqlen) =
            (dims.batch, dims.d_inner, dims.d_state, dims.seqlen);
        check_nonzero("batch", batch)?;
        check_nonzero("d_inner", d_inner)?;
        check_nonzero("d_state", d_state)?;
        let bdl = dims.io_shape();
        check_len("u", Shape(&bdl), self.u.len())?;
        check_len("delta", Shape(&bdl), self.delta.len())?;
        check_len(
            "A",
            Shape(&[("D_in", d_inner), ("N", d_state)]),
            self.a.len(),
        )?;
        for (arg, bc) in [("B", &self.b), ("C", &self.c)] {
            match *bc {
                BcInput::Grouped { groups, data } => {
                    check_groups(arg, groups, "D_in", d_inner)?;
                    check_len(
                        arg,
                        Shape(&[("b", batch), ("G", groups), ("N", d_state), ("L", seqlen)]),
                        data.len(),
                    )?;
                }
                BcInput::Constant(data) => {
                    check_len(arg, Shape(&[("D_in", d_inner), ("N", d_state)]), data.len())?;
                }
            }
        }
        if let Some(d) = self.d {
            check_len("D", Shape(&[("D_in", d_inner)]), d.len())?;
        }
        if let Some(z) = self.z {
            check_len("z", Shape(&bdl), z.len())?;
        }
        if let Some(bias) = self.delta_bias {
            check_len("delta_bias", Shape(&[("D_in", d_inner)]), bias.len())?;
        }
        let num_seqs = check_sequences(
            self.cu_seqlens,
            (batch, seqlen),
            &[("D_in", d_inner), ("N", d_state)],
            self.return_final_states,
            self.initial_states,
        )?;
        if self.check_finite {
            check_finite("u", self.u)?;
            check_finite("delta", self.delta)?;
            check_finite("A", self.a)?;
            check_finite("B", self.b.data())?;
            check_finite("C", self.c.data())?;
            check_finite_if_some("D", self.d)?;
            check_finite_if_some("z", self.z)?;
            check_finite_if_some("delta_bias", self.delta_bias)?;
            check_finite_if_some("initial_states", self.initial_states)?;
        }
        Ok(Mamba1Layout { num_seqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SsmError;

    fn dims() -> Mamba1Dims {
        Mamba1Dims::new(2, 4, 3, 5)
    }

    #[test]
    fn valid_params_pass_and_bad_shapes_name_the_argument() {
        let u = vec![0f32; 40];
        let a = vec![-1f32; 12];
        let bc = vec![0f32; 2 * 2 * 3 * 5];
        let p = SelectiveScanParams::new(
            dims(),
            &u,
            &u,
            &a,
            BcInput::Grouped {
                groups: 2,
                data: &bc,
            },
            BcInput::Constant(&a),
        );
        assert_eq!(p.validate().unwrap().num_seqs, 2);
        let bad = SelectiveScanParams { u: &u[..39], ..p };
        let err = bad.validate().unwrap_err();
        assert!(matches!(err, SsmError::Shape { arg: "u", .. }), "{err}");
        let bad = SelectiveScanParams {
            b: BcInput::Grouped {
                groups: 3,
                data: &bc,
            },
            ..p
        };
        assert!(matches!(
            bad.validate().unwrap_err(),
            SsmError::Groups { arg: "B", .. }
        ));
        let h0 = vec![0f32; 2 * 4 * 3];
        let cu = [0i64, 5];
        let varlen = p.with_cu_seqlens(&cu).with_initial_states(&h0);
        assert!(matches!(
            varlen.validate().unwrap_err(),
            SsmError::CuSeqlens { .. }
        ));
    }

    #[test]
    fn finite_check_is_opt_in() {
        let mut u = vec![0f32; 40];
        u[7] = f32::NAN;
        let a = vec![-1f32; 12];
        let p = SelectiveScanParams::new(
            dims(),
            &u,
            &u,
            &a,
            BcInput::Constant(&a),
            BcInput::Constant(&a),
        );
        assert!(p.validate().is_ok());
        let err = p.with_check_finite(true).validate().unwrap_err();
        assert!(matches!(
            err,
            SsmError::NonFinite {
                arg: "u",
                index: 7,
                ..
            }
        ));
    }
}
