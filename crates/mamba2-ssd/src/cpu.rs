//! The 5-step chunked SSD in f32 (docs/DESIGN.md §1.2): the CPU twin of the CUDA kernel
//! and the fallback for users without a GPU.
//!
//! The steps run in the kernel's stages, each parallel where the kernel's is:
//!
//! | stage | steps | parallel over | module |
//! | --- | --- | --- | --- |
//! | A | 1 cumsum, 3 chunk state | chunks | `chunk_cumsum`, `chunk_state` |
//! | B | 4 state passing | (sequence, head), sequential over chunks | `state_passing` |
//! | C | 2 intra-chunk, 5 inter-chunk, D, z gate | chunks (`C B^T` shared by a group's heads) | `chunk_scan` |
//!
//! Chunks restart at every sequence start (`plan`), so varlen input needs no
//! special case beyond per-sequence initial and final states.
//!
//! Decays are computed in base 2, as on the GPU: `log2(e)` is folded into `A` once
//! per head, cumulative sums hold `log2` of the decay, and every decay is
//! `exp2` of a difference of two cumulative sums taken inside one chunk, with the
//! causal mask applied before the `exp2`. Everything is f32; outputs are rounded
//! to `T` once, final states stay f32.
//!
//! Memory beyond the output: `b * L * H` f32 for each of `dt'` and `s`, one
//! `(H, P, N)` f32 state per chunk (`ceil(L / Q) * H * P * N` values, the kernel's
//! chunk-state buffer), and per thread tiles of `Q' * (Q' + 2N + 2P)` f32 with
//! `Q' = min(Q, longest sequence)`: very large chunks cost `Q'^2` memory, as the
//! quadratic form does.

pub(crate) mod chunk_cumsum;
mod chunk_scan;
pub(crate) mod chunk_state;
pub(crate) mod linalg;
pub(crate) mod plan;
pub(crate) mod state_passing;
pub(crate) mod tiles;

use rayon::prelude::*;
use ssm_core::mamba2::SsdParams;
use ssm_core::{Element, Result, ScanOutput, SsmError};

use chunk_cumsum::{chunk_cumsum, ChunkScalars};
use chunk_scan::{chunk_scan, ScanScratch};
use chunk_state::{chunk_state, StateScratch};
use plan::{split_lengths_mut, ChunkPlan};
use state_passing::{pass_states, transpose_blocks};

/// The chunked forward pass with chunk length `chunk_size` (any value >= 1; longer
/// than the sequence means one chunk per sequence).
pub fn ssd_chunked<T: Element>(
    p: &SsdParams<'_, T>,
    chunk_size: usize,
) -> Result<ScanOutput<T, f32>> {
    let layout = p.validate()?;
    if chunk_size == 0 {
        return Err(SsmError::Dimension {
            arg: "chunk_size",
            reason: "must be at least 1".into(),
        });
    }
    let dims = p.dims;
    let plan = ChunkPlan::new(&dims, p.cu_seqlens, chunk_size);
    let (heads, head_dim, d_state) = (dims.heads, dims.head_dim, dims.d_state);
    let tokens = dims.batch * dims.seqlen;
    let state_len = checked_product("d_state", &[heads, head_dim, d_state])?;
    let all_chunk_states = checked_product("chunk_size", &[plan.chunks.len(), state_len])?;
    // Each thread holds a (Q', Q') tile of C B^T, Q' = min(Q, longest sequence).
    checked_product("chunk_size", &[plan.max_chunk_len, plan.max_chunk_len])?;

    // Stage A: steps 1 and 3 for every chunk.
    let StageA {
        dt,
        log2_cumsum,
        states: mut chunk_states,
    } = stage_a(p, &plan, tokens, state_len, all_chunk_states);
    let scalars = chunk_scalars(&plan, heads, &dt, &log2_cumsum);

    // Stage B: step 4, one (sequence, head) per task, sequential over its chunks.
    let head_len = head_dim * d_state;
    let mut final_states = vec![0f32; layout.num_seqs * state_len];
    {
        // Each chunk's (H, N, P) states, handed out one head at a time: tasks are
        // built in (sequence, head) order, so chunk c's iterator yields head h to
        // the task of head h of c's sequence.
        let mut heads_of_chunk: Vec<_> = chunk_states
            .chunks_exact_mut(state_len)
            .map(|s| s.chunks_exact_mut(head_len))
            .collect();
        let mut tasks = Vec::with_capacity(layout.num_seqs * heads);
        for (seq_index, seq) in plan.sequences.iter().enumerate() {
            for h in 0..heads {
                let entering: Vec<&mut [f32]> = heads_of_chunk[seq.chunks.clone()]
                    .iter_mut()
                    .map(|it| it.next().expect("one slice per head"))
                    .collect();
                tasks.push((
                    seq_index * heads + h,
                    h,
                    &scalars[seq.chunks.clone()],
                    entering,
                ));
            }
        }
        tasks
            .into_par_iter()
            .zip(final_states.par_chunks_exact_mut(head_len))
            .for_each_init(
                || vec![0f32; head_len],
                |running, ((seq_head, h, scalars, mut entering), final_state)| {
                    match p.initial_states {
                        Some(s0) => transpose_blocks(
                            &s0[seq_head * head_len..(seq_head + 1) * head_len],
                            running,
                            head_dim,
                            d_state,
                        ),
                        None => running.fill(0.0),
                    }
                    pass_states(&mut entering, scalars.iter().map(|s| s.last(h)), running);
                    transpose_blocks(running, final_state, d_state, head_dim);
                },
            );
    }

    // Stage C: steps 2 and 5 and the epilogue for every chunk.
    let mut out = vec![T::default(); tokens * heads * head_dim];
    {
        let out_lens = plan.chunks.iter().map(|c| c.len * heads * head_dim);
        let tasks: Vec<_> = plan
            .chunks
            .iter()
            .zip(&scalars)
            .zip(chunk_states.chunks_exact(state_len))
            .zip(split_lengths_mut(&mut out, out_lens))
            .collect();
        let max_len = plan.max_chunk_len;
        tasks.into_par_iter().for_each_init(
            || ScanScratch::new(max_len, head_dim, d_state),
            |scratch, (((chunk, scalars), entering), out)| {
                if ssm_core::planted::active(ssm_core::planted::Bug::LastPartialChunkSkipped)
                    && chunk.len < chunk_size
                {
                    return;
                }
                chunk_scan(p, chunk, scalars, entering, scratch, out);
            },
        );
    }

    Ok(ScanOutput {
        out,
        final_states: p.return_final_states.then_some(final_states),
    })
}

