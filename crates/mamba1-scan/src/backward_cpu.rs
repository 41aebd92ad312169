//! The L-blocked f32 backward of the selective scan (docs/BACKWARD-MAMBA1.md):
//! the CPU twin of the fused backward kernel, multi-threaded over (batch,
//! channel) and deterministic.
//!
//! Per channel and sequence, in the kernel's order:
//!
//! ```text
//! checkpoint pass: h <- h0; for each L-block: save h (the block's entry state),
//!                  run the block's steps (as the forward port: exp2(dt A log2 e))
//! lam <- dL/d final state
//! for each L-block, last to first:
//!     recompute the block from its checkpoint: dt, decays, h_t, y_t per step
//!     reverse sweep over the block's steps (lam carried between blocks):
//!         gy = g silu(z); dz = g y silu'(z); lam += C gy
//!         dC += gy h_t; dB += lam dt u; du = gy D + dt sum_n lam B
//!         ddt = sum_n lam (A a h_{t-1} + B u); dA += dt lam a h_{t-1}
//!         ddelta = ddt softplus'(delta + bias); lam *= a
//!     per-block sums of dA, dD, ddelta_bias (and constant dB, dC) are added to
//!     the channel's totals once per block
//! dinitial_state <- lam
//! ```
//!
//! Nothing is saved by the forward: this entry point takes the forward's
//! parameters only, so the checkpoints (one `N`-state per L-block) come from its
//! own forward pass. Recomputing from checkpoints instead of storing every
//! state keeps the memory at `ceil(L / T) * N` per channel instead of `L * N`;
//! reversing the recurrence (`h_{t-1} = (h_t - dt B u) / a_t`) would need no
//! memory but divides by decays that underflow, so it is not used.
//!
//! Determinism: the work is cut into tasks of [`CHUNK_CHANNELS`] consecutive
//! channels of one batch row, never across a B or C group boundary, a partition
//! that does not depend on the number of threads. Each task sums its channels'
//! grouped dB/dC in channel order, its steps in reverse time order; the results
//! of the tasks are then reduced in a fixed order: grouped dB/dC over the chunks
//! of a group in channel order, dA, dD, ddelta_bias and constant dB/dC over
//! batch rows in row order. Reruns, and runs on any number of threads, are
//! bit-identical. No float atomics, as the kernel must do it.

use std::ops::Range;

use rayon::prelude::*;
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba1_grad::{
    bc_grad_len, silu_grad_f32, softplus_grad_f32, ScanGradInputs, ScanGrads,
};
use ssm_core::math::{scan_dt_f32, silu_f32};
use ssm_core::planted::{self, Bug};
use ssm_core::shape::segments;
use ssm_core::{Element, Result, SsmError};

use crate::cpu::exp2::exp2;
use crate::cpu::plan::{cut_spans, group_span, ChannelChunk};

#[cfg(test)]
mod tests;
pub mod tolerance;

/// Channels per task: the partition of the work, fixed so that the reduction
/// order (and so every bit of the result) does not depend on the thread count.
/// 64 channels is the channel tile of a backward thread block.
pub const CHUNK_CHANNELS: usize = 64;

/// Longest L-block recomputed at once (the block's states are held in full).
const MAX_BLOCK_STEPS: usize = 4096;

