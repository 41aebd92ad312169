//! Single-token decode steps (docs/DESIGN.md §1.3).
//!
//! The state cache is updated in place. With `state_batch_indices`, batch row
//! `i` reads and writes cache row `state_batch_indices[i]`; a negative index marks
//! padding: its output is zero and no state is touched. Without it, row `i` uses
//! cache row `i` and the cache must have exactly `batch` rows.

use crate::mamba2::{check_dt_limit, DSkip, NO_DT_LIMIT};
use crate::shape::{
    check_finite, check_finite_if_some, check_groups, check_len, check_nonzero, Shape,
};
use crate::{Element, Result, SsmError};

/// Check `state_batch_indices` against the cache, rejecting duplicates (two rows
/// updating one state in place would race on a GPU and be order-dependent on a CPU).
pub fn check_state_indices(indices: Option<&[i64]>, batch: usize, cache_rows: usize) -> Result<()> {
    match indices {
        None => {
            if cache_rows != batch {
                return Err(SsmError::Dimension {
                    arg: "state",
                    reason: format!(
                        "without state_batch_indices the cache must have b = {batch} rows, it has {cache_rows}"
                    ),
                });
            }
        }
        Some(idx) => {
            check_len("state_batch_indices", Shape(&[("b", batch)]), idx.len())?;
            let mut seen = vec![false; cache_rows];
            for (i, &v) in idx.iter().enumerate() {
                if v < 0 {
                    continue;
                }
                if v as u64 >= cache_rows as u64 {
                    return Err(SsmError::StateIndex {
                        index: i,
                        value: v,
                        cache: cache_rows,
                    });
                }
                if std::mem::replace(&mut seen[v as usize], true) {
                    return Err(SsmError::Dimension {
                        arg: "state_batch_indices",
                        reason: format!("cache row {v} is used twice (entry {i} repeats it)"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Cache row used by batch row `i`, or `None` for padding.
pub fn cache_row(indices: Option<&[i64]>, i: usize) -> Option<usize> {
    match indices {
        None => Some(i),
        Some(idx) => (idx[i] >= 0).then_some(idx[i] as usize),
    }
}

/// The buffers of one decode step, common to both families: their shapes differ
/// (each family's dims say what they must be), their roles do not. The same struct
/// carries host slices, device views, lengths (for validation) and device
/// pointers: `E` for the element-typed inputs (x, dt, B, C, z), `P` for the f32
/// parameters (A, D, dt_bias), `I` for the state indices.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<E, P = E, I = E> {
    /// `(b, D_in)` or `(b, H, P)`: the token's input.
    pub x: E,
    /// `(b, D_in)` or `(b, H)`: the raw step size, before bias, softplus (and clamp).
    pub dt: E,
    /// `(D_in, N)` or `(H)`.
    pub a: P,
    /// `(b, G, N)`.
    pub b: E,
    /// `(b, G, N)`.
    pub c: E,
    /// The skip term: `(D_in)`, or `(H)` / `(H, P)`.
    pub d: Option<P>,
    /// The output gate `silu(z)`, in the shape of `x`.
    pub z: Option<E>,
    /// `(D_in)` or `(H)`, added to `dt`.
    pub dt_bias: Option<P>,
    /// `(b)`: the cache row of each batch row (negative: padding).
    pub state_batch_indices: Option<I>,
}

/// Lengths of a step's buffers: what shape validation reads.
pub type StepLens = StepInputs<usize>;

impl<E, P, I> StepInputs<E, P, I> {
    /// The buffers, borrowed.
    pub fn as_ref(&self) -> StepInputs<&E, &P, &I> {
        StepInputs {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: self.d.as_ref(),
            z: self.z.as_ref(),
            dt_bias: self.dt_bias.as_ref(),
            state_batch_indices: self.state_batch_indices.as_ref(),
        }
    }

    /// The same buffers through three conversions (one per role).
    pub fn map<E2, P2, I2>(
        self,
        mut fe: impl FnMut(E) -> E2,
        mut fp: impl FnMut(P) -> P2,
        fi: impl FnOnce(I) -> I2,
    ) -> StepInputs<E2, P2, I2> {
        StepInputs {
            x: fe(self.x),
            dt: fe(self.dt),
            a: fp(self.a),
            b: fe(self.b),
            c: fe(self.c),
            d: self.d.map(&mut fp),
            z: self.z.map(&mut fe),
            dt_bias: self.dt_bias.map(&mut fp),
            state_batch_indices: self.state_batch_indices.map(fi),
        }
    }

    /// The same buffers through fallible conversions; the first error stops it.
    pub fn try_map<E2, P2, I2, Err>(
        self,
        mut fe: impl FnMut(E) -> std::result::Result<E2, Err>,
        mut fp: impl FnMut(P) -> std::result::Result<P2, Err>,
        fi: impl FnOnce(I) -> std::result::Result<I2, Err>,
    ) -> std::result::Result<StepInputs<E2, P2, I2>, Err> {
        Ok(StepInputs {
            x: fe(self.x)?,
            dt: fe(self.dt)?,
            a: fp(self.a)?,
            b: fe(self.b)?,
            c: fe(self.c)?,
            d: self.d.map(&mut fp).transpose()?,
            z: self.z.map(&mut fe).transpose()?,
            dt_bias: self.dt_bias.map(&mut fp).transpose()?,
            state_batch_indices: self.state_batch_indices.map(fi).transpose()?,
        })
    }
}

/// Host slices of one step.
pub type HostStepInputs<'a, T> = StepInputs<&'a [T], &'a [f32], &'a [i64]>;

impl<T: Element> HostStepInputs<'_, T> {
    /// Every buffer's length, for the dims' `check`.
    pub fn lens(&self) -> StepLens {
        self.map(|v| v.len(), |v| v.len(), |v| v.len())
    }

    /// Every input finite (`check_finite` of the parameter structs).
    pub fn check_finite(&self) -> Result<()> {
        check_finite("x", self.x)?;
        check_finite("dt", self.dt)?;
        check_finite("A", self.a)?;
        check_finite("B", self.b)?;
        check_finite("C", self.c)?;
        check_finite_if_some("z", self.z)?;
        check_finite_if_some("D", self.d)?;
        check_finite_if_some("dt_bias", self.dt_bias)
    }
}

/// B and C `(b, G, N)`, as every family has them.
fn check_bc(lens: &StepLens, batch: usize, groups: usize, d_state: usize) -> Result<()> {
    let bgn = [("b", batch), ("G", groups), ("N", d_state)];
    check_len("B", Shape(&bgn), lens.b)?;
    check_len("C", Shape(&bgn), lens.c)
}

/// What every family checks the same way after its own inputs: the state cache,
/// whose shape after `cache_rows` is the family's `state_row`, and the index list
/// `(b)` (or, without one, a cache of exactly `b` rows).
fn check_cache(
    lens: &StepLens,
    batch: usize,
    cache_rows: usize,
    state_row: &[(&'static str, usize)],
    state_len: usize,
) -> Result<()> {
    let mut state = vec![("cache_rows", cache_rows)];
    state.extend_from_slice(state_row);
    check_len("state", Shape(&state), state_len)?;
    match lens.state_batch_indices {
        Some(len) => check_len("state_batch_indices", Shape(&[("b", batch)]), len),
        None if cache_rows != batch => Err(SsmError::Dimension {
            arg: "state",
            reason: format!(
                "without state_batch_indices the cache must have b = {batch} rows, it has {cache_rows}"
            ),
        }),
        None => Ok(()),
    }
}

/// The sizes of one Mamba-1 decode step, shared by the host parameters and the
/// device arguments so that both validate the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mamba1StepDims {
    /// `b`, the tokens decoded at once.
    pub batch: usize,
    /// `D_in`, the number of channels.
    pub d_inner: usize,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// `G`, the B/C groups; channel `d` uses group `d / (D_in / G)`.
    pub groups: usize,
    /// Rows of the state cache (`b` without `state_batch_indices`).
    pub cache_rows: usize,
}

impl Mamba1StepDims {
    /// Sizes, buffer lengths and the state cache of `state_len` elements (the
    /// contents of `state_batch_indices` are not read).
    pub fn check(&self, lens: &StepLens, state_len: usize) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("d_inner", self.d_inner)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "D_in", self.d_inner)?;
        let bd = [("b", self.batch), ("D_in", self.d_inner)];
        let per_channel = [("D_in", self.d_inner)];
        check_len("x", Shape(&bd), lens.x)?;
        check_len("dt", Shape(&bd), lens.dt)?;
        check_len(
            "A",
            Shape(&[("D_in", self.d_inner), ("N", self.d_state)]),
            lens.a,
        )?;
        check_bc(lens, self.batch, self.groups, self.d_state)?;
        if let Some(d) = lens.d {
            check_len("D", Shape(&per_channel), d)?;
        }
        if let Some(z) = lens.z {
            check_len("z", Shape(&bd), z)?;
        }
        if let Some(bias) = lens.dt_bias {
            check_len("dt_bias", Shape(&per_channel), bias)?;
        }
        check_cache(
            lens,
            self.batch,
            self.cache_rows,
            &[("D_in", self.d_inner), ("N", self.d_state)],
            state_len,
        )
    }

    /// The output `(b, D_in)`.
    pub fn check_out(&self, out_len: usize) -> Result<()> {
        check_len(
            "out",
            Shape(&[("b", self.batch), ("D_in", self.d_inner)]),
            out_len,
        )
    }
}

/// The sizes of one Mamba-2 decode step (see [`Mamba1StepDims`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mamba2StepDims {
    /// `b`, the tokens decoded at once.
    pub batch: usize,
    /// `H`, the number of heads.
    pub heads: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `G`, the B/C groups; head `h` uses group `h / (H / G)`.
    pub groups: usize,
    /// Rows of the state cache (`b` without `state_batch_indices`).
    pub cache_rows: usize,
}

impl Mamba2StepDims {
    /// As [`Mamba1StepDims::check`]; `d_per_head_dim` says whether `D` is `(H, P)`
    /// (else `(H)`).
    pub fn check(
        &self,
        lens: &StepLens,
        d_per_head_dim: bool,
        dt_limit: (f32, f32),
        state_len: usize,
    ) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("heads", self.heads)?;
        check_nonzero("head_dim", self.head_dim)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "H", self.heads)?;
        let bhp = [("b", self.batch), ("H", self.heads), ("P", self.head_dim)];
        let h = [("H", self.heads)];
        check_len("x", Shape(&bhp), lens.x)?;
        check_len(
            "dt",
            Shape(&[("b", self.batch), ("H", self.heads)]),
            lens.dt,
        )?;
        check_len("A", Shape(&h), lens.a)?;
        check_bc(lens, self.batch, self.groups, self.d_state)?;
        match lens.d {
            Some(d) if d_per_head_dim => {
                check_len("D", Shape(&[("H", self.heads), ("P", self.head_dim)]), d)?
            }
            Some(d) => check_len("D", Shape(&h), d)?,
            None => {}
        }
        if let Some(z) = lens.z {
            check_len("z", Shape(&bhp), z)?;
        }
        if let Some(bias) = lens.dt_bias {
            check_len("dt_bias", Shape(&h), bias)?;
        }
        check_dt_limit(dt_limit)?;
        check_cache(
            lens,
            self.batch,
            self.cache_rows,
            &[("H", self.heads), ("P", self.head_dim), ("N", self.d_state)],
            state_len,
        )
    }

    /// The output `(b, H, P)`.
    pub fn check_out(&self, out_len: usize) -> Result<()> {
        check_len(
            "out",
            Shape(&[("b", self.batch), ("H", self.heads), ("P", self.head_dim)]),
            out_len,
        )
    }
}

/// What the launchers read from either family's step parameters.
pub trait StepParams<'a, T> {
    /// The family's sizes.
    type Dims;
    /// The family's sizes, as the checks take them.
    fn dims(&self) -> Self::Dims;
    /// `N`.
    fn d_state(&self) -> usize;
    /// The buffers, by role.
    fn inputs(&self) -> HostStepInputs<'a, T>;
    /// Validate against a state cache of `state_len` elements (contents of the
    /// index list included).
    fn validate(&self, state_len: usize) -> Result<()>
    where
        T: Element;
}

/// What the launchers read from either family's dims.
pub trait StepDims {
    /// `N`.
    fn d_state(&self) -> usize;
    /// The output's length against the family's `(b, ...)` shape.
    fn check_out(&self, out_len: usize) -> Result<()>;
}

impl StepDims for Mamba1StepDims {
    fn d_state(&self) -> usize {
        self.d_state
    }
    fn check_out(&self, out_len: usize) -> Result<()> {
        Mamba1StepDims::check_out(self, out_len)
    }
}

impl StepDims for Mamba2StepDims {
    fn d_state(&self) -> usize {
        self.d_state
    }
    fn check_out(&self, out_len: usize) -> Result<()> {
        Mamba2StepDims::check_out(self, out_len)
    }
}

/// The trait methods are the inherent ones (which callers reach without the
/// trait in scope).
macro_rules! impl_step_params {
    ($params:ident, $dims:ident) => {
        impl<'a, T> StepParams<'a, T> for $params<'a, T> {
            type Dims = $dims;
            fn dims(&self) -> $dims {
                $params::dims(self)
            }
            fn d_state(&self) -> usize {
                self.d_state
            }
            fn inputs(&self) -> HostStepInputs<'a, T> {
                $params::inputs(self)
            }
            fn validate(&self, state_len: usize) -> Result<()>
            where
                T: Element,
            {
                $params::validate(self, state_len)
            }
        }
    };
}
impl_step_params!(Mamba1StepParams, Mamba1StepDims);
impl_step_params!(Mamba2StepParams, Mamba2StepDims);

