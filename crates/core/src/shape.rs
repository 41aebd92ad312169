//! Shape checks shared by the parameter structs.

use crate::{Element, Result, SsmError};

/// A named shape such as `(b=2, D_in=8, L=16)`.
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a>(pub &'a [(&'static str, usize)]);

impl Shape<'_> {
    /// Number of elements, or an error naming `arg` when the product overflows.
    pub fn len(&self, arg: &'static str) -> Result<usize> {
        self.0.iter().try_fold(1usize, |acc, &(_, d)| {
            acc.checked_mul(d).ok_or_else(|| SsmError::Dimension {
                arg,
                reason: format!("shape {self} has more elements than fit in usize"),
            })
        })
    }

    /// Whether any dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.0.iter().any(|&(_, d)| d == 0)
    }
}

impl std::fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(")?;
        for (i, (name, d)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}={d}")?;
        }
        f.write_str(")")
    }
}

/// Check that a tensor argument has exactly the elements of `shape`.
pub fn check_len(arg: &'static str, shape: Shape<'_>, got: usize) -> Result<()> {
    let expected_len = shape.len(arg)?;
    if expected_len != got {
        return Err(SsmError::shape(arg, shape.to_string(), expected_len, got));
    }
    Ok(())
}

/// Largest tensor an implementation is asked to allocate, in bytes at f64 (the
/// oracle's precision): 1 TiB, more memory than any machine this runs on. Sizes
/// not bounded by a given input (final states when L = 0, say) are checked against
/// it, so absurd dimensions are a typed error instead of an allocation abort.
pub const MAX_TENSOR_BYTES: usize = 1 << 40;

/// Check that a tensor the call will allocate (not one the caller passed) has a
/// representable size of at most [`MAX_TENSOR_BYTES`] at 8 bytes per element.
pub fn check_allocatable(arg: &'static str, shape: Shape<'_>) -> Result<usize> {
    let len = shape.len(arg)?;
    if len
        .checked_mul(8)
        .is_none_or(|bytes| bytes > MAX_TENSOR_BYTES)
    {
        return Err(SsmError::Dimension {
            arg,
            reason: format!(
                "shape {shape} would allocate {len} elements, more than {} bytes at f64",
                MAX_TENSOR_BYTES
            ),
        });
    }
    Ok(len)
}

