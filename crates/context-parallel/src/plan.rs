//! Where a rank's segment sits in the whole problem: its local sequences, which
//! of them continue across its boundaries, and which rank owns each sequence's
//! final state and initial-state gradient (docs/CONTEXT-PARALLEL.md §3).

use crate::comm::Communicator;
use crate::exchange::{decode_u64s, encode_u64s};
use crate::{CpError, Segment};
use ssm_core::shape::check_cu_seqlens;

/// The plan of one rank's segment, the same facts on every rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `[start, end)` of every rank, in rank order (contiguous, covering `0..total`).
    pub ranges: Vec<(usize, usize)>,
    pub start: usize,
    pub end: usize,
    /// Sequences of the whole problem (`batch`, or `cu_seqlens.len() - 1`).
    pub num_seqs: usize,
    /// The local call's `cu_seqlens` (varlen only).
    pub local_cu: Option<Vec<i64>>,
    /// The global sequence of each local sequence (each row of the local
    /// initial and final states).
    pub local_seqs: Vec<usize>,
    /// Local rows whose state enters from the previous rank (first piece of a
    /// sequence begun earlier): all rows of a plain batch when `start > 0`; row
    /// 0 or none for varlen.
    pub head_rows: Vec<usize>,
    /// Local rows whose state leaves to the next rank.
    pub tail_rows: Vec<usize>,
    /// The carried rows: `batch` for a plain batch, 1 for varlen.
    pub carry_rows: usize,
    /// Whether the state leaving the segment depends on the one entering it
    /// (the whole segment lies inside one continuing sequence): the pair's
    /// decay is then the segment's, else 0.
    pub decay_applies: bool,
    /// Per global sequence: the rank computing its final state (`None`: an
    /// empty sequence, whose final state is its initial state).
    pub final_owner: Vec<Option<usize>>,
    /// Per global sequence: the rank computing its initial-state gradient
    /// (`None`: an empty sequence, whose gradient is the final-state gradient).
    pub initial_owner: Vec<Option<usize>>,
    /// Local row of each global sequence owned here for its final state.
    pub final_local_row: Vec<Option<usize>>,
    /// Local row of each global sequence owned here for its initial-state gradient.
    pub initial_local_row: Vec<Option<usize>>,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn head_continues(&self) -> bool {
        !self.head_rows.is_empty()
    }
    pub fn tail_continues(&self) -> bool {
        !self.tail_rows.is_empty()
    }
}

/// What every rank must agree on, besides the segment bounds: the call's shape
/// and options, as integers.
pub(crate) type Signature = Vec<u64>;

/// Check the local facts, agree with every rank on the layout (one all-gather),
/// and build the plan. Every rank returns an error if any rank's arguments are
/// bad, so none waits in a later collective.
pub(crate) fn agree_plan(
    comm: &dyn Communicator,
    seg: &Segment<'_>,
    local_len: usize,
    batch: usize,
    signature: Signature,
    local_check: Result<(), CpError>,
) -> Result<Plan, CpError> {
    let check = local_check.and_then(|()| check_segment(seg, local_len, batch));
    let mut words = vec![
        u64::from(check.is_err()),
        seg.offset as u64,
        local_len as u64,
        seg.total_len as u64,
        batch as u64,
        signature.len() as u64,
    ];
    words.extend(&signature);
    let gathered = comm.all_gather(&encode_u64s(&words))?;
    let all: Vec<Vec<u64>> = gathered.chunks(words.len() * 4).map(decode_u64s).collect();
    check?;
    if let Some(rank) = all.iter().position(|w| w[0] != 0) {
        return Err(CpError::Peer { rank });
    }
    // Every rank sees the same table, so every rank reaches the same verdict.
    let mut ranges = Vec::with_capacity(all.len());
    let mut expect = 0u64;
    for (rank, w) in all.iter().enumerate() {
        if w[3..] != words[3..] {
            return Err(CpError::Segment {
                arg: "segment",
                reason: format!(
                    "rank {rank} describes a different problem (total length, batch, \
                     shape or options differ from rank {})",
                    comm.rank()
                ),
            });
        }
        if w[1] != expect {
            return Err(CpError::Segment {
                arg: "offset",
                reason: format!(
                    "segments must be contiguous in rank order: rank {rank} starts at {} \
                     but the ranks before it end at {expect}",
                    w[1]
                ),
            });
        }
        expect = w[1] + w[2];
        ranges.push((w[1] as usize, (w[1] + w[2]) as usize));
    }
    if expect != seg.total_len as u64 {
        return Err(CpError::Segment {
            arg: "total_len",
            reason: format!(
                "the segments cover {expect} tokens but total_len is {}",
                seg.total_len
            ),
        });
    }
    Ok(build(comm.rank(), ranges, seg.cu_seqlens, batch))
}

fn check_segment(seg: &Segment<'_>, local_len: usize, batch: usize) -> Result<(), CpError> {
    if seg
        .offset
        .checked_add(local_len)
        .is_none_or(|e| e > seg.total_len)
    {
        return Err(CpError::Segment {
            arg: "offset",
            reason: format!(
                "segment [{}, {} + {local_len}) passes total_len {}",
                seg.offset, seg.offset, seg.total_len
            ),
        });
    }
    if let Some(cu) = seg.cu_seqlens {
        check_cu_seqlens(cu, batch, seg.total_len)?;
    }
    Ok(())
}

/// The rank whose segment holds token `t` (the first such rank; empty segments
/// hold none).
fn rank_of(ranges: &[(usize, usize)], t: usize) -> Option<usize> {
    ranges.iter().position(|&(s, e)| s <= t && t < e)
}

