//! Single-token decode steps (docs/DESIGN.md §1.3).
//!
//! The state cache is updated in place. With `state_batch_indices`, batch row
//! `i` reads and writes cache row `state_batch_indices[i]`; a negative index marks
//! padding: its output is zero and no state is touched. Without it, row `i` uses
//! cache row `i` and the cache must have exactly `batch` rows.

use crate::mamba2::{check_dt_limit, DSkip, NO_DT_LIMIT};
use crate::shape::{check_finite, check_groups, check_len, check_nonzero, Shape};
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

/// One Mamba-1 decode step. State cache `(cache_rows, D_in, N)` f32.
#[derive(Clone, Copy, Debug)]
pub struct Mamba1StepParams<'a, T> {
    pub batch: usize,
    pub d_inner: usize,
    pub d_state: usize,
    /// B/C groups: channel `d` uses group `d / (D_in / G)`.
    pub groups: usize,
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
    pub d: Option<&'a [f32]>,
    pub z: Option<&'a [T]>,
    pub dt_bias: Option<&'a [f32]>,
    pub dt_softplus: bool,
    pub state_batch_indices: Option<&'a [i64]>,
    pub check_finite: bool,
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
        check_nonzero("batch", self.batch)?;
        check_nonzero("d_inner", self.d_inner)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "D_in", self.d_inner)?;
        let bd = [("b", self.batch), ("D_in", self.d_inner)];
        check_len("x", Shape(&bd), self.x.len())?;
        check_len("dt", Shape(&bd), self.dt.len())?;
        check_len(
            "A",
            Shape(&[("D_in", self.d_inner), ("N", self.d_state)]),
            self.a.len(),
        )?;
        let bgn = [("b", self.batch), ("G", self.groups), ("N", self.d_state)];
        check_len("B", Shape(&bgn), self.b.len())?;
        check_len("C", Shape(&bgn), self.c.len())?;
        if let Some(d) = self.d {
            check_len("D", Shape(&[("D_in", self.d_inner)]), d.len())?;
        }
        if let Some(z) = self.z {
            check_len("z", Shape(&bd), z.len())?;
        }
        if let Some(bias) = self.dt_bias {
            check_len("dt_bias", Shape(&[("D_in", self.d_inner)]), bias.len())?;
        }
        check_len(
            "state",
            Shape(&[
                ("cache_rows", self.cache_rows),
                ("D_in", self.d_inner),
                ("N", self.d_state),
            ]),
            state_len,
        )?;
        check_state_indices(self.state_batch_indices, self.batch, self.cache_rows)?;
        if self.check_finite {
            check_finite("x", self.x)?;
            check_finite("dt", self.dt)?;
            check_finite("A", self.a)?;
            check_finite("B", self.b)?;
            check_finite("C", self.c)?;
            if let Some(z) = self.z {
                check_finite("z", z)?;
            }
            if let Some(d) = self.d {
                check_finite("D", d)?;
            }
            if let Some(bias) = self.dt_bias {
                check_finite("dt_bias", bias)?;
            }
        }
        Ok(())
    }
}

/// One Mamba-2 decode step. State cache `(cache_rows, H, P, N)` f32.
#[derive(Clone, Copy, Debug)]
pub struct Mamba2StepParams<'a, T> {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub d_state: usize,
    pub groups: usize,
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
    pub d: Option<DSkip<'a>>,
    /// `(b, H, P)`
    pub z: Option<&'a [T]>,
    pub dt_bias: Option<&'a [f32]>,
    pub dt_softplus: bool,
    pub dt_limit: (f32, f32),
    pub state_batch_indices: Option<&'a [i64]>,
    pub check_finite: bool,
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

    pub fn validate(&self, state_len: usize) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("heads", self.heads)?;
        check_nonzero("head_dim", self.head_dim)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "H", self.heads)?;
        let bhp = [("b", self.batch), ("H", self.heads), ("P", self.head_dim)];
        check_len("x", Shape(&bhp), self.x.len())?;
        check_len(
            "dt",
            Shape(&[("b", self.batch), ("H", self.heads)]),
            self.dt.len(),
        )?;
        check_len("A", Shape(&[("H", self.heads)]), self.a.len())?;
        let bgn = [("b", self.batch), ("G", self.groups), ("N", self.d_state)];
        check_len("B", Shape(&bgn), self.b.len())?;
        check_len("C", Shape(&bgn), self.c.len())?;
        if let Some(d) = &self.d {
            d.validate(self.heads, self.head_dim)?;
        }
        if let Some(z) = self.z {
            check_len("z", Shape(&bhp), z.len())?;
        }
        if let Some(bias) = self.dt_bias {
            check_len("dt_bias", Shape(&[("H", self.heads)]), bias.len())?;
        }
        check_dt_limit(self.dt_limit)?;
        check_len(
            "state",
            Shape(&[
                ("cache_rows", self.cache_rows),
                ("H", self.heads),
                ("P", self.head_dim),
                ("N", self.d_state),
            ]),
            state_len,
        )?;
        check_state_indices(self.state_batch_indices, self.batch, self.cache_rows)?;
        if self.check_finite {
            check_finite("x", self.x)?;
            check_finite("dt", self.dt)?;
            check_finite("A", self.a)?;
            check_finite("B", self.b)?;
            check_finite("C", self.c)?;
            if let Some(z) = self.z {
                check_finite("z", z)?;
            }
            if let Some(d) = &self.d {
                check_finite("D", d.data())?;
            }
            if let Some(bias) = self.dt_bias {
                check_finite("dt_bias", bias)?;
            }
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
