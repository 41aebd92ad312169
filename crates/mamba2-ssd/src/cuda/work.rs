//! The work-item table: which tokens each block walks.
//!
//! A plain batch is the varlen case with `cu_seqlens = [0, L, 2L, ...]` over the
//! packed `(b * L)` token axis, so both kernels see only sequences. A sequence may
//! be cut into segments of whole chunks that run in parallel: the prepass computes
//! the state each segment (but the last) would leave from a zero start, and the
//! main pass starts segment k from the decayed sum of segments 0..k-1 (and the
//! initial state). Chunks restart at every sequence start; segments start at chunk
//! boundaries of their sequence, so the chunking is the same as without the split.
//!
//! Layout of one item (7 x i64, `kernels/mamba2/ssd_common.cuh` `SSD_ITEM_*`):
//! first token, length, sequence index, segment index k, segments of the sequence,
//! workspace slot of the sequence's segment 0 (segment k < nseg - 1 writes slot
//! `ws + k`), index of the segment's first chunk in the chunk table.
//!
//! The chunk table lists every chunk of the call (first token, length) in item
//! order; the C B^T pre-kernel runs one block per (chunk, group) over it.

/// Fields per item; matches `SSD_ITEM_FIELDS`.
pub const ITEM_FIELDS: usize = 7;
/// Fields per chunk-table entry: first token, length.
pub const CHUNK_FIELDS: usize = 2;

/// A sequence on the packed token axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// First token on the packed `(b * L)` axis.
    pub start: usize,
    /// Number of tokens (may be 0).
    pub len: usize,
}

/// The sequences of a call: batch rows, or the `cu_seqlens` ranges of a packed row.
pub fn sequences(batch: usize, seqlen: usize, cu_seqlens: Option<&[i64]>) -> Vec<Sequence> {
    match cu_seqlens {
        // Validated by SsdParams::validate: starts at 0, non-decreasing, ends at L.
        Some(cu) => cu
            .windows(2)
            .map(|w| Sequence {
                start: w[0] as usize,
                len: (w[1] - w[0]) as usize,
            })
            .collect(),
        None => (0..batch)
            .map(|b| Sequence {
                start: b * seqlen,
                len: seqlen,
            })
            .collect(),
    }
}

/// Items of the main pass and of the prepass, and the workspace slots they use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkTable {
    /// The main pass's items, [`ITEM_FIELDS`] i64 each (module docs).
    pub items: Vec<i64>,
    /// The prepass's items (segments other than the last of a split sequence).
    pub prepass: Vec<i64>,
    /// Every chunk of the call, [`CHUNK_FIELDS`] i64 each, in item order.
    pub chunks: Vec<i64>,
    /// Workspace slots (one state per slot and head).
    pub slots: usize,
    /// Number of sequences (batch rows, or varlen sequences).
    pub num_seqs: usize,
}

impl WorkTable {
    /// Number of main-pass items (blocks per head and P tile).
    pub fn num_items(&self) -> usize {
        self.items.len() / ITEM_FIELDS
    }
    /// Number of prepass items.
    pub fn num_prepass(&self) -> usize {
        self.prepass.len() / ITEM_FIELDS
    }
    /// Number of chunks over all items.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len() / CHUNK_FIELDS
    }
    /// Longest segment in chunks (the critical path of the main pass).
    pub fn max_item_len(&self) -> usize {
        self.items
            .chunks(ITEM_FIELDS)
            .map(|it| it[1] as usize)
            .max()
            .unwrap_or(0)
    }
}

/// Fewest chunks a segment of a split sequence gets: shorter segments cost more in
/// prepass launches and state sums than their parallelism gains.
pub const MIN_SEGMENT_CHUNKS: usize = 8;

/// Build the table, cutting each sequence into at most `max_segments` segments of
/// whole chunks (and of at least [`MIN_SEGMENT_CHUNKS`] chunks when split).
pub fn build(seqs: &[Sequence], chunk: usize, max_segments: usize) -> WorkTable {
    let mut items = Vec::with_capacity(seqs.len() * ITEM_FIELDS);
    let mut prepass = Vec::new();
    let mut chunk_table = Vec::new();
    let mut slots = 0usize;
    for (s, seq) in seqs.iter().enumerate() {
        let chunks = seq.len.div_ceil(chunk);
        let wanted = max_segments
            .max(1)
            .min((chunks / MIN_SEGMENT_CHUNKS).max(1));
        let seg_chunks = chunks.div_ceil(wanted).max(1);
        let nseg = chunks.div_ceil(seg_chunks).max(1);
        for k in 0..nseg {
            let start = (k * seg_chunks * chunk).min(seq.len);
            let end = ((k + 1) * seg_chunks * chunk).min(seq.len);
            let item = [
                (seq.start + start) as i64,
                (end - start) as i64,
                s as i64,
                k as i64,
                nseg as i64,
                slots as i64,
                (chunk_table.len() / CHUNK_FIELDS) as i64,
            ];
            items.extend_from_slice(&item);
            if k + 1 < nseg {
                prepass.extend_from_slice(&item);
            }
            for c in (start..end).step_by(chunk) {
                chunk_table
                    .extend_from_slice(&[(seq.start + c) as i64, (end - c).min(chunk) as i64]);
            }
        }
        slots += nseg - 1;
    }
    WorkTable {
        items,
        prepass,
        chunks: chunk_table,
        slots,
        num_seqs: seqs.len(),
    }
}

