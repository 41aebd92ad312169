//! Context parallelism for the SSD and the Mamba-1 selective scan: one long
//! sequence (or a varlen pack of them) split along L over ranks, forward and
//! backward, with results equal to the whole run within the tolerance budgets
//! (docs/CONTEXT-PARALLEL.md; the math in docs/DESIGN.md §1).
//!
//! Each rank holds a contiguous segment `[offset, offset + L_r)` of the tokens
//! (of every batch row, for a plain batch) and calls the same function with the
//! same [`Segment`] description of the whole problem and a [`Communicator`]:
//!
//! - [`ssd_forward_cp`], [`ssd_backward_cp`]: the Mamba-2 SSD;
//! - [`scan_forward_cp`], [`scan_backward_cp`]: the Mamba-1 selective scan.
//!
//! Two passes: pass 1 runs the segment from a zero state and yields its pair
//! `(total decay, final state)` ([`pair`]); an exclusive scan of the pairs over
//! the ranks ([`exchange`]) gives every rank its true initial state; pass 2
//! reruns the segment with it ([`Pass2::Rerun`]) or adds its contribution to
//! pass 1's output ([`Pass2::AddContribution`], on the host). The backward does the same, then the reverse
//! scan of `(decay, initial-state gradient)` pairs gives every rank the
//! gradient arriving at its end. Ranks that nothing enters (the first) skip
//! pass 2, ranks whose end nobody reads (the last) skip pass 1.
//!
//! Transports: [`ThreadComm`] (ranks as threads, channels; the tests' and any
//! CPU user's), and with the `nccl` feature `nccl::NcclCommunicator`. The local
//! calls run on any backend of the plain APIs (the CPU ports, or CUDA on this
//! rank's GPU).
//!
//! Two ranks as threads, each holding half of one sequence of the SSD, give the
//! whole run's output (tokens `[0, 4)` on rank 0, `[4, 8)` on rank 1):
//!
//! ```
//! use mamba2_ssd::{ssd_forward, Backend, CpuOptions};
//! use ssm_context_parallel::{ssd_forward_cp, Communicator, CpOptions, Segment, ThreadComm};
//! use ssm_core::mamba2::{SsdDims, SsdParams};
//!
//! let (len, h, p, n) = (8, 2, 2, 3);
//! let dims = SsdDims { batch: 1, seqlen: len, heads: h, head_dim: p, d_state: n, groups: 1 };
//! // (b, L, H, P), (b, L, H), (H), (b, L, G, N): with b = 1 a segment of tokens is a slice.
//! let x: Vec<f32> = (0..len * h * p).map(|i| (i as f32 * 0.37).sin()).collect();
//! let dt = vec![0.2f32; len * h];
//! let a = vec![-0.5f32, -1.0];
//! let b: Vec<f32> = (0..len * n).map(|i| (i as f32 * 0.11).cos()).collect();
//! let c = vec![0.3f32; len * n];
//! let cpu = Backend::Cpu(CpuOptions { chunk_size: 4 });
//! let whole = ssd_forward(&SsdParams::new(dims, &x, &dt, &a, &b, &c), cpu).unwrap();
//!
//! let outs = ThreadComm::run(2, |comm| {
//!     let (lo, hi) = (comm.rank() * 4, comm.rank() * 4 + 4);
//!     let local_dims = SsdDims { seqlen: hi - lo, ..dims };
//!     let local = SsdParams::new(
//!         local_dims,
//!         &x[lo * h * p..hi * h * p],
//!         &dt[lo * h..hi * h],
//!         &a,
//!         &b[lo * n..hi * n],
//!         &c[lo * n..hi * n],
//!     );
//!     let seg = Segment::new(lo, len);
//!     ssd_forward_cp(&local, &seg, comm, cpu, CpOptions::default()).unwrap().out
//! });
//! let joined: Vec<f32> = outs.concat();
//! assert!(joined.iter().zip(&whole.out).all(|(s, w)| (s - w).abs() < 1e-4));
//! ```

#![warn(missing_docs)]

pub mod comm;
mod driver;
pub mod exchange;
mod family;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod pair;
mod plan;
pub mod scan;
pub mod ssd;

pub use comm::{CommError, Communicator, ThreadComm, TimedComm};
pub use exchange::Exchange;
pub use pair::Pair;
pub use scan::{scan_backward_cp, scan_forward_cp};
pub use ssd::{ssd_backward_cp, ssd_forward_cp};

use ssm_core::SsmError;
use thiserror::Error;

