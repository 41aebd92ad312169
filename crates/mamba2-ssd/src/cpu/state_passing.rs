//! Step 4: the sequential pass over the chunks of one sequence,
//! `S <- exp(s_last) S + R`, starting from the sequence's initial state.
//!
//! It overwrites each chunk's own state `R` with the state *entering* the chunk,
//! which is what step 5 needs, and returns the state after the last chunk.

/// One (sequence, head): `chunk_states[c]` holds the `(N, P)` state `R^T` of the
/// sequence's chunk `c` and `log2_chunk_decays[c]` its `s_last`; `running` must
/// hold the initial state `(N, P)` on entry and holds the final state on return.
pub(crate) fn pass_states(
    chunk_states: &mut [&mut [f32]],
    log2_chunk_decays: impl IntoIterator<Item = f32>,
    running: &mut [f32],
) {
    for (entering, log2_decay) in chunk_states.iter_mut().zip(log2_chunk_decays) {
        // The decay over the whole chunk; the chunk's own state R was formed with
        // decays relative to the chunk end, so no cumulative sum ever spans more
        // than one chunk.
        let decay = log2_decay.exp2();
        let decay = if ssm_core::planted::active(ssm_core::planted::Bug::NoCarriedDecay) {
            1.0
        } else {
            decay
        };
        for (slot, s) in entering.iter_mut().zip(running.iter_mut()) {
            let own = *slot;
            *slot = *s;
            *s = decay * *s + own;
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
        // One state element; chunk decays 1/2 and 1/4 (log2: -1, -2).
        let (mut r0, mut r1) = ([3.0f32], [5.0f32]); // R of each chunk
        let mut running = [8.0f32]; // initial state
        pass_states(&mut [&mut r0[..], &mut r1[..]], [-1.0, -2.0], &mut running);
        assert_eq!((r0, r1), ([8.0], [0.5 * 8.0 + 3.0]));
        assert_eq!(running, [0.25 * 7.0 + 5.0]);
    }
}
