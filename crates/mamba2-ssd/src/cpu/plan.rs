//! The tiling: which tokens form which sequence and which chunk.
//!
//! Tokens are numbered globally along the packed `(b, L)` axis, `token = row * L + t`,
//! so that batch rows and varlen sequences are described the same way: a sequence
//! is a run of consecutive tokens, cut into chunks of at most `Q` tokens that
//! restart at every sequence start. The chunks of all sequences, in order, cover
//! every token exactly once; per-token buffers can therefore be split into one
//! disjoint slice per chunk (see [`split_lengths_mut`]).

use std::ops::Range;

use ssm_core::mamba2::SsdDims;
use ssm_core::shape::segments;

/// One sequence: a batch row, or one segment of a varlen row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sequence {
    /// Global token index of its first token.
    pub token_start: usize,
    pub len: usize,
    /// Its chunks, as indices into [`ChunkPlan::chunks`] (empty for an empty sequence).
    pub chunks: Range<usize>,
}

/// At most `Q` consecutive tokens of one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Global token index of its first token.
    pub token_start: usize,
    /// Number of tokens, `1..=Q`.
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChunkPlan {
    pub sequences: Vec<Sequence>,
    pub chunks: Vec<Chunk>,
    /// The longest chunk, `min(Q, longest sequence)`: the size scratch tiles need.
    pub max_chunk_len: usize,
}

impl ChunkPlan {
    /// `chunk_size` must be at least 1 and `cu_seqlens`, when given, already validated.
    pub fn new(dims: &SsdDims, cu_seqlens: Option<&[i64]>, chunk_size: usize) -> Self {
        debug_assert!(chunk_size >= 1);
        let per_row = segments(cu_seqlens, dims.seqlen);
        // Varlen input has one row (validated), so its segments are already global.
        let rows = if cu_seqlens.is_some() { 1 } else { dims.batch };
        let mut sequences = Vec::with_capacity(rows * per_row.len());
        let mut chunks = Vec::new();
        for row in 0..rows {
            for &(start, end) in &per_row {
                let token_start = row * dims.seqlen + start;
                let len = end - start;
                let first = chunks.len();
                chunks.extend((0..len).step_by(chunk_size).map(|offset| Chunk {
                    token_start: token_start + offset,
                    len: chunk_size.min(len - offset),
                }));
                sequences.push(Sequence {
                    token_start,
                    len,
                    chunks: first..chunks.len(),
                });
            }
        }
        let max_chunk_len = chunks.iter().map(|c| c.len).max().unwrap_or(0);
        ChunkPlan {
            sequences,
            chunks,
            max_chunk_len,
        }
    }
}

/// Split `buf` into consecutive disjoint slices of the given lengths (which must
/// sum to `buf.len()`), so that parallel tasks can each own one.
pub(crate) fn split_lengths_mut<E>(
    mut buf: &mut [E],
    lengths: impl IntoIterator<Item = usize>,
) -> Vec<&mut [E]> {
    let mut parts = Vec::new();
    for len in lengths {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        parts.push(head);
        buf = tail;
    }
    debug_assert!(buf.is_empty(), "lengths must cover the buffer");
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(batch: usize, seqlen: usize) -> SsdDims {
        SsdDims::new(batch, seqlen, 1, 1, 1, 1)
    }

    #[test]
    fn batch_rows_are_cut_into_chunks_with_a_partial_last_one() {
        let plan = ChunkPlan::new(&dims(2, 5), None, 2);
        let starts: Vec<_> = plan.chunks.iter().map(|c| (c.token_start, c.len)).collect();
        assert_eq!(starts, [(0, 2), (2, 2), (4, 1), (5, 2), (7, 2), (9, 1)]);
        assert_eq!(plan.sequences[1].chunks, 3..6);
        assert_eq!(plan.max_chunk_len, 2);
    }

    #[test]
    fn chunks_restart_at_varlen_boundaries_and_skip_empty_sequences() {
        let cu = [0i64, 3, 3, 4, 9];
        let plan = ChunkPlan::new(&dims(1, 9), Some(&cu), 4);
        let starts: Vec<_> = plan.chunks.iter().map(|c| (c.token_start, c.len)).collect();
        assert_eq!(starts, [(0, 3), (3, 1), (4, 4), (8, 1)]);
        let ranges: Vec<_> = plan.sequences.iter().map(|s| s.chunks.clone()).collect();
        assert_eq!(ranges, [0..1, 1..1, 1..2, 2..4]);
    }

    #[test]
    fn chunk_longer_than_the_sequence_is_the_whole_sequence() {
        let plan = ChunkPlan::new(&dims(1, 5), None, 100);
        assert_eq!(
            plan.chunks,
            [Chunk {
                token_start: 0,
                len: 5
            }]
        );
        assert_eq!(plan.max_chunk_len, 5);
    }

    #[test]
    fn split_gives_disjoint_consecutive_parts() {
        let mut v = [0, 1, 2, 3, 4, 5];
        let parts = split_lengths_mut(&mut v, [2, 0, 3, 1]);
        assert_eq!(parts.len(), 4);
        assert_eq!(&*parts[2], &[2, 3, 4]);
        assert!(parts[1].is_empty());
    }
}
