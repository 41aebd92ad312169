//! The communicator: what the exchange needs from a transport, and the CPU
//! implementation that runs ranks as threads.
//!
//! Two operations on f32 host buffers suffice: an all-gather of equal-length
//! buffers (layout agreement, error agreement, parameter-gradient sums, the
//! per-sequence states) and a paired send/receive (the ring and the log-depth
//! scan). A paired call lets a transport that blocks (NCCL) post both halves at
//! once, so rank `r` sending to `r + d` while receiving from `r - d` cannot
//! deadlock. Every rank must make the same calls in the same order; the
//! context-parallel entry points guarantee that (they call the communicator
//! the same way on every rank, whatever each rank's segment holds).

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use thiserror::Error;

/// A transport failure (not a bad argument: those are [`crate::CpError`]s).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CommError {
    /// A peer index outside `0..size`.
    #[error("peer {peer} is not a rank of this communicator (size {size})")]
    Peer {
        /// The index asked for.
        peer: usize,
        /// The communicator's number of ranks.
        size: usize,
    },
    /// A message of the wrong length: the ranks disagree about the call.
    #[error("from rank {from}: expected {expected} values, got {got}")]
    Length {
        /// The sending rank.
        from: usize,
        /// Values this rank expected.
        expected: usize,
        /// Values that arrived.
        got: usize,
    },
    /// Nothing arrived in time (a peer failed, or the ranks call in different orders).
    #[error("waiting for rank {from}: nothing arrived within {seconds} s")]
    Timeout {
        /// The rank waited on.
        from: usize,
        /// How long this rank waited.
        seconds: f64,
    },
    /// The peer hung up (its thread ended).
    #[error("rank {peer} disconnected")]
    Disconnected {
        /// The rank that hung up.
        peer: usize,
    },
    /// The transport itself failed (NCCL, CUDA).
    #[error("transport: {0}")]
    Backend(String),
}

/// What the context-parallel exchange needs from a transport.
pub trait Communicator {
    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Every rank passes a buffer of the same length; every rank gets all of
    /// them, rank-major (`size() * send.len()` values).
    fn all_gather(&self, send: &[f32]) -> Result<Vec<f32>, CommError>;
    /// Send `send.1` to rank `send.0` and receive `recv.1` values from rank
    /// `recv.0`, both optional, as one call.
    fn send_recv(
        &self,
        send: Option<(usize, &[f32])>,
        recv: Option<(usize, usize)>,
    ) -> Result<Option<Vec<f32>>, CommError>;
}

/// Ranks as threads of one process, connected by `std::sync::mpsc` channels (one
/// per ordered pair of ranks, FIFO, unbounded, so a send never blocks). Build a
/// group with [`ThreadComm::group`] or run a closure on every rank with
/// [`ThreadComm::run`].
pub struct ThreadComm {
    rank: usize,
    to: Vec<Sender<Vec<f32>>>,
    from: Vec<Receiver<Vec<f32>>>,
    timeout: Duration,
}

/// How long a receive waits before reporting [`CommError::Timeout`] (a test
/// whose ranks disagree fails instead of hanging).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl ThreadComm {
    /// `size` connected communicators, rank `r` at index `r`.
    pub fn group(size: usize) -> Vec<ThreadComm> {
        // channels[src][dst]
        let mut senders: Vec<Vec<Option<Sender<Vec<f32>>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        let mut receivers: Vec<Vec<Option<Receiver<Vec<f32>>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        for (src, row) in senders.iter_mut().enumerate() {
            for (dst, slot) in row.iter_mut().enumerate() {
                let (tx, rx) = channel();
                *slot = Some(tx);
                receivers[dst][src] = Some(rx);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (to, from))| ThreadComm {
                rank,
                to: to.into_iter().map(|s| s.expect("filled above")).collect(),
                from: from.into_iter().map(|r| r.expect("filled above")).collect(),
                timeout: DEFAULT_TIMEOUT,
            })
            .collect()
    }

    /// Set the receive timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Run `f` on `size` ranks, one thread each; results in rank order.
    pub fn run<R: Send>(size: usize, f: impl Fn(&ThreadComm) -> R + Sync) -> Vec<R> {
        let comms = ThreadComm::group(size);
        std::thread::scope(|scope| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|comm| {
                    let f = &f;
                    scope.spawn(move || f(&comm))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    // A panicking rank is a bug in the caller's closure: re-raise it.
                    Err(e) => std::panic::resume_unwind(e),
                })
                .collect()
        })
    }

    fn check_peer(&self, peer: usize) -> Result<(), CommError> {
        if peer >= self.to.len() {
            return Err(CommError::Peer {
                peer,
                size: self.to.len(),
            });
        }
        Ok(())
    }

    fn send_to(&self, peer: usize, data: &[f32]) -> Result<(), CommError> {
        self.check_peer(peer)?;
        self.to[peer]
            .send(data.to_vec())
            .map_err(|_| CommError::Disconnected { peer })
    }

    fn recv_from(&self, peer: usize, len: usize) -> Result<Vec<f32>, CommError> {
        self.check_peer(peer)?;
        let v = self.from[peer]
            .recv_timeout(self.timeout)
            .map_err(|e| match e {
                RecvTimeoutError::Timeout => CommError::Timeout {
                    from: peer,
                    seconds: self.timeout.as_secs_f64(),
                },
                RecvTimeoutError::Disconnected => CommError::Disconnected { peer },
            })?;
        if v.len() != len {
            return Err(CommError::Length {
                from: peer,
                expected: len,
                got: v.len(),
            });
        }
        Ok(v)
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.to.len()
    }
    fn all_gather(&self, send: &[f32]) -> Result<Vec<f32>, CommError> {
        let size = self.size();
        for peer in (0..size).filter(|&p| p != self.rank) {
            self.send_to(peer, send)?;
        }
        let mut out = Vec::with_capacity(size * send.len());
        for peer in 0..size {
            if peer == self.rank {
                out.extend_from_slice(send);
            } else {
                out.extend(self.recv_from(peer, send.len())?);
            }
        }
        Ok(out)
    }
    fn send_recv(
        &self,
        send: Option<(usize, &[f32])>,
        recv: Option<(usize, usize)>,
    ) -> Result<Option<Vec<f32>>, CommError> {
        if let Some((peer, data)) = send {
            self.send_to(peer, data)?;
        }
        recv.map(|(peer, len)| self.recv_from(peer, len))
            .transpose()
    }
}

