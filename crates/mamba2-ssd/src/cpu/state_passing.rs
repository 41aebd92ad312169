//! Step 4: the sequential pass over the chunks of one sequence,
//! `S <- exp(s_last) S + R`, starting from the sequence's initial state.
//!
//! It overwrites each chunk's own state `R` with the state *entering* the chunk,
//! which is what step 5 needs, and returns the state after the last chunk.

use super::chunk_cumsum::ChunkScalars;

/// `chunk_states` holds the `(H, N, P)` states `R^T` of the sequence's chunks in
/// order, `scalars` their per-head cumulative sums; `running` is `(H, N, P)`
/// scratch that must hold the initial state (transposed) on entry and holds the
/// final state on return.
pub(crate) fn pass_states(
    chunk_states: &mut [f32],
    scalars: &[ChunkScalars<'_>],
    heads: usize,
    running: &mut [f32],
) {
    let state_len = running.len();
    let head_len = state_len / heads;
    for (states, sc) in chunk_states.chunks_exact_mut(state_len).zip(scalars) {
        for (h, (entering, run)) in states
            .chunks_exact_mut(head_len)
            .zip(running.chunks_exact_mut(head_len))
            .enumerate()
        {
            // The decay over the whole chunk; the chunk's own state R was formed
            // with decays relative to the chunk end, so no cumulative product ever
            // spans more than one chunk.
            let decay = sc.last(h).exp2();
            for (slot, s) in entering.iter_mut().zip(run.iter_mut()) {
                let own = *slot;
                *slot = *s;
                *s = decay * *s + own;
            }
        }
    }
}

/// Transpose every `(rows, cols)` block of `src` (one per head) into `dst`.
/// States are `(H, P, N)` at the API and `(H, N, P)` inside the port.
pub(crate) fn transpose_blocks(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    let block = rows * cols;
    for (s, d) in src.chunks_exact(block).zip(dst.chunks_exact_mut(block)) {
        for (r, s_row) in s.chunks_exact(cols).enumerate() {
            for (c, &v) in s_row.iter().enumerate() {
                d[c * rows + r] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_round_trips() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut t = vec![0f32; 12];
        let mut back = vec![0f32; 12];
        transpose_blocks(&src, &mut t, 2, 3);
        assert_eq!(&t[..6], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        transpose_blocks(&t, &mut back, 3, 2);
        assert_eq!(back, src);
    }

    #[test]
    fn states_entering_each_chunk_and_the_final_state() {
        // One head, one state element; chunk decays 1/2 and 1/4 (log2: -1, -2).
        let (dt, s1, s2) = ([1.0f32], [-1.0f32], [-2.0f32]);
        let scalars = [
            ChunkScalars {
                len: 1,
                dt: &dt,
                log2_cumsum: &s1,
            },
            ChunkScalars {
                len: 1,
                dt: &dt,
                log2_cumsum: &s2,
            },
        ];
        let mut states = [3.0f32, 5.0]; // R of each chunk
        let mut running = [8.0f32]; // initial state
        pass_states(&mut states, &scalars, 1, &mut running);
        assert_eq!(states, [8.0, 0.5 * 8.0 + 3.0]);
        assert_eq!(running, [0.25 * 7.0 + 5.0]);
    }
}