/// The backward on the CPU with L-blocks of `block_len` steps.
///
/// Gradients of `sum(d_out * out) + sum(d_final_states * final_states)` with
/// respect to every input of `p` ([`ScanGrads`]: tensor inputs' gradients in
/// `T`, parameters' and states' in f32). Fails with the validation error of the
/// parameters or the gradients ([`ScanGradInputs::validate`]), or with
/// [`SsmError::Dimension`] naming `block_len` when it is 0.
pub fn selective_scan_backward_blocked<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    block_len: usize,
) -> Result<ScanGrads<T, f32>> {
    let grads = ScanGradInputs::new(d_out, d_final_states);
    let layout = grads.validate(p)?;
    if block_len == 0 {
        return Err(SsmError::Dimension {
            arg: "block_len",
            reason: "the L-block must hold at least 1 step".into(),
        });
    }
    let block_len = block_len.min(MAX_BLOCK_STEPS);
    let (batch, d_inner, d_state) = (p.dims.batch, p.dims.d_inner, p.dims.d_state);
    let seqlen = p.dims.seqlen;

    let chunks = chunks(batch, d_inner, &p.b, &p.c);
    let results: Vec<ChunkResult<T>> = chunks
        .par_iter()
        .map(|chunk| run_chunk(p, &grads, chunk, block_len))
        .collect();

    // Per-element gradients: each chunk owns (row, channels, 0..L).
    let bdl = batch * d_inner * seqlen;
    let mut du = vec![T::default(); bdl];
    let mut ddelta = vec![T::default(); bdl];
    let mut dz = p.z.map(|_| vec![T::default(); bdl]);
    let mut dinitial = p
        .initial_states
        .map(|_| vec![0.0f32; layout.num_seqs * d_inner * d_state]);
    for (chunk, r) in chunks.iter().zip(&results) {
        let at = (chunk.row * d_inner + chunk.channels.start) * seqlen;
        let len = chunk.channels.len() * seqlen;
        du[at..at + len].copy_from_slice(&r.du);
        ddelta[at..at + len].copy_from_slice(&r.ddelta);
        if let Some(dz) = &mut dz {
            dz[at..at + len].copy_from_slice(&r.dz);
        }
        if let Some(dh0) = dinitial
            .as_mut()
            .filter(|_| !planted::active(Bug::ScanBwdInitialStateGradDropped))
        {
            let per_seq = chunk.channels.len() * d_state;
            for (&state, src) in r.seq_states.iter().zip(r.dh0.chunks_exact(per_seq)) {
                let at = (state * d_inner + chunk.channels.start) * d_state;
                dh0[at..at + per_seq].copy_from_slice(src);
            }
        }
    }

    // Reductions over batch rows, in row order (chunks are row-major, so the
    // chunks of one channel range appear once per row, rows ascending).
    let per_channel = |values: &dyn Fn(&ChunkResult<T>) -> &[f32], width: usize| -> Vec<f32> {
        let mut out = vec![0.0f32; d_inner * width];
        for (chunk, r) in chunks.iter().zip(&results) {
            let at = chunk.channels.start * width;
            for (acc, v) in out[at..at + chunk.channels.len() * width]
                .iter_mut()
                .zip(values(r))
            {
                *acc += v;
            }
        }
        out
    };
    let da = per_channel(&|r| &r.da, d_state);
    let dd = p.d.map(|_| per_channel(&|r| &r.dd, 1));
    let ddelta_bias = p.delta_bias.map(|_| per_channel(&|r| &r.ddelta_bias, 1));
    let db = reduce_bc(&p.b, p.dims, &chunks, &results, |r| &r.db);
    let dc = reduce_bc(&p.c, p.dims, &chunks, &results, |r| &r.dc);

    Ok(ScanGrads {
        du,
        ddelta,
        da,
        db,
        dc,
        dd,
        dz,
        ddelta_bias,
        dinitial_states: dinitial,
    })
}

/// dB or dC in the input's layout from the chunks' partial sums, rounded to T.
///
/// Grouped: `(b, G, N, L)`, element `(row, g, n, t)` = the sum over the chunks
/// of group g of that row, in channel order, of each chunk's `(N, L)` partial
/// (itself summed over its channels in order). Constant: `(D_in, N)`, each
/// channel's partial summed over batch rows in row order.
fn reduce_bc<T: Element>(
    bc: &BcInput<'_, T>,
    dims: Mamba1Dims,
    chunks: &[ChannelChunk],
    results: &[ChunkResult<T>],
    partial: impl Fn(&ChunkResult<T>) -> &[f32] + Sync,
) -> Vec<T> {
    let (d_inner, d_state, seqlen) = (dims.d_inner, dims.d_state, dims.seqlen);
    let mut out = vec![0.0f32; bc_grad_len(bc, dims)];
    match *bc {
        BcInput::Grouped { groups, .. } => {
            let per_group = d_inner / groups;
            let plane = d_state * seqlen;
            // One (row, group) plane per rayon task; inside it the chunks in order.
            out.par_chunks_mut(plane.max(1))
                .enumerate()
                .for_each(|(row_group, acc)| {
                    let (row, g) = (row_group / groups, row_group % groups);
                    let group_of = |start: usize| {
                        if planted::active(Bug::ScanBwdWrongGroup) {
                            start % groups
                        } else {
                            start / per_group
                        }
                    };
                    for (chunk, r) in chunks.iter().zip(results) {
                        if chunk.row == row && group_of(chunk.channels.start) == g {
                            for (a, v) in acc.iter_mut().zip(partial(r)) {
                                *a += v;
                            }
                        }
                    }
                });
        }
        BcInput::Constant(_) => {
            for (chunk, r) in chunks.iter().zip(results) {
                let at = chunk.channels.start * d_state;
                for (a, v) in out[at..at + chunk.channels.len() * d_state]
                    .iter_mut()
                    .zip(partial(r))
                {
                    *a += v;
                }
            }
        }
    }
    out.into_iter().map(T::from_f32).collect()
}