/// Segments per sequence for [`super::Segmentation::Auto`]: split only when the
/// unsplit grid (`blocks`) leaves resident-block slots of the GPU idle, and then
/// as far as one wave still holds everything.
pub fn auto_segments(blocks: usize, resident_slots: usize) -> usize {
    if blocks == 0 || blocks >= resident_slots {
        1
    } else {
        (resident_slots / blocks).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(t: &WorkTable, i: usize) -> [i64; ITEM_FIELDS] {
        t.items[i * ITEM_FIELDS..(i + 1) * ITEM_FIELDS]
            .try_into()
            .unwrap()
    }

    #[test]
    fn batch_rows_become_sequences() {
        let s = sequences(3, 10, None);
        assert_eq!(s[2], Sequence { start: 20, len: 10 });
        let v = sequences(1, 10, Some(&[0, 4, 4, 10]));
        assert_eq!(v[1], Sequence { start: 4, len: 0 });
        assert_eq!(v[2], Sequence { start: 4, len: 6 });
    }

    #[test]
    fn unsplit_table_has_one_item_per_sequence_and_no_prepass() {
        let t = build(&sequences(1, 10, Some(&[0, 4, 4, 10])), 64, 1);
        assert_eq!(t.num_items(), 3);
        assert_eq!(t.num_prepass(), 0);
        assert_eq!(item(&t, 1), [4, 0, 1, 0, 1, 0, 1]);
        assert_eq!(item(&t, 2), [4, 6, 2, 0, 1, 0, 1]);
        // Chunks: (0, 4) and (4, 6); the empty sequence has none.
        assert_eq!(t.chunks, vec![0, 4, 4, 6]);
    }

    #[test]
    fn split_segments_cover_the_sequence_in_whole_chunks() {
        // 100 chunks of 64 plus a tail of 5 tokens, at most 4 segments.
        let len = 100 * 64 + 5;
        let t = build(&[Sequence { start: 7, len }], 64, 4);
        assert_eq!(t.num_items(), 4);
        assert_eq!(t.num_prepass(), 3);
        assert_eq!(t.slots, 3);
        let mut next = 7i64;
        for i in 0..4 {
            let it = item(&t, i);
            assert_eq!(it[0], next, "segments are contiguous");
            assert_eq!((it[0] - 7) % 64, 0, "segments start on chunk boundaries");
            assert_eq!((it[2], it[3], it[4], it[5]), (0, i as i64, 4, 0));
            // The item's first chunk in the table starts where the item starts.
            assert_eq!(t.chunks[it[6] as usize * CHUNK_FIELDS], it[0]);
            next += it[1];
        }
        assert_eq!(next, 7 + len as i64);
        assert_eq!(t.num_chunks(), 101);
        assert_eq!(
            t.chunks[100 * CHUNK_FIELDS + 1],
            5,
            "the tail chunk has 5 tokens"
        );
    }

    #[test]
    fn short_sequences_are_not_split_below_the_minimum() {
        let t = build(
            &[Sequence {
                start: 0,
                len: 64 * 12,
            }],
            64,
            8,
        );
        assert_eq!(t.num_items(), 1);
        let t = build(
            &[Sequence {
                start: 0,
                len: 64 * 16,
            }],
            64,
            8,
        );
        assert_eq!(t.num_items(), 2);
    }

    #[test]
    fn workspace_slots_are_per_sequence() {
        let seqs = [
            Sequence {
                start: 0,
                len: 64 * 32,
            },
            Sequence {
                start: 64 * 32,
                len: 3,
            },
            Sequence {
                start: 64 * 32 + 3,
                len: 64 * 16,
            },
        ];
        let t = build(&seqs, 64, 4);
        assert_eq!(t.slots, 3 + 1);
        let third: Vec<_> = (0..t.num_items())
            .map(|i| item(&t, i))
            .filter(|it| it[2] == 2)
            .collect();
        assert_eq!(third.len(), 2);
        assert!(third.iter().all(|it| it[5] == 3));
    }

    #[test]
    fn auto_split_fills_one_wave() {
        assert_eq!(auto_segments(320, 396), 1);
        assert_eq!(auto_segments(32, 396), 12);
        assert_eq!(auto_segments(0, 396), 1);
    }
}