/// A communicator that adds up the wall time spent inside its calls (for the
/// bench's exchange time; it includes waiting for slower peers).
pub struct TimedComm<C> {
    /// The wrapped communicator; calls made on it directly are not timed.
    pub inner: C,
    spent: std::cell::Cell<Duration>,
    calls: std::cell::Cell<usize>,
}

impl<C> TimedComm<C> {
    /// Wrap `inner`, with the time and call count at zero.
    pub fn new(inner: C) -> Self {
        TimedComm {
            inner,
            spent: std::cell::Cell::new(Duration::ZERO),
            calls: std::cell::Cell::new(0),
        }
    }
    /// Time spent in communicator calls since the last reset.
    pub fn spent(&self) -> Duration {
        self.spent.get()
    }
    /// Number of communicator calls since the last reset.
    pub fn calls(&self) -> usize {
        self.calls.get()
    }
    /// Set the time and the call count back to zero.
    pub fn reset(&self) {
        self.spent.set(Duration::ZERO);
        self.calls.set(0);
    }
    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.spent.set(self.spent.get() + t.elapsed());
        self.calls.set(self.calls.get() + 1);
        r
    }
}

impl<C: Communicator> Communicator for TimedComm<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_gather(&self, send: &[f32]) -> Result<Vec<f32>, CommError> {
        self.timed(|| self.inner.all_gather(send))
    }
    fn send_recv(
        &self,
        send: Option<(usize, &[f32])>,
        recv: Option<(usize, usize)>,
    ) -> Result<Option<Vec<f32>>, CommError> {
        self.timed(|| self.inner.send_recv(send, recv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_gather_and_send_recv_between_threads() {
        let results = ThreadComm::run(4, |c| {
            let all = c.all_gather(&[c.rank() as f32, 10.0]).unwrap();
            let r = c.rank();
            let next = (r + 1 < c.size()).then(|| (r + 1, &all[..2]));
            let prev = r.checked_sub(1).map(|p| (p, 2));
            let got = c.send_recv(next, prev).unwrap();
            (all, got)
        });
        for (r, (all, got)) in results.iter().enumerate() {
            assert_eq!(all, &vec![0.0, 10.0, 1.0, 10.0, 2.0, 10.0, 3.0, 10.0]);
            assert_eq!(got.is_some(), r > 0);
        }
    }

    #[test]
    fn a_disagreement_is_an_error_not_a_hang() {
        let results = ThreadComm::run(2, |c| {
            let len = if c.rank() == 0 { 1 } else { 2 };
            c.all_gather(&vec![0.0; len])
        });
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(CommError::Length { .. }))));
        let comms: Vec<_> = ThreadComm::group(2)
            .into_iter()
            .map(|c| c.with_timeout(Duration::from_millis(20)))
            .collect();
        let err = comms[0].send_recv(None, Some((1, 1))).unwrap_err();
        assert!(matches!(err, CommError::Timeout { from: 1, .. }), "{err}");
        assert!(matches!(
            comms[0].send_recv(Some((7, &[1.0])), None),
            Err(CommError::Peer { peer: 7, size: 2 })
        ));
    }
}
