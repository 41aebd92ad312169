//! Steps 2 and 5, fused as in the kernel's chunk-scan stage: for every head of one
//! chunk, the output
//!
//! ```text
//! y_i = exp(s_i) S_in C_i                                   (5: inter-chunk)
//!     + sum_{j<=i} (C_i . B_j) exp(s_i - s_j) dt'_j x_j      (2: intra-chunk)
//!     + D x_i,     out_i = y_i * silu(z_i)
//! ```
//!
//! `C B^T` is formed once per (chunk, group) and reused by every head of the group.

use ssm_core::mamba2::SsdParams;
use ssm_core::math::silu_f32;
use ssm_core::Element;

use super::chunk_cumsum::ChunkScalars;
use super::linalg::{dot, scale, vec_mat_acc};
use super::plan::Chunk;
use super::tiles::TileView;

/// Per-thread scratch of the chunk scan, sized for the longest chunk.
pub(crate) struct ScanScratch {
    b_tile: Vec<f32>,
    c_tile: Vec<f32>,
    /// `(len, len)` masked `C B^T`; only `j <= i` is ever written or read.
    cb: Vec<f32>,
    x_tile: Vec<f32>,
    y: Vec<f32>,
    /// One row of intra-chunk weights `(C_i . B_j) exp(s_i - s_j) dt'_j`.
    weights: Vec<f32>,
    d_row: Vec<f32>,
}

impl ScanScratch {
    pub fn new(max_len: usize, head_dim: usize, d_state: usize) -> Self {
        ScanScratch {
            b_tile: vec![0.0; max_len * d_state],
            c_tile: vec![0.0; max_len * d_state],
            cb: vec![0.0; max_len * max_len],
            x_tile: vec![0.0; max_len * head_dim],
            y: vec![0.0; max_len * head_dim],
            weights: vec![0.0; max_len],
            d_row: vec![0.0; head_dim],
        }
    }
}

/// The lower triangle (`j <= i`) of `C B^T` for `(len, N)` tiles, into `cb` `(len, len)`.
fn masked_cb(c_tile: &[f32], b_tile: &[f32], len: usize, d_state: usize, cb: &mut [f32]) {
    for (i, c_i) in c_tile.chunks_exact(d_state).take(len).enumerate() {
        let row = &mut cb[i * len..i * len + i + 1];
        for (v, b_j) in row.iter_mut().zip(b_tile.chunks_exact(d_state)) {
            *v = dot(c_i, b_j);
        }
    }
}

/// Write the `(len, H, P)` outputs of one chunk into `out`.
///
/// `entering` holds the `(H, N, P)` states entering the chunk (from step 4).
pub(crate) fn chunk_scan<T: Element>(
    p: &SsdParams<'_, T>,
    chunk: &Chunk,
    scalars: &ChunkScalars<'_>,
    entering: &[f32],
    scratch: &mut ScanScratch,
    out: &mut [T],
) {
    let dims = p.dims;
    let (heads, head_dim, d_state) = (dims.heads, dims.head_dim, dims.d_state);
    let heads_per_group = heads / dims.groups;
    let len = chunk.len;
    let ScanScratch {
        b_tile,
        c_tile,
        cb,
        x_tile,
        y,
        weights,
        d_row,
    } = scratch;
    let y = &mut y[..len * head_dim];
    for g in 0..dims.groups {
        let group_tile = TileView::group(chunk.token_start, len, dims.groups, d_state, g);
        group_tile.load(p.b, b_tile);
        group_tile.load(p.c, c_tile);
        masked_cb(c_tile, b_tile, len, d_state, cb);
        for h in g * heads_per_group..(g + 1) * heads_per_group {
            let x_view = TileView::head(chunk.token_start, len, heads, head_dim, h);
            x_view.load(p.x, x_tile);
            let (dt, s) = scalars.head(h);
            let state = &entering[h * d_state * head_dim..(h + 1) * d_state * head_dim];
            y.fill(0.0);
            for (i, y_i) in y.chunks_exact_mut(head_dim).enumerate() {
                // 5: the state entering the chunk, decayed to token i.
                vec_mat_acc(
                    &c_tile[i * d_state..(i + 1) * d_state],
                    state,
                    head_dim,
                    y_i,
                );
                scale(s[i].exp2(), y_i);
                // 2: the causal mask is applied first (j <= i only), so the exp2
                // only ever sees s_i - s_j <= 0 and never overflows.
                let w = &mut weights[..=i];
                for (j, w_j) in w.iter_mut().enumerate() {
                    *w_j = cb[i * len + j] * (s[i] - s[j]).exp2() * dt[j];
                }
                vec_mat_acc(w, x_tile, head_dim, y_i);
            }
            write_head_output(p, chunk, h, x_tile, y, d_row, out);
        }
    }
}

/// Epilogue of one head: `out = (y + D x) * silu(z)`, rounded to `T`.
fn write_head_output<T: Element>(
    p: &SsdParams<'_, T>,
    chunk: &Chunk,
    h: usize,
    x_tile: &[f32],
    y: &[f32],
    d_row: &mut [f32],
    out: &mut [T],
) {
    let (heads, head_dim) = (p.dims.heads, p.dims.head_dim);
    match &p.d {
        Some(d) => {
            for (pi, v) in d_row.iter_mut().enumerate() {
                *v = d.get(head_dim, h, pi);
            }
        }
        None => d_row.fill(0.0),
    }
    if ssm_core::planted::active(ssm_core::planted::Bug::DroppedD) {
        d_row.fill(0.0);
    }
    let z_view = TileView::head(chunk.token_start, chunk.len, heads, head_dim, h);
    for (i, (y_i, x_i)) in y
        .chunks_exact(head_dim)
        .zip(x_tile.chunks_exact(head_dim))
        .enumerate()
    {
        let dst = &mut out[(i * heads + h) * head_dim..][..head_dim];
        let z_i =
            p.z.map(|z| &z[z_view.first + i * z_view.row_stride..][..head_dim]);
        for pi in 0..head_dim {
            let mut v = y_i[pi] + d_row[pi] * x_i[pi];
            if let Some(z_i) = z_i {
                v *= silu_f32(z_i[pi].to_f32());
            }
            dst[pi] = T::from_f32(v);
        }
    }
}
