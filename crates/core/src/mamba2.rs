//! The Mamba-2 SSD problem (docs/DESIGN.md §1.2, layouts §2).
//!
//! Layouts (token-major, mamba_ssm's): `x, z, out: (b, L, H, P)`; `dt: (b, L, H)`;
//! `A, dt_bias: (H)`; `B, C: (b, L, G, N)`; `D: (H)` or `(H, P)`; states
//! `(b, H, P, N)`, or `(num_seqs, H, P, N)` for varlen input.

use crate::shape::{
    check_finite, check_finite_if_some, check_groups, check_len, check_nonzero, check_sequences,
    Shape,
};
use crate::{Element, Result, SsmError};

/// Sizes of an SSD call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdDims {
    /// `b`, the batch size (1 for varlen input).
    pub batch: usize,
    /// `L` (total packed length for varlen).
    pub seqlen: usize,
    /// `H`, the number of heads.
    pub heads: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `G`, the number of B/C groups; head `h` uses group `h / (H / G)`.
    pub groups: usize,
}

impl SsdDims {
    /// The sizes in the order of the layout names `(b, L, H, P, N, G)`: the one
    /// constructor from loose sizes, so callers do not each spell the literal.
    pub const fn new(
        batch: usize,
        seqlen: usize,
        heads: usize,
        head_dim: usize,
        d_state: usize,
        groups: usize,
    ) -> Self {
        SsdDims {
            batch,
            seqlen,
            heads,
            head_dim,
            d_state,
            groups,
        }
    }

    /// The B/C group of head `head`.
    pub fn group_of(&self, head: usize) -> usize {
        head / (self.heads / self.groups)
    }

    /// `b * L`, the tokens of the call.
    pub fn tokens(&self) -> usize {
        self.batch * self.seqlen
    }

    /// `(b, L, H, P)` by name: the shape of `x`, `z` and the output.
    pub fn x_shape(&self) -> [(&'static str, usize); 4] {
        [
            ("b", self.batch),
            ("L", self.seqlen),
            ("H", self.heads),
            ("P", self.head_dim),
        ]
    }

    /// `(b, L, G, N)` by name: the shape of B and C.
    pub fn bc_shape(&self) -> [(&'static str, usize); 4] {
        [
            ("b", self.batch),
            ("L", self.seqlen),
            ("G", self.groups),
            ("N", self.d_state),
        ]
    }

    /// Elements of `x`, `z` and the output, `b * L * H * P`.
    pub fn x_len(&self) -> usize {
        self.tokens() * self.heads * self.head_dim
    }

    /// Elements of `dt`, `b * L * H`.
    pub fn dt_len(&self) -> usize {
        self.tokens() * self.heads
    }

    /// Elements of B and of C, `b * L * G * N`.
    pub fn bc_len(&self) -> usize {
        self.tokens() * self.groups * self.d_state
    }

    /// Elements of the states of `rows` sequences, `rows * H * P * N`.
    pub fn states_len(&self, rows: usize) -> usize {
        rows * self.heads * self.head_dim * self.d_state
    }

    /// The checks of the sizes alone (no data): every size but `L` nonzero, and
    /// `G` dividing `H`. [`SsdParams::validate`] and the plans made from shapes
    /// both start with these.
    pub fn check(&self) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("heads", self.heads)?;
        check_nonzero("head_dim", self.head_dim)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "H", self.heads)
    }
}

/// `b{batch} L{seqlen} H{heads} P{head_dim} N{d_state} G{groups}`: the label of
/// a shape in reports and test names.
impl std::fmt::Display for SsdDims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "b{} L{} H{} P{} N{} G{}",
            self.batch, self.seqlen, self.heads, self.head_dim, self.d_state, self.groups
        )
    }
}

/// The skip term `D`: one value per head, or one per head and head dimension.
#[derive(Clone, Copy, Debug)]
pub enum DSkip<'a> {
    /// `(H)`.
    PerHead(&'a [f32]),
    /// `(H, P)`.
    PerHeadDim(&'a [f32]),
}

impl DSkip<'_> {
    /// `D` for head `h`, head-dimension index `p`.
    pub fn get(&self, head_dim: usize, h: usize, p: usize) -> f32 {
        match *self {
            DSkip::PerHead(d) => d[h],
            DSkip::PerHeadDim(d) => d[h * head_dim + p],
        }
    }
    /// The flat data, whichever the shape.
    pub fn data(&self) -> &[f32] {
        match *self {
            DSkip::PerHead(d) | DSkip::PerHeadDim(d) => d,
        }
    }
    pub(crate) fn validate(&self, heads: usize, head_dim: usize) -> Result<()> {
        match *self {
            DSkip::PerHead(d) => check_len("D", Shape(&[("H", heads)]), d.len()),
            DSkip::PerHeadDim(d) => {
                check_len("D", Shape(&[("H", heads), ("P", head_dim)]), d.len())
            }
        }
    }
}

