//! The collectives of the context-parallel calls, over any [`Communicator`]:
//! agreement on errors, the exclusive scan of segment pairs (ring, log-depth or
//! all-gather form, forward or reverse rank order), sums in rank order, and the
//! gather of per-sequence rows from the rank that owns each.

use crate::comm::Communicator;
use crate::pair::{exclusive_scan_sequential, Pair};
use crate::CpError;

/// How the exclusive scan over ranks is exchanged. All three give the same
/// pairs up to rounding (the products associate differently); the ring and the
/// all-gather form give the same bits (both fold in rank order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Exchange {
    /// `R - 1` hops: rank `r` receives the prefix of `0..r` from `r - 1`, folds
    /// in its own pair and passes it on. Least traffic, longest latency.
    Ring,
    /// `ceil(log2 R)` rounds of paired send/receive (Hillis-Steele): in round
    /// `d` rank `r` sends its inclusive aggregate to `r + d`.
    #[default]
    LogDepth,
    /// One all-gather of every pair; each rank folds the pairs before it.
    /// One collective, `R` pairs of traffic per rank.
    AllGather,
}

/// Every rank reports whether its local step failed; if any did, every rank
/// returns an error (its own, or [`CpError::Peer`] naming the first failed
/// rank), so no rank is left waiting in a later collective.
pub fn agree<T>(comm: &dyn Communicator, local: Result<T, CpError>) -> Result<T, CpError> {
    let status = [if local.is_ok() { 0.0 } else { 1.0 }];
    let all = comm.all_gather(&status)?;
    match local {
        Err(e) => Err(e),
        Ok(v) => match all.iter().position(|&s| s != 0.0) {
            Some(rank) => Err(CpError::Peer { rank }),
            None => Ok(v),
        },
    }
}

/// `u64`s as f32 values, 16 bits each (exact in f32), so that lengths and
/// offsets past 2^24 survive an f32 transport.
pub fn encode_u64s(values: &[u64]) -> Vec<f32> {
    values
        .iter()
        .flat_map(|&v| (0..4).map(move |i| ((v >> (16 * i)) & 0xffff) as f32))
        .collect()
}

/// Inverse of [`encode_u64s`].
pub fn decode_u64s(wire: &[f32]) -> Vec<u64> {
    wire.chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u64, |acc, (i, &x)| acc | ((x as u64) << (16 * i)))
        })
        .collect()
}

/// The exclusive scan of every rank's `own` pair: returns `p[0] then .. then
/// p[r-1]` on rank `r` (`reverse`: `p[R-1] then .. then p[r+1]`), the identity
/// on the first rank of the order. Every rank passes pairs of the same shape.
pub fn exclusive_scan(
    comm: &dyn Communicator,
    own: &Pair,
    exchange: Exchange,
    reverse: bool,
) -> Result<Pair, CpError> {
    let size = comm.size();
    let (decays, group) = (own.decay.len(), own.group());
    let wire_len = own.decay.len() + own.state.len();
    // Position of a rank in the scan's order, and back.
    let pos = |rank: usize| if reverse { size - 1 - rank } else { rank };
    let rank_at = pos; // the map is its own inverse
    let me = pos(comm.rank());
    match exchange {
        Exchange::Ring => {
            let incoming = match me.checked_sub(1) {
                Some(prev) => {
                    let got = comm
                        .send_recv(None, Some((rank_at(prev), wire_len)))?
                        .expect("a receive returns its buffer");
                    Pair::from_wire(&got, decays)
                }
                None => Pair::identity(decays, group),
            };
            if me + 1 < size {
                let outgoing = incoming.then(own);
                comm.send_recv(Some((rank_at(me + 1), &outgoing.to_wire())), None)?;
            }
            Ok(incoming)
        }
        Exchange::LogDepth => {
            let mut incl = own.clone();
            let mut excl = Pair::identity(decays, group);
            let mut d = 1;
            while d < size {
                let wire = incl.to_wire();
                let send = (me + d < size).then(|| (rank_at(me + d), &wire[..]));
                let recv = me.checked_sub(d).map(|src| (rank_at(src), wire_len));
                if let Some(got) = comm.send_recv(send, recv)? {
                    let y = Pair::from_wire(&got, decays);
                    excl = y.then(&excl);
                    incl = y.then(&incl);
                }
                d *= 2;
            }
            Ok(excl)
        }
        Exchange::AllGather => {
            let all = comm.all_gather(&own.to_wire())?;
            let pairs: Vec<Pair> = (0..size)
                .map(|p| {
                    let r = rank_at(p);
                    Pair::from_wire(&all[r * wire_len..(r + 1) * wire_len], decays)
                })
                .collect();
            Ok(exclusive_scan_sequential(&pairs).swap_remove(me))
        }
    }
}

/// The sum over ranks of `local` (same length everywhere), added in rank order
/// so that every rank gets the same bits whatever the transport.
pub fn sum_in_rank_order(comm: &dyn Communicator, local: &[f32]) -> Result<Vec<f32>, CpError> {
    if comm.size() == 1 {
        return Ok(local.to_vec());
    }
    let all = comm.all_gather(local)?;
    let mut acc = all[..local.len()].to_vec();
    for chunk in all.chunks(local.len().max(1)).skip(1) {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    Ok(acc)
}

/// Per-sequence rows (`rows.len()` rows of `row_len` values): row `k` is taken
/// from rank `owner[k]`'s `local` buffer, or from `fallback` where `owner[k]`
/// is `None` (rows no rank computes: empty sequences). Every rank passes a
/// buffer of the full size with its own rows filled.
pub fn gather_owned_rows(
    comm: &dyn Communicator,
    local: &[f32],
    owner: &[Option<usize>],
    row_len: usize,
    fallback: impl Fn(usize) -> Vec<f32>,
) -> Result<Vec<f32>, CpError> {
    let total = owner.len() * row_len;
    debug_assert_eq!(local.len(), total);
    let all = if comm.size() == 1 {
        local.to_vec()
    } else {
        comm.all_gather(local)?
    };
    let mut out = Vec::with_capacity(total);
    for (k, o) in owner.iter().enumerate() {
        match o {
            Some(r) => out.extend_from_slice(&all[r * total + k * row_len..][..row_len]),
            None => out.extend(fallback(k)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_round_trip_past_f32_precision() {
        let v = [
            0,
            1,
            65535,
            65536,
            (1 << 24) + 1,
            u64::MAX,
            1_048_576 * 7 + 3,
        ];
        assert_eq!(decode_u64s(&encode_u64s(&v)), v);
    }
}
