//! The L-blocked f32 port of the CUDA scan (docs/DESIGN.md §1.1): the state is carried
//! in registers (here: locals) from one L-block to the next, multi-threaded over
//! (batch, channel).
//!
//! It computes what the kernel computes, in the kernel's order and f32
//! arithmetic, so that it can stand in for the kernel on a CPU-only machine and
//! so that differences between the two point at the GPU code:
//!
//! * each sequence is cut into L-blocks of `block_len` steps; the N-value state of
//!   every channel is carried from one block to the next;
//! * the B and C tiles of a block are read once per channel chunk and shared by
//!   all channels of the chunk (the channels of one group);
//! * inside a block the recurrence runs step by step with decays
//!   `exp2(dt * (A * log2 e))`, as the kernel folds `log2 e` into A.
//!
//! Modules: `plan` cuts the call into tasks (chunks of channels of one batch
//! row), `task` runs one task, `block` holds the recurrence over one L-block
//! (lane groups of 8 channels, AVX2 when the CPU has it), `exp2` the
//! vectorisable `2^x`.

mod block;
pub(crate) mod exp2;
pub(crate) mod plan;
mod task;

use rayon::prelude::*;
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Element, Result, ScanOutput, SsmError};

use plan::{channel_chunks, sequences_of_row, ChannelChunk};

/// The forward pass on the CPU with L-blocks of `block_len` steps.
///
/// `out` is `(b, D_in, L)` in the input type; final states (f32) are
/// `(b or num_seqs, D_in, N)` when `return_final_states` is set. Fails with
/// [`SsmError::Dimension`] naming `block_len` when it is 0, and with the
/// validation error of the parameters when they are inconsistent.
pub fn selective_scan_blocked<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    block_len: usize,
) -> Result<ScanOutput<T, f32>> {
    let layout = p.validate()?;
    if block_len == 0 {
        return Err(SsmError::Dimension {
            arg: "block_len",
            reason: "the L-block must hold at least 1 step".into(),
        });
    }
    let (batch, d_inner, d_state) = (p.dims.batch, p.dims.d_inner, p.dims.d_state);
    let seqlen = p.dims.seqlen;

    let chunks = channel_chunks(batch, d_inner, &p.b, &p.c, rayon::current_num_threads());
    let mut out = vec![T::default(); batch * d_inner * seqlen];
    let pieces = split_by_chunk(&mut out, &chunks, seqlen);

    let chunk_states: Vec<Vec<f32>> = chunks
        .par_iter()
        .zip(pieces)
        .map(|(chunk, out)| {
            let sequences = sequences_of_row(chunk.row, seqlen, p.cu_seqlens);
            task::run_chunk(p, chunk, &sequences, block_len, out)
        })
        .collect();

    let final_states = p.return_final_states.then(|| {
        // Each chunk returned `(sequence, channel, N)` for its channels; place
        // them in `(num_seqs, D_in, N)`.
        let mut states = vec![0.0f32; layout.num_seqs * d_inner * d_state];
        for (chunk, chunk_states) in chunks.iter().zip(&chunk_states) {
            let per_seq = chunk.channels.len() * d_state;
            let sequences = sequences_of_row(chunk.row, seqlen, p.cu_seqlens);
            for (seq, src) in sequences.iter().zip(chunk_states.chunks_exact(per_seq)) {
                let at = (seq.state * d_inner + chunk.channels.start) * d_state;
                states[at..at + per_seq].copy_from_slice(src);
            }
        }
        states
    });
    Ok(ScanOutput { out, final_states })
}

/// Cut `out` (`(b, D_in, L)`) into the chunks' contiguous `(channels, L)` pieces;
/// `chunks` are in output order and cover it.
fn split_by_chunk<'o, T>(
    mut out: &'o mut [T],
    chunks: &[ChannelChunk],
    seqlen: usize,
) -> Vec<&'o mut [T]> {
    chunks
        .iter()
        .map(|chunk| {
            let (piece, rest) =
                std::mem::take(&mut out).split_at_mut(chunk.channels.len() * seqlen);
            out = rest;
            piece
        })
        .collect()
}