/// `(min, max)` clamp applied to the step size. The default `[0, inf)` only clamps
/// negative steps to 0, exactly as mamba_ssm's kernels do.
pub const NO_DT_LIMIT: (f32, f32) = (0.0, f32::INFINITY);

/// A `(min, max)` step clamp is valid when neither bound is NaN and `min <= max`.
pub fn check_dt_limit(limit: (f32, f32)) -> Result<()> {
    let (min, max) = limit;
    if min.is_nan() || max.is_nan() || min > max {
        return Err(SsmError::DtLimit { min, max });
    }
    Ok(())
}

/// Every input of an SSD forward pass.
#[derive(Clone, Copy, Debug)]
pub struct SsdParams<'a, T> {
    /// The sizes.
    pub dims: SsdDims,
    /// `(b, L, H, P)`: the input.
    pub x: &'a [T],
    /// `(b, L, H)`: the raw step size, before bias, softplus and clamp.
    pub dt: &'a [T],
    /// `(H)`: one scalar decay rate per head.
    pub a: &'a [f32],
    /// `(b, L, G, N)`.
    pub b: &'a [T],
    /// `(b, L, G, N)`.
    pub c: &'a [T],
    /// `(H)`, added to `dt`.
    pub dt_bias: Option<&'a [f32]>,
    /// Softplus is applied to `dt + dt_bias` before the clamp.
    pub dt_softplus: bool,
    /// `(min, max)` clamp of the step size (default [`NO_DT_LIMIT`]).
    pub dt_limit: (f32, f32),
    /// The skip term `D x`.
    pub d: Option<DSkip<'a>>,
    /// `(b, L, H, P)`: the output gate `silu(z)`.
    pub z: Option<&'a [T]>,
    /// `(b, H, P, N)`, or `(num_seqs, H, P, N)` with `cu_seqlens`.
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
pub struct SsdLayout {
    /// Number of independent sequences: `batch`, or the varlen count.
    pub num_seqs: usize,
}

