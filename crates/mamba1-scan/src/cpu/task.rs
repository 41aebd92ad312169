//! One task: a chunk of channels of one batch row, through every sequence of the
//! row and every L-block of each sequence.
//!
//! Loop order, as in the kernel (block of channels x block of time):
//!
//! ```text
//! for each sequence of the row:        states <- initial states (or 0)
//!     for each L-block of the sequence:
//!         B, C tiles <- (N, block) slices of the group, read once, transposed to f32
//!         for each lane group of the chunk:
//!             dt, u tiles <- the lane group's channels over the block
//!             recurrence over the block (state carried in `states`)
//!             out <- (y + D u) * silu(z), rounded to T
//!     final states <- states
//! ```
//!
//! Every buffer is allocated once per task; nothing is allocated per block or step.

use std::ops::Range;

use ssm_core::mamba1::{BcInput, SelectiveScanParams};
use ssm_core::math::{scan_dt_f32, silu_f32};
use ssm_core::Element;

use super::block::{scan_block, BlockInputs, Coefficients, Lanes, LANES};
use super::plan::{ChannelChunk, Sequence};

/// Longest L-block held in the tiles at once.
const MAX_BLOCK_STEPS: usize = 4096;

/// Up to `LANES` consecutive channels processed together, with their constants
/// and their running state.
struct LaneGroup {
    /// Channels (absolute indices in `0..D_in`), at most `LANES`.
    channels: Range<usize>,
    /// `A * log2(e)` per state index: the kernel's exponent base is 2.
    a2: Vec<Lanes>,
    delta_bias: Lanes,
    skip: Lanes,
    /// Constant B or C, `[n][lane]`, when given that way.
    b_const: Option<Vec<Lanes>>,
    c_const: Option<Vec<Lanes>>,
    /// The running state, `[n][lane]`.
    state: Vec<Lanes>,
}

impl LaneGroup {
    fn new<T: Element>(p: &SelectiveScanParams<'_, T>, channels: Range<usize>) -> Self {
        let n_state = p.dims.d_state;
        // `[n][lane]` vectors of a `(D_in, N)` tensor. Lanes past the last channel
        // keep zeros everywhere: dt = 0 and a2 = 0 give decay 1 and no input, so
        // their state stays 0, and they are never written out.
        let per_state = |value: &dyn Fn(usize) -> f32| -> Vec<Lanes> {
            let mut out = vec![[0.0; LANES]; n_state];
            for (l, d) in channels.clone().enumerate() {
                for (n, slot) in out.iter_mut().enumerate() {
                    slot[l] = value(d * n_state + n);
                }
            }
            out
        };
        let per_channel = |values: Option<&[f32]>| -> Lanes {
            let mut out = [0.0; LANES];
            if let Some(values) = values {
                out[..channels.len()].copy_from_slice(&values[channels.clone()]);
            }
            out
        };
        let constant = |bc: &BcInput<'_, T>| match *bc {
            BcInput::Constant(data) => Some(per_state(&|i| data[i].to_f32())),
            BcInput::Grouped { .. } => None,
        };
        LaneGroup {
            a2: per_state(&|i| p.a[i] * std::f32::consts::LOG2_E),
            delta_bias: per_channel(p.delta_bias),
            skip: per_channel(p.d),
            b_const: constant(&p.b),
            c_const: constant(&p.c),
            state: vec![[0.0; LANES]; n_state],
            channels,
        }
    }

    /// Start a sequence: load state row `seq_state` of the initial states, or zeros.
    fn load_state(&mut self, initial_states: Option<&[f32]>, seq_state: usize, d_inner: usize) {
        let n_state = self.state.len();
        self.state.fill([0.0; LANES]);
        let planted_ignore = ssm_core::planted::active(ssm_core::planted::Bug::InitialStateIgnored);
        if let Some(h0) = initial_states.filter(|_| !planted_ignore) {
            for (l, d) in self.channels.clone().enumerate() {
                let at = (seq_state * d_inner + d) * n_state;
                for (slot, &v) in self.state.iter_mut().zip(&h0[at..at + n_state]) {
                    slot[l] = v;
                }
            }
        }
    }

    /// Append the state of each channel, `(channel, N)`, to `dst`.
    fn store_state(&self, dst: &mut Vec<f32>) {
        for l in 0..self.channels.len() {
            dst.extend(self.state.iter().map(|h| h[l]));
        }
    }
}