/// What stage A of the chunked form computes for every chunk (in parallel over
/// chunks): the steps dt' and the in-chunk cumulative log2 decays, per token and
/// head, and each chunk's own state (the one it leaves from a zero state), one
/// `state_len` block per chunk. The backward port recomputes exactly this.
pub(crate) struct StageA {
    pub dt: Vec<f32>,
    pub log2_cumsum: Vec<f32>,
    pub states: Vec<f32>,
}

pub(crate) fn stage_a<T: Element>(
    p: &SsdParams<'_, T>,
    plan: &ChunkPlan,
    tokens: usize,
    state_len: usize,
    all_chunk_states: usize,
) -> StageA {
    let (heads, head_dim, d_state) = (p.dims.heads, p.dims.head_dim, p.dims.d_state);
    let log2_a: Vec<f32> = p.a.iter().map(|&a| a * std::f32::consts::LOG2_E).collect();
    let mut dt = vec![0f32; tokens * heads];
    let mut log2_cumsum = vec![0f32; tokens * heads];
    let mut states = vec![0f32; all_chunk_states];
    let scalar_lens = plan.chunks.iter().map(|c| c.len * heads);
    let tasks: Vec<_> = plan
        .chunks
        .iter()
        .zip(split_lengths_mut(&mut dt, scalar_lens.clone()))
        .zip(split_lengths_mut(&mut log2_cumsum, scalar_lens))
        .zip(states.chunks_exact_mut(state_len))
        .collect();
    let max_len = plan.max_chunk_len;
    tasks.into_par_iter().for_each_init(
        || StateScratch::new(max_len, head_dim, d_state),
        |scratch, (((chunk, dt), log2_cumsum), st)| {
            chunk_cumsum(p, chunk, &log2_a, dt, log2_cumsum);
            let scalars = ChunkScalars {
                len: chunk.len,
                dt,
                log2_cumsum,
            };
            chunk_state(p, chunk, &scalars, scratch, st);
        },
    );
    StageA {
        dt,
        log2_cumsum,
        states,
    }
}

/// Each chunk's view of stage A's per-token scalars.
pub(crate) fn chunk_scalars<'a>(
    plan: &ChunkPlan,
    heads: usize,
    dt: &'a [f32],
    log2_cumsum: &'a [f32],
) -> Vec<ChunkScalars<'a>> {
    plan.chunks
        .iter()
        .map(|c| {
            let range = c.token_start * heads..(c.token_start + c.len) * heads;
            ChunkScalars {
                len: c.len,
                dt: &dt[range.clone()],
                log2_cumsum: &log2_cumsum[range],
            }
        })
        .collect()
}

/// Product of sizes, or a `Dimension` error naming `arg` when it overflows.
pub(crate) fn checked_product(arg: &'static str, sizes: &[usize]) -> Result<usize> {
    sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| SsmError::Dimension {
            arg,
            reason: format!("the buffer of {sizes:?} elements does not fit in memory"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_core::mamba2::{DSkip, SsdDims};

    /// One head, P = N = 1, each step halves the state: S = 1, 2.5, 4.25, 5.125.
    #[test]
    fn hand_computed_recurrence_for_every_chunk_size() {
        let dims = SsdDims::new(1, 4, 1, 1, 1, 1);
        let (x, dt, bc) = ([1.0f32, 2.0, 3.0, 3.0], [1.0f32; 4], [1.0f32; 4]);
        let a = [-std::f32::consts::LN_2];
        let d = [10.0f32];
        let p = SsdParams::new(dims, &x, &dt, &a, &bc, &bc)
            .with_d(DSkip::PerHead(&d))
            .with_final_states(true);
        for chunk in [1, 2, 3, 4, 9] {
            let got = ssd_chunked(&p, chunk).unwrap();
            let want = [1.0 + 10.0, 2.5 + 20.0, 4.25 + 30.0, 5.125 + 30.0];
            for (g, w) in got.out.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "Q={chunk}: {:?}", got.out);
            }
            let s = got.final_states.unwrap()[0];
            assert!((s - 5.125).abs() < 1e-5, "Q={chunk}: final {s}");
        }
    }

    #[test]
    fn final_states_only_when_asked() {
        let dims = SsdDims::new(1, 2, 1, 1, 1, 1);
        let v = [1.0f32; 2];
        let p = SsdParams::new(dims, &v, &v, &[-1.0], &v, &v);
        assert!(ssd_chunked(&p, 1).unwrap().final_states.is_none());
    }
}