/// One Mamba-1 decode step. State cache `(cache_rows, D_in, N)` f32.
#[derive(Clone, Copy, Debug)]
pub struct Mamba1StepParams<'a, T> {
    /// `b`, the tokens decoded at once.
    pub batch: usize,
    /// `D_in`, the number of channels.
    pub d_inner: usize,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// B/C groups: channel `d` uses group `d / (D_in / G)`.
    pub groups: usize,
    /// Rows of the state cache; [`Mamba1StepParams::new`] sets `batch`.
    pub cache_rows: usize,
    /// `(b, D_in)`
    pub x: &'a [T],
    /// `(b, D_in)`
    pub dt: &'a [T],
    /// `(D_in, N)`
    pub a: &'a [f32],
    /// `(b, G, N)`
    pub b: &'a [T],
    /// `(b, G, N)`
    pub c: &'a [T],
    /// `(D_in)`: the skip term `D x`.
    pub d: Option<&'a [f32]>,
    /// `(b, D_in)`: the output gate `silu(z)`.
    pub z: Option<&'a [T]>,
    /// `(D_in)`, added to `dt`.
    pub dt_bias: Option<&'a [f32]>,
    /// Softplus is applied to `dt + dt_bias`.
    pub dt_softplus: bool,
    /// `(b)`: the cache row of each batch row; negative entries are padding
    /// (zero output, state untouched); entries must be distinct and below
    /// `cache_rows`. `None`: row `i` uses cache row `i`.
    pub state_batch_indices: Option<&'a [i64]>,
    /// Reject NaN or Inf in any input (one extra pass).
    pub check_finite: bool,
}