/// Per-block scratch tiles, sized for the longest block.
struct Tiles {
    b: Vec<f32>,
    c: Vec<f32>,
    dt: Vec<Lanes>,
    u: Vec<Lanes>,
    y: Vec<Lanes>,
}

/// Fill `tile[t * N + n]` with the group's `(N, L)` slice over `block`, widened to f32.
fn load_shared_tile<T: Element>(
    tile: &mut [f32],
    group_data: &[T],
    (n_state, seqlen): (usize, usize),
    block: &Range<usize>,
) {
    for n in 0..n_state {
        let src = &group_data[n * seqlen + block.start..n * seqlen + block.end];
        for (row, &v) in tile.chunks_exact_mut(n_state).zip(src) {
            row[n] = v.to_f32();
        }
    }
}

/// Run one chunk. `out` holds the chunk's output rows, `(channels, L)`. Returns
/// the final states of every sequence of the row, `(sequence, channel, N)` in
/// sequence order, when they were requested (else an empty vector).
pub(crate) fn run_chunk<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    chunk: &ChannelChunk,
    sequences: &[Sequence],
    block_len: usize,
    out: &mut [T],
) -> Vec<f32> {
    let dims = p.dims;
    let (d_inner, n_state, seqlen) = (dims.d_inner, dims.d_state, dims.seqlen);
    let row_at = chunk.row * d_inner;

    let mut groups: Vec<LaneGroup> = chunk
        .channels
        .clone()
        .step_by(LANES)
        .map(|start| LaneGroup::new(p, start..(start + LANES).min(chunk.channels.end)))
        .collect();

    // Longer blocks run in pieces of `MAX_BLOCK_STEPS`: the results are bitwise
    // the same (the arithmetic of a channel does not depend on where blocks
    // end, as the tests check), and the tiles stay small whatever was asked.
    let block_len = block_len.min(MAX_BLOCK_STEPS);
    let tile_len = block_len.min(seqlen);
    let mut tiles = Tiles {
        b: vec![0.0; tile_len * n_state],
        c: vec![0.0; tile_len * n_state],
        dt: vec![[0.0; LANES]; tile_len],
        u: vec![[0.0; LANES]; tile_len],
        y: vec![[0.0; LANES]; tile_len],
    };
    let group_data = |bc| group_slice(bc, chunk, (d_inner, n_state, seqlen));
    let (b_group, c_group) = (group_data(&p.b), group_data(&p.c));

    let mut final_states = Vec::new();
    for seq in sequences {
        for group in &mut groups {
            group.load_state(p.initial_states, seq.state, d_inner);
        }
        for block_start in seq.positions.clone().step_by(block_len) {
            let block = block_start..(block_start + block_len).min(seq.positions.end);
            let steps = block.len();
            let bc_block = if ssm_core::planted::active(ssm_core::planted::Bug::ScanBlockBoundary)
                && block_start > seq.positions.start
            {
                block.start - 1..block.end - 1
            } else {
                block.clone()
            };
            if let Some(data) = b_group {
                load_shared_tile(&mut tiles.b, data, (n_state, seqlen), &bc_block);
            }
            if let Some(data) = c_group {
                load_shared_tile(&mut tiles.c, data, (n_state, seqlen), &bc_block);
            }
            for group in &mut groups {
                load_channel_tiles(p, group, row_at, &block, &mut tiles);
                let inputs = BlockInputs {
                    dt: &tiles.dt[..steps],
                    u: &tiles.u[..steps],
                    b: coefficients(&tiles.b[..steps * n_state], &group.b_const, n_state),
                    c: coefficients(&tiles.c[..steps * n_state], &group.c_const, n_state),
                };
                scan_block(&mut group.state, &group.a2, &inputs, &mut tiles.y[..steps]);
                write_block(p, group, row_at, chunk.channels.start, &block, &tiles, out);
            }
        }
        if p.return_final_states {
            for group in &groups {
                group.store_state(&mut final_states);
            }
        }
    }
    final_states
}