/// Row-major chunks of at most [`CHUNK_CHANNELS`] channels that cross no group
/// boundary of B or C.
fn chunks<T>(
    batch: usize,
    d_inner: usize,
    b: &BcInput<'_, T>,
    c: &BcInput<'_, T>,
) -> Vec<ChannelChunk> {
    cut_spans(batch, d_inner, group_span(d_inner, b, c), CHUNK_CHANNELS)
}

/// What one task hands back; per-channel arrays are `(channels, ...)`.
struct ChunkResult<T> {
    /// `(channels, L)` each, in T.
    du: Vec<T>,
    ddelta: Vec<T>,
    /// Empty without z.
    dz: Vec<T>,
    /// `(channels, N)`.
    da: Vec<f32>,
    /// `(channels)`.
    dd: Vec<f32>,
    ddelta_bias: Vec<f32>,
    /// Grouped: the chunk's `(N, L)` partial, summed over its channels in
    /// order; constant: `(channels, N)`.
    db: Vec<f32>,
    dc: Vec<f32>,
    /// `(sequence, channels, N)`, and the state row of each sequence.
    dh0: Vec<f32>,
    seq_states: Vec<usize>,
}

/// The sequences of batch row `row`: `(positions, state row)`.
fn sequences_of_row(
    row: usize,
    seqlen: usize,
    cu_seqlens: Option<&[i64]>,
) -> Vec<(Range<usize>, usize)> {
    match cu_seqlens {
        None => vec![(0..seqlen, row)],
        Some(cu) => segments(Some(cu), seqlen)
            .into_iter()
            .enumerate()
            .map(|(state, (start, end))| (start..end, state))
            .collect(),
    }
}

/// Where a step reads B or C of the channel: the group's `(N, L)` plane of the
/// row (`data[n * L + t]`), or the channel's constant `(N)` row.
#[derive(Clone, Copy)]
enum Coefficients<'a, T> {
    Plane(&'a [T]),
    Constant(&'a [T]),
}

impl<T: Element> Coefficients<'_, T> {
    fn of<'a>(bc: &BcInput<'a, T>, dims: Mamba1Dims, row: usize, d: usize) -> Coefficients<'a, T> {
        let (d_inner, d_state, seqlen) = (dims.d_inner, dims.d_state, dims.seqlen);
        match *bc {
            BcInput::Grouped { groups, data } => {
                let g = d / (d_inner / groups);
                let at = (row * groups + g) * d_state * seqlen;
                Coefficients::Plane(&data[at..at + d_state * seqlen])
            }
            BcInput::Constant(data) => {
                Coefficients::Constant(&data[d * d_state..(d + 1) * d_state])
            }
        }
    }

    /// The N values at position `t` into `dst`.
    #[inline]
    fn load(&self, t: usize, seqlen: usize, dst: &mut [f32]) {
        match *self {
            Coefficients::Plane(plane) => {
                for (n, v) in dst.iter_mut().enumerate() {
                    *v = plane[n * seqlen + t].to_f32();
                }
            }
            Coefficients::Constant(row) => {
                for (v, x) in dst.iter_mut().zip(row) {
                    *v = x.to_f32();
                }
            }
        }
    }

    fn is_plane(&self) -> bool {
        matches!(self, Coefficients::Plane(_))
    }
}