impl<'a, T> Mamba1StepParams<'a, T> {
    /// The sizes, as [`Mamba1StepDims`].
    pub fn dims(&self) -> Mamba1StepDims {
        Mamba1StepDims {
            batch: self.batch,
            d_inner: self.d_inner,
            d_state: self.d_state,
            groups: self.groups,
            cache_rows: self.cache_rows,
        }
    }

    /// The buffers, by role.
    pub fn inputs(&self) -> HostStepInputs<'a, T> {
        StepInputs {
            x: self.x,
            dt: self.dt,
            a: self.a,
            b: self.b,
            c: self.c,
            d: self.d,
            z: self.z,
            dt_bias: self.dt_bias,
            state_batch_indices: self.state_batch_indices,
        }
    }
}

impl<'a, T: Element> Mamba1StepParams<'a, T> {
    /// Parameters with no options set; the cache has `batch` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        d_inner: usize,
        d_state: usize,
        groups: usize,
        x: &'a [T],
        dt: &'a [T],
        a: &'a [f32],
        b: &'a [T],
        c: &'a [T],
    ) -> Self {
        Mamba1StepParams {
            batch,
            d_inner,
            d_state,
            groups,
            cache_rows: batch,
            x,
            dt,
            a,
            b,
            c,
            d: None,
            z: None,
            dt_bias: None,
            dt_softplus: false,
            state_batch_indices: None,
            check_finite: false,
        }
    }

    /// Validate against a state cache of `state_len` elements.
    pub fn validate(&self, state_len: usize) -> Result<()> {
        let inputs = self.inputs();
        self.dims().check(&inputs.lens(), state_len)?;
        check_state_indices(self.state_batch_indices, self.batch, self.cache_rows)?;
        if self.check_finite {
            inputs.check_finite()?;
        }
        Ok(())
    }
}