impl<'a, T: Element> SsdParams<'a, T> {
    /// The required inputs, every option off (see the `with_*` methods).
    pub fn new(
        dims: SsdDims,
        x: &'a [T],
        dt: &'a [T],
        a: &'a [f32],
        b: &'a [T],
        c: &'a [T],
    ) -> Self {
        SsdParams {
            dims,
            x,
            dt,
            a,
            b,
            c,
            dt_bias: None,
            dt_softplus: false,
            dt_limit: NO_DT_LIMIT,
            d: None,
            z: None,
            initial_states: None,
            cu_seqlens: None,
            return_final_states: false,
            check_finite: false,
        }
    }
    /// Add `dt_bias` `(H)` to `dt`.
    pub fn with_dt_bias(mut self, bias: &'a [f32]) -> Self {
        self.dt_bias = Some(bias);
        self
    }
    /// Apply softplus to `dt + dt_bias` (before the clamp).
    pub fn with_dt_softplus(mut self, on: bool) -> Self {
        self.dt_softplus = on;
        self
    }
    /// Clamp the step size to `[min, max]`; [`SsmError::DtLimit`] at validation
    /// if `min > max` or either is NaN.
    pub fn with_dt_limit(mut self, min: f32, max: f32) -> Self {
        self.dt_limit = (min, max);
        self
    }
    /// Add the skip term `D x`.
    pub fn with_d(mut self, d: DSkip<'a>) -> Self {
        self.d = Some(d);
        self
    }
    sequence_setters!('a, T);

    /// The processed step size `dt'` at `(batch, t, head)`.
    pub fn dt_at(&self, bi: usize, t: usize, h: usize) -> f64 {
        let SsdDims { seqlen, heads, .. } = self.dims;
        let raw = self.dt[(bi * seqlen + t) * heads + h].to_f64();
        let bias = self.dt_bias.map_or(0.0, |b| b[h] as f64);
        crate::math::ssd_dt(raw, bias, self.dt_softplus, self.dt_limit)
    }

    /// Check every shape and option; returns the number of sequences.
    pub fn validate(&self) -> Result<SsdLayout> {
        let dims = self.dims;
        dims.check()?;
        let (batch, seqlen, heads) = (dims.batch, dims.seqlen, dims.heads);
        let (head_dim, d_state) = (dims.head_dim, dims.d_state);
        let blhp = dims.x_shape();
        check_len("x", Shape(&blhp), self.x.len())?;
        check_len("dt", Shape(&blhp[..3]), self.dt.len())?;
        check_len("A", Shape(&[("H", heads)]), self.a.len())?;
        let blgn = dims.bc_shape();
        check_len("B", Shape(&blgn), self.b.len())?;
        check_len("C", Shape(&blgn), self.c.len())?;
        if let Some(bias) = self.dt_bias {
            check_len("dt_bias", Shape(&[("H", heads)]), bias.len())?;
        }
        check_dt_limit(self.dt_limit)?;
        if let Some(d) = &self.d {
            d.validate(heads, head_dim)?;
        }
        if let Some(z) = self.z {
            check_len("z", Shape(&blhp), z.len())?;
        }
        let num_seqs = check_sequences(
            self.cu_seqlens,
            (batch, seqlen),
            &[("H", heads), ("P", head_dim), ("N", d_state)],
            self.return_final_states,
            self.initial_states,
        )?;
        if self.check_finite {
            check_finite("x", self.x)?;
            check_finite("dt", self.dt)?;
            check_finite("A", self.a)?;
            check_finite("B", self.b)?;
            check_finite("C", self.c)?;
            check_finite_if_some("dt_bias", self.dt_bias)?;
            check_finite_if_some("D", self.d.as_ref().map(DSkip::data))?;
            check_finite_if_some("z", self.z)?;
            check_finite_if_some("initial_states", self.initial_states)?;
        }
        Ok(SsdLayout { num_seqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> SsdDims {
        SsdDims::new(1, 6, 4, 2, 3, 2)
    }

    #[test]
    fn sizes_follow_the_layouts() {
        let d = SsdDims::new(2, 6, 4, 3, 5, 2);
        assert_eq!((d.batch, d.seqlen, d.heads), (2, 6, 4));
        assert_eq!((d.head_dim, d.d_state, d.groups), (3, 5, 2));
        assert_eq!((d.tokens(), d.x_len(), d.dt_len()), (12, 144, 48));
        assert_eq!((d.bc_len(), d.states_len(3)), (120, 180));
        assert_eq!(d.to_string(), "b2 L6 H4 P3 N5 G2");
        assert!(d.check().is_ok());
        let err = SsdDims { groups: 3, ..d }.check().unwrap_err();
        assert!(matches!(err, SsmError::Groups { .. }), "{err}");
    }

    #[test]
    fn validation_names_arguments() {
        let x = vec![0f32; 6 * 4 * 2];
        let dt = vec![0f32; 6 * 4];
        let a = vec![-1f32; 4];
        let bc = vec![0f32; 6 * 2 * 3];
        let p = SsdParams::new(dims(), &x, &dt, &a, &bc, &bc);
        assert_eq!(p.validate().unwrap().num_seqs, 1);
        let err = SsdParams { c: &bc[1..], ..p }.validate().unwrap_err();
        assert!(matches!(err, SsmError::Shape { arg: "C", .. }), "{err}");
        let err = p.with_dt_limit(1.0, 0.5).validate().unwrap_err();
        assert!(matches!(err, SsmError::DtLimit { .. }));
        let d = [1f32; 3];
        let err = p.with_d(DSkip::PerHead(&d)).validate().unwrap_err();
        assert!(matches!(err, SsmError::Shape { arg: "D", .. }));
        let cu = [0i64, 2, 2, 6];
        let s0 = vec![0f32; 3 * 4 * 2 * 3];
        assert_eq!(
            p.with_cu_seqlens(&cu)
                .with_initial_states(&s0)
                .validate()
                .unwrap()
                .num_seqs,
            3
        );
        let bad_groups = SsdParams {
            dims: SsdDims {
                groups: 3,
                ..dims()
            },
            ..p
        };
        assert!(matches!(
            bad_groups.validate().unwrap_err(),
            SsmError::Groups { .. }
        ));
    }
}