fn build(rank: usize, ranges: Vec<(usize, usize)>, cu: Option<&[i64]>, batch: usize) -> Plan {
    let (start, end) = ranges[rank];
    let total = ranges.last().map_or(0, |r| r.1);
    let nonempty = end > start;
    match cu {
        None => {
            let head = nonempty && start > 0;
            let tail = nonempty && end < total;
            let last_owner = total.checked_sub(1).and_then(|t| rank_of(&ranges, t));
            let first_owner = rank_of(&ranges, 0);
            let rows: Vec<usize> = (0..batch).collect();
            let mine = |o: Option<usize>| -> Vec<Option<usize>> {
                (0..batch).map(|k| (o == Some(rank)).then_some(k)).collect()
            };
            Plan {
                start,
                end,
                num_seqs: batch,
                local_cu: None,
                local_seqs: rows.clone(),
                head_rows: if head { rows.clone() } else { Vec::new() },
                tail_rows: if tail { rows } else { Vec::new() },
                carry_rows: batch,
                decay_applies: head,
                final_owner: vec![last_owner; batch],
                initial_owner: vec![first_owner; batch],
                final_local_row: mine(last_owner),
                initial_local_row: mine(first_owner),
                ranges,
            }
        }
        Some(cu) => {
            let cu: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
            let num_seqs = cu.len() - 1;
            // Local sequences: every nonempty sequence meeting [start, end), and
            // every empty one lying in [start, end], so that a single rank's
            // local call is the whole call, cu_seqlens and all.
            let mut local_seqs = Vec::new();
            if nonempty {
                for k in 0..num_seqs {
                    let (a, b) = (cu[k], cu[k + 1]);
                    let meets = if a < b {
                        a < end && b > start
                    } else {
                        start <= a && a <= end
                    };
                    if meets {
                        local_seqs.push(k);
                    }
                }
            }
            let mut local_cu = vec![0i64];
            for &k in &local_seqs {
                local_cu.push((cu[k + 1].clamp(start, end) - start) as i64);
            }
            let head = local_seqs.first().is_some_and(|&k| cu[k] < start);
            let tail = local_seqs.last().is_some_and(|&k| cu[k + 1] > end);
            let decay_applies = head && local_seqs.len() == 1;
            let final_owner: Vec<Option<usize>> = (0..num_seqs)
                .map(|k| (cu[k + 1] > cu[k]).then(|| rank_of(&ranges, cu[k + 1] - 1))?)
                .collect();
            let initial_owner: Vec<Option<usize>> = (0..num_seqs)
                .map(|k| (cu[k + 1] > cu[k]).then(|| rank_of(&ranges, cu[k]))?)
                .collect();
            let local_row = |owner: &[Option<usize>]| -> Vec<Option<usize>> {
                (0..num_seqs)
                    .map(|k| {
                        if owner[k] != Some(rank) {
                            return None;
                        }
                        local_seqs.iter().position(|&j| j == k)
                    })
                    .collect()
            };
            let n_local = local_seqs.len();
            Plan {
                start,
                end,
                num_seqs,
                local_cu: nonempty.then_some(local_cu),
                final_local_row: local_row(&final_owner),
                initial_local_row: local_row(&initial_owner),
                head_rows: if head { vec![0] } else { Vec::new() },
                tail_rows: if tail { vec![n_local - 1] } else { Vec::new() },
                carry_rows: 1,
                decay_applies,
                final_owner,
                initial_owner,
                local_seqs,
                ranges,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans(ranges: &[(usize, usize)], cu: Option<&[i64]>, batch: usize) -> Vec<Plan> {
        (0..ranges.len())
            .map(|r| build(r, ranges.to_vec(), cu, batch))
            .collect()
    }

    #[test]
    fn varlen_pieces_continuations_and_owners() {
        // Sequences [0,3) [3,3) [3,9) [9,10); ranks [0,5) [5,5) [5,8) [8,10).
        let cu = [0i64, 3, 3, 9, 10];
        let p = plans(&[(0, 5), (5, 5), (5, 8), (8, 10)], Some(&cu), 1);
        assert_eq!(p[0].local_seqs, vec![0, 1, 2]);
        assert_eq!(p[0].local_cu, Some(vec![0, 3, 3, 5]));
        assert!(!p[0].head_continues() && p[0].tail_continues());
        assert_eq!(p[1].local_seqs, Vec::<usize>::new());
        assert_eq!(p[1].local_cu, None);
        assert_eq!(p[2].local_seqs, vec![2]);
        assert!(p[2].head_continues() && p[2].tail_continues() && p[2].decay_applies);
        assert_eq!(p[3].local_seqs, vec![2, 3]);
        assert_eq!(p[3].local_cu, Some(vec![0, 1, 2]));
        assert!(p[3].head_continues() && !p[3].tail_continues() && !p[3].decay_applies);
        assert_eq!(p[0].final_owner, vec![Some(0), None, Some(3), Some(3)]);
        assert_eq!(p[0].initial_owner, vec![Some(0), None, Some(0), Some(3)]);
        assert_eq!(p[3].final_local_row, vec![None, None, Some(0), Some(1)]);
        assert_eq!(p[0].initial_local_row, vec![Some(0), None, Some(2), None]);
    }

    #[test]
    fn one_rank_is_the_whole_call() {
        let cu = [0i64, 0, 4, 4, 6, 6];
        let p = build(0, vec![(0, 6)], Some(&cu), 1);
        assert_eq!(p.local_cu.as_deref(), Some(&cu[..]));
        assert_eq!(p.local_seqs, vec![0, 1, 2, 3, 4]);
        assert!(!p.head_continues() && !p.tail_continues());
        let b = build(0, vec![(0, 6)], None, 3);
        assert_eq!(b.final_local_row, vec![Some(0), Some(1), Some(2)]);
    }
}