/// Check that a dimension is non-zero.
pub fn check_nonzero(arg: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(SsmError::Dimension {
            arg,
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// Check that `groups` divides `count` (channels or heads).
pub fn check_groups(
    arg: &'static str,
    groups: usize,
    what: &'static str,
    count: usize,
) -> Result<()> {
    if groups == 0 || count % groups != 0 {
        return Err(SsmError::Groups {
            arg,
            groups,
            what,
            count,
        });
    }
    Ok(())
}

/// `(b, <state>)`, or `(num_seqs, <state>)` with varlen offsets: the shape of a
/// sequence problem's initial and final states (and of their gradients), where
/// `state` is one sequence's state (`D_in, N` or `H, P, N`).
pub fn states_shape(
    varlen: bool,
    num_seqs: usize,
    state: &[(&'static str, usize)],
) -> Vec<(&'static str, usize)> {
    let rows = if varlen { "num_seqs" } else { "b" };
    let mut shape = vec![(rows, num_seqs)];
    shape.extend_from_slice(state);
    shape
}

/// The sequences of a forward call and their states, checked alike for every
/// family: `cu_seqlens` (varlen, batch 1) or the `batch` rows give the number of
/// sequences; the final states must be allocatable when requested and the
/// initial states, when given, must have the [`states_shape`]. Returns the number
/// of sequences.
pub fn check_sequences(
    cu_seqlens: Option<&[i64]>,
    (batch, seqlen): (usize, usize),
    state: &[(&'static str, usize)],
    return_final_states: bool,
    initial_states: Option<&[f32]>,
) -> Result<usize> {
    let num_seqs = match cu_seqlens {
        Some(cu) => check_cu_seqlens(cu, batch, seqlen)?,
        None => batch,
    };
    let shape = states_shape(cu_seqlens.is_some(), num_seqs, state);
    if return_final_states {
        check_allocatable("final_states", Shape(&shape))?;
    }
    if let Some(h0) = initial_states {
        check_len("initial_states", Shape(&shape), h0.len())?;
    }
    Ok(num_seqs)
}

/// `dL/d final_states` of a backward call: refused when the forward returns no
/// final states (it would be silently ignored otherwise, or the caller has the
/// wrong forward in mind), else of the [`states_shape`] `shape`.
pub fn check_d_final_states(
    d_final_states: Option<&[f32]>,
    return_final_states: bool,
    shape: &[(&'static str, usize)],
) -> Result<()> {
    let Some(dh) = d_final_states else {
        return Ok(());
    };
    if !return_final_states {
        return Err(SsmError::Dimension {
            arg: "d_final_states",
            reason: "given, but the forward does not return final states \
                     (set return_final_states, or pass None)"
                .into(),
        });
    }
    check_len("d_final_states", Shape(shape), dh.len())
}

/// Validate varlen prefix offsets: starts at 0, non-decreasing, ends at `seqlen`.
/// Returns the number of sequences.
pub fn check_cu_seqlens(cu_seqlens: &[i64], batch: usize, seqlen: usize) -> Result<usize> {
    if batch != 1 {
        return Err(SsmError::CuSeqlens {
            reason: format!("varlen input packs all sequences into one row, so batch must be 1 (got batch={batch})"),
        });
    }
    if cu_seqlens.len() < 2 {
        return Err(SsmError::CuSeqlens {
            reason: format!(
                "needs num_seqs + 1 >= 2 offsets, got {} offsets",
                cu_seqlens.len()
            ),
        });
    }
    if cu_seqlens[0] != 0 {
        return Err(SsmError::CuSeqlens {
            reason: format!("must start at 0, starts at {}", cu_seqlens[0]),
        });
    }
    for (i, w) in cu_seqlens.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(SsmError::CuSeqlens {
                reason: format!(
                    "must be non-decreasing, but offset {} = {} < offset {} = {}",
                    i + 1,
                    w[1],
                    i,
                    w[0]
                ),
            });
        }
    }
    let last = *cu_seqlens.last().expect("len >= 2 checked above");
    if last != seqlen as i64 {
        return Err(SsmError::CuSeqlens {
            reason: format!("must end at L = {seqlen}, ends at {last}"),
        });
    }
    Ok(cu_seqlens.len() - 1)
}

/// [`check_finite`] on an optional input; an absent one passes.
pub fn check_finite_if_some<T: Element>(arg: &'static str, xs: Option<&[T]>) -> Result<()> {
    xs.map_or(Ok(()), |xs| check_finite(arg, xs))
}

/// Check every element is finite; names the first bad one.
pub fn check_finite<T: Element>(arg: &'static str, xs: &[T]) -> Result<()> {
    match xs.iter().position(|x| !x.to_f64().is_finite()) {
        None => Ok(()),
        Some(index) => Err(SsmError::NonFinite {
            arg,
            index,
            value: xs[index].to_f64(),
        }),
    }
}

/// Sequence boundaries as `(start, end)` pairs: one sequence of length `seqlen`
/// when `cu_seqlens` is absent, else the varlen segments.
pub fn segments(cu_seqlens: Option<&[i64]>, seqlen: usize) -> Vec<(usize, usize)> {
    match cu_seqlens {
        None => vec![(0, seqlen)],
        Some(cu) => cu
            .windows(2)
            .map(|w| (w[0] as usize, w[1] as usize))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_error_names_argument_and_shape() {
        let err = check_len("u", Shape(&[("b", 2), ("D_in", 3), ("L", 4)]), 23).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`u`"), "{msg}");
        assert!(msg.contains("(b=2, D_in=3, L=4)"), "{msg}");
        assert!(msg.contains("24 elements"), "{msg}");
        assert!(msg.contains("got 23"), "{msg}");
    }

    #[test]
    fn overflowing_shape_is_an_error_not_a_panic() {
        assert!(check_len("x", Shape(&[("a", usize::MAX), ("b", 2)]), 0).is_err());
    }

    #[test]
    fn cu_seqlens_rules() {
        assert_eq!(check_cu_seqlens(&[0, 3, 3, 7], 1, 7).unwrap(), 3);
        assert!(check_cu_seqlens(&[0, 3, 2, 7], 1, 7).is_err());
        assert!(check_cu_seqlens(&[1, 7], 1, 7).is_err());
        assert!(check_cu_seqlens(&[0, 6], 1, 7).is_err());
        assert!(check_cu_seqlens(&[0], 1, 7).is_err());
        assert!(check_cu_seqlens(&[0, 7], 2, 7).is_err());
    }

    #[test]
    fn finite_check_names_first_bad_element() {
        let err = check_finite("dt", &[1.0f32, f32::NAN, f32::INFINITY]).unwrap_err();
        assert!(matches!(
            err,
            SsmError::NonFinite {
                arg: "dt",
                index: 1,
                ..
            }
        ));
    }
}
