//! Step 3: the state a chunk produces on its own, from a zero state,
//! `R = sum_j exp(s_last - s_j) dt'_j x_j B_j^T`, stored transposed as `(N, P)` so
//! that every update runs along the contiguous head dimension.

use ssm_core::mamba2::SsdParams;
use ssm_core::Element;

use super::chunk_cumsum::ChunkScalars;
use super::linalg::vec_mat_acc;
use super::plan::Chunk;
use super::tiles::TileView;

/// Per-thread scratch of the chunk-state stage, sized for the longest chunk.
pub(crate) struct StateScratch {
    b_tile: Vec<f32>,
    x_tile: Vec<f32>,
    weighted_bt: Vec<f32>,
}

impl StateScratch {
    pub fn new(max_len: usize, head_dim: usize, d_state: usize) -> Self {
        StateScratch {
            b_tile: vec![0.0; max_len * d_state],
            x_tile: vec![0.0; max_len * head_dim],
            weighted_bt: vec![0.0; d_state * max_len],
        }
    }
}

/// Step 3 for every head of one chunk into `states` `(H, N, P)`; the B tile is
/// loaded once per group and shared by its heads.
pub(crate) fn chunk_state<T: Element>(
    p: &SsdParams<'_, T>,
    chunk: &Chunk,
    scalars: &ChunkScalars<'_>,
    scratch: &mut StateScratch,
    states: &mut [f32],
) {
    let dims = p.dims;
    let heads_per_group = dims.heads / dims.groups;
    let head_len = dims.head_dim * dims.d_state;
    let len = chunk.len;
    let b_tile = &mut scratch.b_tile[..len * dims.d_state];
    let x_tile = &mut scratch.x_tile[..len * dims.head_dim];
    for g in 0..dims.groups {
        TileView::group(chunk.token_start, len, dims.groups, dims.d_state, g).load(p.b, b_tile);
        for h in g * heads_per_group..(g + 1) * heads_per_group {
            TileView::head(chunk.token_start, len, dims.heads, dims.head_dim, h).load(p.x, x_tile);
            let (dt, s) = scalars.head(h);
            head_state(
                b_tile,
                x_tile,
                dt,
                s,
                &mut scratch.weighted_bt,
                &mut states[h * head_len..(h + 1) * head_len],
            );
        }
    }
}

/// Compute `R^T` `(N, P)` of one head of one chunk into `state`.
///
/// `b_tile` is the chunk's `(len, N)` B tile of the head's group, `x_tile` its
/// `(len, P)` x tile, `dt`/`log2_cumsum` its step sizes and cumulative log2-decays;
/// `weighted_bt` is `(N, len)` scratch for `B^T` scaled by the decay to the chunk end.
fn head_state(
    b_tile: &[f32],
    x_tile: &[f32],
    dt: &[f32],
    log2_cumsum: &[f32],
    weighted_bt: &mut [f32],
    state: &mut [f32],
) {
    let len = dt.len();
    let d_state = b_tile.len() / len;
    let head_dim = x_tile.len() / len;
    let s_last = log2_cumsum[len - 1];
    let weighted_bt = &mut weighted_bt[..d_state * len];
    for (j, b_row) in b_tile.chunks_exact(d_state).enumerate() {
        // s_last >= s_j for A <= 0: the decay to the chunk end is at most 1.
        let w = (s_last - log2_cumsum[j]).exp2() * dt[j];
        let w = if ssm_core::planted::active(ssm_core::planted::Bug::SsdChunkBoundary)
            && j + 1 == len
        {
            0.0
        } else {
            w
        };
        for (n, &b) in b_row.iter().enumerate() {
            weighted_bt[n * len + j] = b * w;
        }
    }
    state.fill(0.0);
    for (row, bt_n) in state
        .chunks_exact_mut(head_dim)
        .zip(weighted_bt.chunks_exact(len))
    {
        vec_mat_acc(bt_n, x_tile, head_dim, row);
    }
}