/// Per-channel scratch, sized for the longest block; allocated once per task.
struct Scratch {
    /// Entry state of every block of the current sequence, `(blocks, N)`.
    checkpoints: Vec<f32>,
    /// The block's states: `h[(k + 1) * N + n]` after step k, `h[n]` on entry.
    h: Vec<f32>,
    /// `decay[k * N + n] = exp2(dt_k * A_n * log2 e)`.
    decay: Vec<f32>,
    /// Per step of the block: dt, `y` (before the gate), and B, C `(k, N)`.
    dt: Vec<f32>,
    y: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    lam: Vec<f32>,
}

/// One task: every sequence of the row, channel by channel.
fn run_chunk<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    grads: &ScanGradInputs<'_, T>,
    chunk: &ChannelChunk,
    block_len: usize,
) -> ChunkResult<T> {
    let dims = p.dims;
    let Mamba1Dims {
        d_state: n_state,
        seqlen,
        ..
    } = dims;
    let channels = chunk.channels.len();
    let sequences = sequences_of_row(chunk.row, seqlen, p.cu_seqlens);
    let b_plane = matches!(p.b, BcInput::Grouped { .. });
    let c_plane = matches!(p.c, BcInput::Grouped { .. });
    let bc_partial = |plane: bool| {
        if plane {
            n_state * seqlen
        } else {
            channels * n_state
        }
    };
    let mut r = ChunkResult {
        du: vec![T::default(); channels * seqlen],
        ddelta: vec![T::default(); channels * seqlen],
        dz: vec![T::default(); if p.z.is_some() { channels * seqlen } else { 0 }],
        da: vec![0.0; channels * n_state],
        dd: vec![0.0; channels],
        ddelta_bias: vec![0.0; channels],
        db: vec![0.0; bc_partial(b_plane)],
        dc: vec![0.0; bc_partial(c_plane)],
        dh0: vec![0.0; sequences.len() * channels * n_state],
        seq_states: sequences.iter().map(|s| s.1).collect(),
    };
    let block_steps = block_len.min(seqlen.max(1));
    let longest = sequences.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let mut s = Scratch {
        checkpoints: vec![0.0; longest.div_ceil(block_len).max(1) * n_state],
        h: vec![0.0; (block_steps + 1) * n_state],
        decay: vec![0.0; block_steps * n_state],
        dt: vec![0.0; block_steps],
        y: vec![0.0; block_steps],
        b: vec![0.0; block_steps * n_state],
        c: vec![0.0; block_steps * n_state],
        lam: vec![0.0; n_state],
    };
    for (l, d) in chunk.channels.clone().enumerate() {
        let ch = Channel::new(p, chunk.row, d);
        for (seq_index, (positions, state_row)) in sequences.iter().enumerate() {
            let dh0 = channel_sequence(
                p,
                grads,
                &ch,
                positions.clone(),
                *state_row,
                block_len,
                &mut s,
                &mut ChannelOut {
                    du: &mut r.du[l * seqlen..(l + 1) * seqlen],
                    ddelta: &mut r.ddelta[l * seqlen..(l + 1) * seqlen],
                    dz: if r.dz.is_empty() {
                        &mut []
                    } else {
                        &mut r.dz[l * seqlen..(l + 1) * seqlen]
                    },
                    da: &mut r.da[l * n_state..(l + 1) * n_state],
                    dd: &mut r.dd[l],
                    ddelta_bias: &mut r.ddelta_bias[l],
                    db: if b_plane {
                        &mut r.db[..]
                    } else {
                        &mut r.db[l * n_state..(l + 1) * n_state]
                    },
                    dc: if c_plane {
                        &mut r.dc[..]
                    } else {
                        &mut r.dc[l * n_state..(l + 1) * n_state]
                    },
                },
            );
            let at = (seq_index * channels + l) * n_state;
            r.dh0[at..at + n_state].copy_from_slice(dh0);
        }
    }
    r
}

