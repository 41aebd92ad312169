//! The independent sequences of a forward call and their state rows.
//!
//! Without `cu_seqlens` every batch row is one sequence and owns state row `b`.
//! With `cu_seqlens` (batch is 1, checked by validation) sequence `i` is the
//! slice `cu_seqlens[i]..cu_seqlens[i + 1]` of row 0 and owns state row `i`.
//! Both families iterate over this one list, so varlen handling (state reset at
//! each boundary, per-sequence initial and final states, empty sequences) is
//! written once.

use ssm_core::shape::segments;

/// One sequence: positions `start..end` of batch row `row`, state row `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub row: usize,
    pub start: usize,
    pub end: usize,
    pub state: usize,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Positions of the sequence on the L axis of its row.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// Every sequence of a validated call, in state-row order.
pub(crate) fn sequences(batch: usize, seqlen: usize, cu_seqlens: Option<&[i64]>) -> Vec<Sequence> {
    match cu_seqlens {
        None => (0..batch)
            .map(|row| Sequence {
                row,
                start: 0,
                end: seqlen,
                state: row,
            })
            .collect(),
        Some(cu) => segments(Some(cu), seqlen)
            .into_iter()
            .enumerate()
            .map(|(state, (start, end))| Sequence {
                row: 0,
                start,
                end,
                state,
            })
            .collect(),
    }
}

/// Every (sequence, channel) pair of a validated Mamba-1 call, sequence-major:
/// the independent tasks of the forward and backward oracles.
pub(crate) fn sequence_channels(
    batch: usize,
    seqlen: usize,
    d_inner: usize,
    cu_seqlens: Option<&[i64]>,
) -> Vec<(Sequence, usize)> {
    sequences(batch, seqlen, cu_seqlens)
        .into_iter()
        .flat_map(|seq| (0..d_inner).map(move |d| (seq, d)))
        .collect()
}

/// Fill `state` (one state row of `state.len()` elements) from row `row` of the
/// optional f32 initial states, widened exactly; zero when none were given.
pub(crate) fn load_initial_state(state: &mut [f64], initial_states: Option<&[f32]>, row: usize) {
    match initial_states {
        Some(h0) => {
            let size = state.len();
            for (s, &v) in state.iter_mut().zip(&h0[row * size..(row + 1) * size]) {
                *s = f64::from(v);
            }
        }
        None => state.fill(0.0),
    }
}

/// The output gate: `y * silu(z)` when z is given, else `y`.
pub(crate) fn gate(y: f64, z: Option<f64>) -> f64 {
    match z {
        Some(z) => y * ssm_core::math::silu(z),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_are_sequences_without_varlen() {
        let seqs = sequences(2, 5, None);
        assert_eq!(
            seqs,
            vec![
                Sequence {
                    row: 0,
                    start: 0,
                    end: 5,
                    state: 0
                },
                Sequence {
                    row: 1,
                    start: 0,
                    end: 5,
                    state: 1
                },
            ]
        );
    }

    #[test]
    fn varlen_segments_share_row_zero_and_keep_empty_ones() {
        let seqs = sequences(1, 4, Some(&[0, 3, 3, 4]));
        assert_eq!(seqs.len(), 3);
        assert_eq!(
            seqs[1],
            Sequence {
                row: 0,
                start: 3,
                end: 3,
                state: 1
            }
        );
        assert_eq!(seqs[1].len(), 0);
        assert_eq!(seqs[2].positions(), 3..4);
    }

    #[test]
    fn initial_state_rows_are_widened_or_zero() {
        let h0 = [1.5f32, 2.0, -3.0, 0.25];
        let mut s = [9.0; 2];
        load_initial_state(&mut s, Some(&h0), 1);
        assert_eq!(s, [-3.0, 0.25]);
        load_initial_state(&mut s, None, 1);
        assert_eq!(s, [0.0, 0.0]);
    }
}