/// One Mamba-2 decode step. State cache `(cache_rows, H, P, N)` f32.
#[derive(Clone, Copy, Debug)]
pub struct Mamba2StepParams<'a, T> {
    /// `b`, the tokens decoded at once.
    pub batch: usize,
    /// `H`, the number of heads.
    pub heads: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `G`, the B/C groups; head `h` uses group `h / (H / G)`.
    pub groups: usize,
    /// Rows of the state cache; [`Mamba2StepParams::new`] sets `batch`.
    pub cache_rows: usize,
    /// `(b, H, P)`
    pub x: &'a [T],
    /// `(b, H)`
    pub dt: &'a [T],
    /// `(H)`
    pub a: &'a [f32],
    /// `(b, G, N)`
    pub b: &'a [T],
    /// `(b, G, N)`
    pub c: &'a [T],
    /// The skip term: `(H)` or `(H, P)`.
    pub d: Option<DSkip<'a>>,
    /// `(b, H, P)`
    pub z: Option<&'a [T]>,
    /// `(H)`, added to `dt`.
    pub dt_bias: Option<&'a [f32]>,
    /// Softplus is applied to `dt + dt_bias` before the clamp.
    pub dt_softplus: bool,
    /// `(min, max)` clamp of the step size (default [`crate::mamba2::NO_DT_LIMIT`]).
    pub dt_limit: (f32, f32),
    /// `(b)`: the cache row of each batch row; negative entries are padding
    /// (zero output, state untouched); entries must be distinct and below
    /// `cache_rows`. `None`: row `i` uses cache row `i`.
    pub state_batch_indices: Option<&'a [i64]>,
    /// Reject NaN or Inf in any input (one extra pass).
    pub check_finite: bool,
}