/// The constants of one channel of one batch row.
struct Channel<'a, T> {
    /// Offset of the channel's `(L)` rows of u, delta, z, d_out.
    at: usize,
    d: usize,
    /// `A` and `A * log2(e)`, `(N)`.
    a: Vec<f32>,
    a2: Vec<f32>,
    delta_bias: f32,
    skip: f32,
    b: Coefficients<'a, T>,
    c: Coefficients<'a, T>,
}

impl<'a, T: Element> Channel<'a, T> {
    fn new(p: &SelectiveScanParams<'a, T>, row: usize, d: usize) -> Self {
        let n_state = p.dims.d_state;
        let a = p.a[d * n_state..(d + 1) * n_state].to_vec();
        Channel {
            at: (row * p.dims.d_inner + d) * p.dims.seqlen,
            d,
            a2: a.iter().map(|&a| a * std::f32::consts::LOG2_E).collect(),
            a,
            delta_bias: p.delta_bias.map_or(0.0, |b| b[d]),
            skip: p.d.map_or(0.0, |s| s[d]),
            b: Coefficients::of(&p.b, p.dims, row, d),
            c: Coefficients::of(&p.c, p.dims, row, d),
        }
    }
}

/// Where one channel's gradients go: its `(L)` rows of du, ddelta, dz, its
/// `(N)` row of dA, and its dB/dC destination (the chunk's shared `(N, L)`
/// partial, or the channel's own `(N)` row).
struct ChannelOut<'o, T> {
    du: &'o mut [T],
    ddelta: &'o mut [T],
    dz: &'o mut [T],
    da: &'o mut [f32],
    dd: &'o mut f32,
    ddelta_bias: &'o mut f32,
    db: &'o mut [f32],
    dc: &'o mut [f32],
}

