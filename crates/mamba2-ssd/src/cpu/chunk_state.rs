//! Step 3: the state a chunk produces on its own, from a zero state,
//! `R = sum_j exp(s_last - s_j) dt'_j x_j B_j^T`, stored transposed as `(N, P)` so
//! that every update runs along the contiguous head dimension.

use super::linalg::vec_mat_acc;

/// Compute `R^T` `(N, P)` of one head into `state`.
///
/// `b_tile` is the chunk's `(len, N)` B tile of the head's group, `x_tile` its
/// `(len, P)` x tile, `dt`/`log2_cumsum` its step sizes and cumulative log2-decays;
/// `weighted_bt` is `(N, len)` scratch for `B^T` scaled by the decay to the chunk end.
pub(crate) fn chunk_state(
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