/// The whole problem as one rank sees it: where its tokens sit, and the
/// per-sequence arguments of the whole call (every rank passes the same).
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment<'a> {
    /// Position of this rank's first token in the whole sequence. Ranks hold
    /// contiguous segments in rank order; a segment may be empty.
    pub offset: usize,
    /// `L` of the whole problem (the packed length for varlen).
    pub total_len: usize,
    /// `cu_seqlens` of the whole problem (varlen, batch 1); sequences may cross
    /// segment boundaries anywhere.
    pub cu_seqlens: Option<&'a [i64]>,
    /// Initial states of the whole problem, `(b or num_seqs, ...)` as the plain
    /// call takes them.
    pub initial_states: Option<&'a [f32]>,
}

impl<'a> Segment<'a> {
    /// This rank's segment starts at token `offset` of a whole problem of
    /// length `total_len`; no varlen offsets, zero initial states.
    pub fn new(offset: usize, total_len: usize) -> Self {
        Segment {
            offset,
            total_len,
            cu_seqlens: None,
            initial_states: None,
        }
    }
    /// The whole problem's varlen offsets (`num_seqs + 1` entries, batch 1),
    /// the same on every rank.
    pub fn with_cu_seqlens(mut self, cu: &'a [i64]) -> Self {
        self.cu_seqlens = Some(cu);
        self
    }
    /// The whole problem's initial states, the same on every rank (only the
    /// rank holding a sequence's start uses them).
    pub fn with_initial_states(mut self, s0: &'a [f32]) -> Self {
        self.initial_states = Some(s0);
        self
    }
}

/// How a forward's pass 2 brings in the state entering a segment
/// (docs/CONTEXT-PARALLEL.md §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pass2 {
    /// Rerun the segment with the true initial state: exact on every backend
    /// (the local call is the whole problem's computation on those tokens).
    #[default]
    Rerun,
    /// Keep pass 1's zero-start output and add the entering state's
    /// contribution (`exp(s_t) S_in C_t`, gated by `silu(z_t)`; the final
    /// state gains `D S_in`), computed on the host in f64 and rounded once
    /// into the output: the CPU form of the correction kernel that would let
    /// every rank run pass 1 at once. Outputs in a half type round twice.
    /// The backward always reruns.
    AddContribution,
}

/// Options of the context-parallel calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpOptions {
    /// How the scan over ranks is exchanged.
    pub exchange: Exchange,
    /// The forward's pass 2.
    pub pass2: Pass2,
}

/// Why a context-parallel call failed. Every rank returns an error when any
/// rank's call fails (its own error, or [`CpError::Peer`]), never a hang.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CpError {
    /// The local call (or the argument check it shares) failed.
    #[error(transparent)]
    Ssm(#[from] SsmError),
    /// The transport failed.
    #[error(transparent)]
    Comm(#[from] CommError),
    /// The segment description is wrong (names the argument).
    #[error("argument `{arg}`: {reason}")]
    Segment {
        /// The argument at fault (`offset`, `total_len`, `cu_seqlens`, ...).
        arg: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Another rank's call failed; that rank returned the error itself.
    #[error("rank {rank} failed (its own call returns the error)")]
    Peer {
        /// The lowest-numbered rank whose call failed.
        rank: usize,
    },
}

/// Number of sequences of the whole problem.
pub(crate) fn num_seqs(seg: &Segment<'_>, batch: usize) -> usize {
    seg.cu_seqlens
        .map_or(batch, |cu| cu.len().saturating_sub(1))
}

/// The plain params must describe the local tokens only: the per-sequence
/// arguments belong to the [`Segment`].
pub(crate) fn check_local_args(
    cu_seqlens_given: bool,
    initial_states_given: bool,
) -> Result<(), CpError> {
    if cu_seqlens_given {
        return Err(CpError::Segment {
            arg: "local.cu_seqlens",
            reason: "pass the whole problem's cu_seqlens in Segment::cu_seqlens; \
                     the local params hold only this rank's tokens"
                .into(),
        });
    }
    if initial_states_given {
        return Err(CpError::Segment {
            arg: "local.initial_states",
            reason: "pass the whole problem's initial states in Segment::initial_states".into(),
        });
    }
    Ok(())
}

/// Check a whole-problem per-sequence tensor's length.
pub(crate) fn check_rows(
    arg: &'static str,
    data: Option<&[f32]>,
    rows: usize,
    row_len: usize,
) -> Result<(), CpError> {
    if let Some(d) = data {
        if d.len() != rows * row_len {
            return Err(CpError::Segment {
                arg,
                reason: format!(
                    "expected {rows} sequences x {row_len} values = {} values, got {}",
                    rows * row_len,
                    d.len()
                ),
            });
        }
    }
    Ok(())
}