/// The backward of one channel over one sequence; returns `dL/dh0`.
#[allow(clippy::too_many_arguments)]
fn channel_sequence<'s, T: Element>(
    p: &SelectiveScanParams<'_, T>,
    grads: &ScanGradInputs<'_, T>,
    ch: &Channel<'_, T>,
    positions: Range<usize>,
    state_row: usize,
    block_len: usize,
    s: &'s mut Scratch,
    out: &mut ChannelOut<'_, T>,
) -> &'s [f32] {
    let Mamba1Dims {
        d_inner,
        d_state: n_state,
        seqlen,
        ..
    } = p.dims;
    let state_at = (state_row * d_inner + ch.d) * n_state;
    let blocks: Vec<Range<usize>> = positions
        .clone()
        .step_by(block_len)
        .map(|start| start..start.saturating_add(block_len).min(positions.end))
        .collect();
    let dt_of =
        |t: usize| scan_dt_f32(p.delta[ch.at + t].to_f32(), ch.delta_bias, p.delta_softplus);

    // Checkpoint pass: the entry state of every block, as the forward port
    // computes it (decay * h + (dt * u) * B).
    let mut h = vec![0.0f32; n_state];
    if let Some(h0) = p.initial_states {
        h.copy_from_slice(&h0[state_at..state_at + n_state]);
    }
    let mut b = vec![0.0f32; n_state];
    for (k, block) in blocks.iter().enumerate() {
        s.checkpoints[k * n_state..(k + 1) * n_state].copy_from_slice(&h);
        if k + 1 == blocks.len() {
            break; // the last block's exit state is not needed
        }
        for t in block.clone() {
            let dt = dt_of(t);
            let dtu = dt * p.u[ch.at + t].to_f32();
            ch.b.load(t, seqlen, &mut b);
            for n in 0..n_state {
                h[n] = exp2(dt * ch.a2[n]) * h[n] + dtu * b[n];
            }
        }
    }

    // Reverse over blocks with the adjoint carried between them.
    s.lam.fill(0.0);
    if let Some(dh) = grads.d_final_states {
        s.lam.copy_from_slice(&dh[state_at..state_at + n_state]);
    }
    let (b_plane, c_plane) = (ch.b.is_plane(), ch.c.is_plane());
    let mut da_block = vec![0.0f32; n_state];
    let mut db_block = vec![0.0f32; if b_plane { 0 } else { n_state }];
    let mut dc_block = vec![0.0f32; if c_plane { 0 } else { n_state }];
    for (k, block) in blocks.iter().enumerate().rev() {
        let steps = block.len();
        // Recompute the block from its checkpoint.
        s.h[..n_state].copy_from_slice(&s.checkpoints[k * n_state..(k + 1) * n_state]);
        for (i, t) in block.clone().enumerate() {
            let dt = dt_of(t);
            let u = p.u[ch.at + t].to_f32();
            let dtu = dt * u;
            s.dt[i] = dt;
            ch.b.load(t, seqlen, &mut s.b[i * n_state..(i + 1) * n_state]);
            ch.c.load(t, seqlen, &mut s.c[i * n_state..(i + 1) * n_state]);
            let mut y = 0.0f32;
            for n in 0..n_state {
                let decay = exp2(dt * ch.a2[n]);
                let h = decay * s.h[i * n_state + n] + dtu * s.b[i * n_state + n];
                s.decay[i * n_state + n] = decay;
                s.h[(i + 1) * n_state + n] = h;
                y += s.c[i * n_state + n] * h;
            }
            s.y[i] = y + ch.skip * u;
        }
        // The reverse sweep over the block.
        da_block.fill(0.0);
        db_block.fill(0.0);
        dc_block.fill(0.0);
        let (mut dd_block, mut dbias_block) = (0.0f32, 0.0f32);
        for i in (0..steps).rev() {
            let t = block.start + i;
            let u = p.u[ch.at + t].to_f32();
            let g = grads.d_out[ch.at + t].to_f32();
            let dt = s.dt[i];
            let gy = match p.z {
                Some(z) => {
                    let z = z[ch.at + t].to_f32();
                    out.dz[t] = T::from_f32(g * s.y[i] * silu_grad_f32(z));
                    g * silu_f32(z)
                }
                None => g,
            };
            dd_block += gy * u;
            let dtu = dt * u;
            let (bs, cs) = (
                &s.b[i * n_state..(i + 1) * n_state],
                &s.c[i * n_state..(i + 1) * n_state],
            );
            let (h_prev, h_now) = s.h[i * n_state..(i + 2) * n_state].split_at(n_state);
            let decays = &s.decay[i * n_state..(i + 1) * n_state];
            let (mut lam_b, mut ddt) = (0.0f32, 0.0f32);
            for n in 0..n_state {
                let lam = s.lam[n] + cs[n] * gy;
                if c_plane {
                    out.dc[n * seqlen + t] += gy * h_now[n];
                } else {
                    dc_block[n] += gy * h_now[n];
                }
                if b_plane {
                    out.db[n * seqlen + t] += lam * dtu;
                } else {
                    db_block[n] += lam * dtu;
                }
                lam_b += lam * bs[n];
                let w = lam * decays[n] * h_prev[n];
                ddt += ch.a[n] * w + lam * bs[n] * u;
                da_block[n] += dt * w;
                s.lam[n] = if planted::active(Bug::ScanBwdOneStepLate) && i + 1 < steps {
                    lam * s.decay[(i + 1) * n_state + n]
                } else {
                    lam * decays[n]
                };
            }
            out.du[t] = T::from_f32(gy * ch.skip + dt * lam_b);
            let x = p.delta[ch.at + t].to_f32() + ch.delta_bias;
            let ddelta = if p.delta_softplus && planted::active(Bug::ScanBwdSoftplusThreshold) {
                ddt * planted::softplus_grad_low_threshold(x)
            } else if p.delta_softplus {
                ddt * softplus_grad_f32(x)
            } else {
                ddt
            };
            out.ddelta[t] = T::from_f32(ddelta);
            dbias_block += ddelta;
        }
        // Block sums into the channel's totals: each total then sums
        // ceil(L / T) block sums instead of L terms.
        for (acc, v) in out.da.iter_mut().zip(&da_block) {
            *acc += v;
        }
        if !b_plane {
            for (acc, v) in out.db.iter_mut().zip(&db_block) {
                *acc += v;
            }
        }
        if !c_plane {
            for (acc, v) in out.dc.iter_mut().zip(&dc_block) {
                *acc += v;
            }
        }
        *out.dd += dd_block;
        if !planted::active(Bug::ScanBwdDeltaBiasDropped) {
            *out.ddelta_bias += dbias_block;
        }
    }
    &s.lam
}