impl<'a, T> Mamba2StepParams<'a, T> {
    /// The sizes, as [`Mamba2StepDims`].
    pub fn dims(&self) -> Mamba2StepDims {
        Mamba2StepDims {
            batch: self.batch,
            heads: self.heads,
            head_dim: self.head_dim,
            d_state: self.d_state,
            groups: self.groups,
            cache_rows: self.cache_rows,
        }
    }

    /// The buffers, by role (`D` as its data; [`Self::d`] says which shape).
    pub fn inputs(&self) -> HostStepInputs<'a, T> {
        StepInputs {
            x: self.x,
            dt: self.dt,
            a: self.a,
            b: self.b,
            c: self.c,
            d: self.d.map(|d| match d {
                DSkip::PerHead(v) | DSkip::PerHeadDim(v) => v,
            }),
            z: self.z,
            dt_bias: self.dt_bias,
            state_batch_indices: self.state_batch_indices,
        }
    }
}

impl<'a, T: Element> Mamba2StepParams<'a, T> {
    /// Parameters with no options set; `dt_limit` defaults to no clamp.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        heads: usize,
        head_dim: usize,
        d_state: usize,
        groups: usize,
        x: &'a [T],
        dt: &'a [T],
        a: &'a [f32],
        b: &'a [T],
        c: &'a [T],
    ) -> Self {
        Mamba2StepParams {
            batch,
            heads,
            head_dim,
            d_state,
            groups,
            cache_rows: batch,
            x,
            dt,
            a,
            b,
            c,
            d: None,
            z: None,
            dt_bias: None,
            dt_softplus: false,
            dt_limit: NO_DT_LIMIT,
            state_batch_indices: None,
            check_finite: false,
        }
    }

    /// Validate against a state cache of `state_len` elements: every shape,
    /// the `dt_limit`, the index list (distinct, below `cache_rows`) and, with
    /// `check_finite`, every value.
    pub fn validate(&self, state_len: usize) -> Result<()> {
        let inputs = self.inputs();
        let per_head_dim = matches!(self.d, Some(DSkip::PerHeadDim(_)));
        self.dims()
            .check(&inputs.lens(), per_head_dim, self.dt_limit, state_len)?;
        check_state_indices(self.state_batch_indices, self.batch, self.cache_rows)?;
        if self.check_finite {
            inputs.check_finite()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_indices_rules() {
        assert!(check_state_indices(None, 3, 3).is_ok());
        assert!(check_state_indices(None, 3, 4).is_err());
        assert!(check_state_indices(Some(&[2, -1, 0]), 3, 4).is_ok());
        assert!(matches!(
            check_state_indices(Some(&[4, 0, 1]), 3, 4).unwrap_err(),
            SsmError::StateIndex {
                index: 0,
                value: 4,
                cache: 4
            }
        ));
        assert!(check_state_indices(Some(&[1, 1, -1]), 3, 4).is_err());
        assert!(check_state_indices(Some(&[1, 1]), 3, 4).is_err());
        assert_eq!(cache_row(Some(&[2, -1]), 1), None);
        assert_eq!(cache_row(Some(&[2, -1]), 0), Some(2));
    }
}