/// The `(N, L)` slice of the chunk's group in a `(b, G, N, L)` input, or `None`
/// for a constant input.
fn group_slice<'a, T: Element>(
    bc: &BcInput<'a, T>,
    chunk: &ChannelChunk,
    (d_inner, n_state, seqlen): (usize, usize, usize),
) -> Option<&'a [T]> {
    match *bc {
        BcInput::Grouped { groups, data } => {
            let g = SelectiveScanParams::<T>::group_of(bc, d_inner, chunk.channels.start);
            let g = if ssm_core::planted::active(ssm_core::planted::Bug::WrongGroup) {
                chunk.channels.start % groups
            } else {
                g
            };
            let at = (chunk.row * groups + g) * n_state * seqlen;
            Some(&data[at..at + n_state * seqlen])
        }
        BcInput::Constant(_) => None,
    }
}

/// B or C for the recurrence: the block's shared tile, or the lane group's constants.
fn coefficients<'a>(
    tile: &'a [f32],
    constant: &'a Option<Vec<Lanes>>,
    n_state: usize,
) -> Coefficients<'a> {
    match constant {
        Some(values) => Coefficients::PerChannel(values),
        None => Coefficients::Shared {
            tile,
            d_state: n_state,
        },
    }
}

/// Fill the dt and u tiles (`[t][lane]`) of a lane group over `block`.
fn load_channel_tiles<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    group: &LaneGroup,
    row_at: usize,
    block: &Range<usize>,
    tiles: &mut Tiles,
) {
    let steps = block.len();
    let (dt_tile, u_tile) = (&mut tiles.dt[..steps], &mut tiles.u[..steps]);
    if group.channels.len() < LANES {
        dt_tile.fill([0.0; LANES]);
        u_tile.fill([0.0; LANES]);
    }
    for (l, d) in group.channels.clone().enumerate() {
        let at = (row_at + d) * p.dims.seqlen;
        let delta = &p.delta[at + block.start..at + block.end];
        let u = &p.u[at + block.start..at + block.end];
        let bias = group.delta_bias[l];
        let slots = dt_tile.iter_mut().zip(u_tile.iter_mut());
        for ((dt_slot, u_slot), (&delta, &u)) in slots.zip(delta.iter().zip(u)) {
            dt_slot[l] = scan_dt_f32(delta.to_f32(), bias, p.delta_softplus);
            if ssm_core::planted::active(ssm_core::planted::Bug::SoftplusThreshold)
                && p.delta_softplus
            {
                dt_slot[l] = ssm_core::planted::softplus_low_threshold(delta.to_f32() + bias);
            }
            u_slot[l] = u.to_f32();
        }
    }
}

/// Write `out = (y + D u) * silu(z)` of a lane group over `block`, rounded to T.
fn write_block<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    group: &LaneGroup,
    row_at: usize,
    chunk_start: usize,
    block: &Range<usize>,
    tiles: &Tiles,
    out: &mut [T],
) {
    let seqlen = p.dims.seqlen;
    let steps = block.len();
    let (y_tile, u_tile) = (&tiles.y[..steps], &tiles.u[..steps]);
    for (l, d) in group.channels.clone().enumerate() {
        let at = (d - chunk_start) * seqlen;
        let dst = &mut out[at + block.start..at + block.end];
        let skip = group.skip[l];
        let ys = y_tile.iter().zip(u_tile).map(|(y, u)| y[l] + skip * u[l]);
        match p.z {
            Some(z) => {
                let z_at = (row_at + d) * seqlen;
                let z = &z[z_at + block.start..z_at + block.end];
                for ((o, y), &z) in dst.iter_mut().zip(ys).zip(z) {
                    *o = T::from_f32(y * silu_f32(z.to_f32()));
                }
            }
            None => {
                for (o, y) in dst.iter_mut().zip(ys) {
                    *o = T::from_f32(y);
                }
            }
        }
    }
}
