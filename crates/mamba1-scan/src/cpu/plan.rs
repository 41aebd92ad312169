//! How a forward call is cut into independent tasks.
//!
//! A task is a chunk of consecutive channels of one batch row: it owns the
//! output rows `(row, channels, 0..L)`, a contiguous piece of `out`, and runs
//! every sequence of that row through every L-block. Chunks never cross a B or C
//! group boundary, so all channels of a task share one B tile and one C tile per
//! L-block, as the channels of one CUDA thread block do.

use std::ops::Range;

use ssm_core::mamba1::BcInput;
use ssm_core::shape::segments;

use super::block::LANES;

/// One sequence of a batch row: positions `positions` of that row, state row `state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub positions: Range<usize>,
    /// Row of the `(num_seqs or b, D_in, N)` initial/final states.
    pub state: usize,
}

/// Sequences of batch row `row`: the whole row, or every varlen segment (batch is
/// then 1, checked by validation), empty ones included.
pub(crate) fn sequences_of_row(
    row: usize,
    seqlen: usize,
    cu_seqlens: Option<&[i64]>,
) -> Vec<Sequence> {
    match cu_seqlens {
        None => vec![Sequence {
            positions: 0..seqlen,
            state: row,
        }],
        Some(cu) => segments(Some(cu), seqlen)
            .into_iter()
            .enumerate()
            .map(|(state, (start, end))| Sequence {
                positions: start..end,
                state,
            })
            .collect(),
    }
}

/// A task: channels `channels` of batch row `row`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChannelChunk {
    pub row: usize,
    pub channels: Range<usize>,
}

/// Channels per group of a B or C input (a constant input is one "group" of all
/// channels: nothing is shared, so it imposes no boundary).
fn channels_per_group<T>(bc: &BcInput<'_, T>, d_inner: usize) -> usize {
    match *bc {
        BcInput::Grouped { groups, .. } => d_inner / groups,
        BcInput::Constant(_) => d_inner,
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Lane groups per task that we aim for: enough work to amortise loading the
/// B/C tiles and the task overhead.
const TARGET_LANE_GROUPS_PER_TASK: usize = 4;
/// Tasks per worker thread that we aim for, so that rayon can balance the load.
const MIN_TASKS_PER_THREAD: usize = 4;

/// Cut `batch x d_inner` channels into tasks, in output order.
pub(crate) fn channel_chunks<T>(
    batch: usize,
    d_inner: usize,
    b: &BcInput<'_, T>,
    c: &BcInput<'_, T>,
    threads: usize,
) -> Vec<ChannelChunk> {
    let span = group_span(d_inner, b, c);
    let spans = batch * (d_inner / span);
    let lane_groups_per_span = span.div_ceil(LANES);

    let mut lane_groups_per_task = TARGET_LANE_GROUPS_PER_TASK;
    while lane_groups_per_task > 1
        && spans * lane_groups_per_span.div_ceil(lane_groups_per_task)
            < MIN_TASKS_PER_THREAD * threads
    {
        lane_groups_per_task /= 2;
    }
    let chunk_len = span.min(lane_groups_per_task * LANES);
    cut_spans(batch, d_inner, span, chunk_len)
}

/// The channel span no task may cross: B's group boundaries are multiples of
/// its group size, C's of its own, so spans of their gcd cross neither.
pub(crate) fn group_span<T>(d_inner: usize, b: &BcInput<'_, T>, c: &BcInput<'_, T>) -> usize {
    gcd(
        channels_per_group(b, d_inner),
        channels_per_group(c, d_inner),
    )
}

/// Row-major tasks of at most `chunk_len` channels, each inside one `span`
/// (the forward's and the backward's partitions, at their own chunk lengths).
pub(crate) fn cut_spans(
    batch: usize,
    d_inner: usize,
    span: usize,
    chunk_len: usize,
) -> Vec<ChannelChunk> {
    let mut chunks = Vec::new();
    for row in 0..batch {
        for span_start in (0..d_inner).step_by(span) {
            for start in (span_start..span_start + span).step_by(chunk_len) {
                chunks.push(ChannelChunk {
                    row,
                    channels: start..(start + chunk_len).min(span_start + span),
                });
            }
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouped(groups: usize) -> BcInput<'static, f32> {
        BcInput::Grouped { groups, data: &[] }
    }

    /// Every channel of every row exactly once, in order, no chunk across a group.
    fn check_cover(chunks: &[ChannelChunk], batch: usize, d_inner: usize, group_size: usize) {
        let mut next = (0, 0);
        for ch in chunks {
            assert_eq!((ch.row, ch.channels.start), next, "{chunks:?}");
            assert!(!ch.channels.is_empty());
            assert_eq!(
                ch.channels.start / group_size,
                (ch.channels.end - 1) / group_size,
                "{ch:?} crosses a group"
            );
            next = if ch.channels.end == d_inner {
                (ch.row + 1, 0)
            } else {
                (ch.row, ch.channels.end)
            };
        }
        assert_eq!(next, (batch, 0));
    }

    #[test]
    fn chunks_cover_all_channels_inside_groups() {
        let c = channel_chunks(2, 1024, &grouped(1), &grouped(1), 2);
        check_cover(&c, 2, 1024, 1024);
        assert_eq!(c[0].channels, 0..32);

        let c = channel_chunks(1, 24, &grouped(2), &grouped(3), 2);
        check_cover(&c, 1, 24, 4);

        let c = channel_chunks(3, 10, &BcInput::Constant(&[]), &grouped(5), 1);
        check_cover(&c, 3, 10, 2);
    }

    #[test]
    fn small_problems_get_smaller_chunks() {
        // 64 channels on 4 threads: 1 lane group per task gives 8 tasks.
        let c = channel_chunks(1, 64, &grouped(1), &grouped(1), 4);
        assert_eq!(c.len(), 8);
        assert_eq!(c[0].channels, 0..LANES);
    }

    #[test]
    fn varlen_rows_keep_empty_sequences() {
        let s = sequences_of_row(0, 5, Some(&[0, 2, 2, 5]));
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].positions, 2..2);
        assert_eq!(s[2].state, 2);
        assert_eq!(sequences_of_row(3, 5, None)[0].state, 3);
    }
}
