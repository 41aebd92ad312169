//! The chunked SSD backward in f32 (derivation in docs/BACKWARD-SSD.md): the CPU
//! twin of a backward kernel and the fallback for users without a GPU.
//!
//! The forward saves nothing: the backward recomputes what it needs from the
//! inputs, in the forward's own stages and with the forward's own code (so the
//! recomputed states are bit-identical to the ones the forward used), then runs
//! the reverse of each stage:
//!
//! | stage | what | parallel over |
//! | --- | --- | --- |
//! | A | recompute `dt'`, in-chunk cumulative log2-decays `s`, chunk states `R_c` | chunks |
//! | B | recompute the states entering each chunk, `S_c` (forward state passing) | (sequence, head) |
//! | C | each chunk's own state gradient `sum_i exp(s_i) C_i dy_i^T` | chunks |
//! | D | reverse state passing: the gradient `G_c` of the state leaving chunk `c`, and `d initial_states` | (sequence, head), chunks in reverse |
//! | E | per chunk: `dx, dB, dC, d dt', dz`, the log-decay gradients, partial `dA, dt_bias, D` | chunks (a group's heads in order) |
//! | F | `dA`, `d dt_bias`, `dD`: partials summed in chunk order | sequential |
//!
//! Determinism: every output element is written by exactly one task, and every
//! sum runs in a fixed order (tokens of a chunk, then heads of a group in index
//! order for `dB`/`dC`, then chunks in order for the parameter gradients), so the
//! same input gives bit-identical output whatever the thread count. No atomics.
//!
//! Stage E for one head of one chunk, positions `i, j` in the chunk, `E_ij =
//! exp2(s_i - s_j)` (`j <= i`, mask first), `q = s_last`, `S` the entering state,
//! `G` the gradient of the leaving state, `dy_i = d_out_i silu(z_i)`:
//!
//! ```text
//! dx_j   = D dy_j + sum_{i>=j} (C_i.B_j) E_ij dt_j dy_i + exp2(q - s_j) dt_j G B_j
//! dC_i   = exp2(s_i) S^T dy_i + sum_{j<=i} E_ij dt_j (dy_i.x_j) B_j
//! dB_j   = sum_{i>=j} E_ij dt_j (dy_i.x_j) C_i + exp2(q - s_j) dt_j G^T x_j
//! ddt'_j = sum_{i>=j} (C_i.B_j) E_ij (dy_i.x_j) + exp2(q - s_j) x_j.G B_j + A da_j
//! da_k   = sum_{i>=k} sum_{j<k} (C_i.B_j) E_ij dt_j (dy_i.x_j)     (pairs whose segment holds k)
//!        + sum_{i>=k} exp2(s_i) dy_i.(S C_i) + exp2(q) <G, S>
//!        + sum_{j<k} exp2(q - s_j) dt_j x_j.G B_j                  (natural-log units)
//! dA    += sum_k dt_k da_k
//! ```
//!
//! Each `da_k` is summed from the terms whose segment `(j, i]` holds `k` (the
//! "stable" form of mamba_ssm's `_chunk_scan_bwd_ddAcs_stable`), not as `ds_i`
//! pair differences followed by a reverse cumulative sum: `+w` and `-w` in f32
//! leave residues of size `|w|`, which a spiky step turns into a 1e-4 error in
//! `dA` (found by the property tests).
//!
//! Memory beyond the gradients: the forward's (`dt'`, `s`: `b L H` f32 each; one
//! `(H, N, P)` f32 state per chunk) plus one more state per chunk for `G_c`, `H (2 +
//! P)` f32 partials per chunk, and per thread tiles of `3 Q'^2 + Q' (4N + 6P + 3)` f32
//! with `Q' = min(Q, longest sequence)`. At M2-2.7B and Q = 256 the two state
//! buffers are 168 MB each (docs/BACKWARD-SSD.md §6).

use rayon::prelude::*;
use ssm_core::mamba2::{DSkip, SsdParams};
use ssm_core::mamba2_grad::{dt_grad_factor_f32, silu_grad_f32, validate_grad_inputs};
use ssm_core::math::silu_f32;
use ssm_core::planted::{self, Bug};
use ssm_core::{Element, Result, SsdGrads, SsmError};

use crate::cpu::chunk_cumsum::ChunkScalars;
use crate::cpu::linalg::{dot, vec_mat_acc};
use crate::cpu::plan::{split_lengths_mut, Chunk, ChunkPlan};
use crate::cpu::state_passing::{pass_states, transpose_blocks};
use crate::cpu::tiles::TileView;
use crate::cpu::{checked_product, chunk_scalars, stage_a, StageA};

pub mod tolerance;

/// The chunked backward with chunk length `chunk_size` (any value >= 1). Gradients
/// of tensor inputs come back in `T`, of parameters and initial states in f32.
pub fn ssd_backward_chunked<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    chunk_size: usize,
) -> Result<SsdGrads<T, f32>> {
    let layout = validate_grad_inputs(p, d_out, d_final_states)?;
    if chunk_size == 0 {
        return Err(SsmError::Dimension {
            arg: "chunk_size",
            reason: "must be at least 1".into(),
        });
    }
    let dims = p.dims;
    let (heads, head_dim, d_state, groups) = (dims.heads, dims.head_dim, dims.d_state, dims.groups);
    let plan = ChunkPlan::new(&dims, p.cu_seqlens, chunk_size);
    let tokens = dims.batch * dims.seqlen;
    let head_len = head_dim * d_state;
    let state_len = checked_product("d_state", &[heads, head_dim, d_state])?;
    let all_chunk_states = checked_product("chunk_size", &[plan.chunks.len(), state_len])?;
    checked_product("chunk_size", &[plan.max_chunk_len, plan.max_chunk_len, 3])?;
    let max_len = plan.max_chunk_len;

    // Stage A: dt', s and each chunk's own state, exactly as the forward.
    let StageA {
        dt,
        log2_cumsum,
        mut states,
    } = stage_a(p, &plan, tokens, state_len, all_chunk_states);
    let scalars = chunk_scalars(&plan, heads, &dt, &log2_cumsum);

    // Stage B: `states[c]` becomes the (H, N, P) state entering chunk c.
    for_each_seq_head(
        &plan,
        heads,
        head_len,
        &mut states,
        |seq_head, h, chunks, slots| {
            let mut running = vec![0f32; head_len];
            if let Some(s0) = p.initial_states {
                transpose_blocks(
                    &s0[seq_head * head_len..(seq_head + 1) * head_len],
                    &mut running,
                    head_dim,
                    d_state,
                );
            }
            pass_states(
                slots,
                scalars[chunks].iter().map(|s| s.last(h)),
                &mut running,
            );
            None
        },
    );

    // Stage C: each chunk's own gradient of the state entering it,
    // `sum_i exp2(s_i) C_i dy_i^T`, (H, N, P).
    let mut grad_states = vec![0f32; all_chunk_states];
    {
        let tasks: Vec<_> = plan
            .chunks
            .iter()
            .zip(&scalars)
            .zip(grad_states.chunks_exact_mut(state_len))
            .collect();
        tasks.into_par_iter().for_each_init(
            || DstateScratch::new(max_len, head_dim, d_state),
            |scratch, ((chunk, scalars), out)| {
                chunk_dstates(p, d_out, chunk, scalars, scratch, out);
            },
        );
    }

    // Stage D: reverse state passing. Walking a sequence's chunks last to first,
    // `pass_states` turns slot c into the gradient of the state leaving chunk c
    // (`G_c`) and leaves the gradient of the initial state in `running`.
    let mut d_initial = vec![0f32; layout.num_seqs * state_len];
    let d_init_rows = for_each_seq_head(
        &plan,
        heads,
        head_len,
        &mut grad_states,
        |seq_head, h, chunks, slots| {
            let mut running = vec![0f32; head_len];
            if let Some(ds) = d_final_states {
                transpose_blocks(
                    &ds[seq_head * head_len..(seq_head + 1) * head_len],
                    &mut running,
                    head_dim,
                    d_state,
                );
            }
            slots.reverse();
            pass_states(
                slots,
                scalars[chunks].iter().rev().map(|s| s.last(h)),
                &mut running,
            );
            Some(running)
        },
    );
    for (seq_head, running) in d_init_rows {
        if planted::active(Bug::SsdBwdInitialStateGradDropped) {
            break;
        }
        let dst = &mut d_initial[seq_head * head_len..(seq_head + 1) * head_len];
        transpose_blocks(&running, dst, d_state, head_dim);
    }

    // Stage E: every gradient of every chunk, with per-chunk partial reductions.
    let mut dx = vec![T::default(); tokens * heads * head_dim];
    let mut dz = vec![T::default(); if p.z.is_some() { dx.len() } else { 0 }];
    let mut ddt = vec![T::default(); tokens * heads];
    let mut db = vec![T::default(); tokens * groups * d_state];
    let mut dc = vec![T::default(); tokens * groups * d_state];
    let partial_len = heads * (2 + head_dim);
    let mut partials = vec![0f32; plan.chunks.len() * partial_len];
    {
        let lens = |w: usize| plan.chunks.iter().map(move |c| c.len * w);
        let z_lens = plan.chunks.iter().map(|c| {
            if p.z.is_some() {
                c.len * heads * head_dim
            } else {
                0
            }
        });
        let tasks: Vec<_> = plan
            .chunks
            .iter()
            .zip(&scalars)
            .zip(
                states
                    .chunks_exact(state_len)
                    .zip(grad_states.chunks_exact(state_len)),
            )
            .zip(split_lengths_mut(&mut dx, lens(heads * head_dim)))
            .zip(split_lengths_mut(&mut dz, z_lens))
            .zip(split_lengths_mut(&mut ddt, lens(heads)))
            .zip(split_lengths_mut(&mut db, lens(groups * d_state)))
            .zip(split_lengths_mut(&mut dc, lens(groups * d_state)))
            .zip(partials.chunks_exact_mut(partial_len))
            .map(
                |((((((((chunk, sc), (s_in, g_end)), dx), dz), ddt), db), dc), part)| ChunkTask {
                    chunk,
                    scalars: sc,
                    entering: s_in,
                    leaving_grad: g_end,
                    out: ChunkGrads {
                        dx,
                        dz,
                        ddt,
                        db,
                        dc,
                        partials: part,
                    },
                },
            )
            .collect();
        tasks.into_par_iter().for_each_init(
            || BackScratch::new(max_len, head_dim, d_state),
            |scratch, task| {
                if planted::active(Bug::SsdBwdLastPartialChunkSkipped)
                    && task.chunk.len < chunk_size
                {
                    return;
                }
                chunk_backward(p, d_out, task, scratch)
            },
        );
    }

    // Stage F: the parameter gradients, summed over chunks in order.
    let mut da = vec![0f32; heads];
    let mut ddt_bias = vec![0f32; heads];
    let mut dd_hp = vec![0f32; heads * head_dim];
    for part in partials.chunks_exact(partial_len) {
        let (a, rest) = part.split_at(heads);
        let (bias, d) = rest.split_at(heads);
        add(&mut da, a);
        add(&mut ddt_bias, bias);
        add(&mut dd_hp, d);
    }
    let dd = p.d.map(|d| match d {
        DSkip::PerHead(_) => dd_hp
            .chunks_exact(head_dim)
            .map(|row| row.iter().sum())
            .collect(),
        DSkip::PerHeadDim(_) => dd_hp,
    });

    Ok(SsdGrads {
        dx,
        ddt,
        da,
        db,
        dc,
        dd,
        dz: p.z.map(|_| dz),
        ddt_bias: p.dt_bias.map(|_| ddt_bias),
        dinitial_states: p.initial_states.map(|_| d_initial),
    })
}

fn add(acc: &mut [f32], v: &[f32]) {
    for (a, v) in acc.iter_mut().zip(v) {
        *a += v;
    }
}

/// Run `f(seq_head, h, chunk range, per-chunk (N, P) slots of head h)` for every
/// (sequence, head) in parallel; returns the `Some` results with their `seq_head`.
/// Each chunk's `(H, N, P)` buffer is handed out one head at a time: tasks are
/// built in (sequence, head) order, so chunk c's iterator yields head h to the
/// task of head h of c's sequence.
fn for_each_seq_head<F>(
    plan: &ChunkPlan,
    heads: usize,
    head_len: usize,
    buf: &mut [f32],
    f: F,
) -> Vec<(usize, Vec<f32>)>
where
    F: Fn(usize, usize, std::ops::Range<usize>, &mut [&mut [f32]]) -> Option<Vec<f32>> + Sync,
{
    let state_len = heads * head_len;
    let mut heads_of_chunk: Vec<_> = buf
        .chunks_exact_mut(state_len)
        .map(|s| s.chunks_exact_mut(head_len))
        .collect();
    let mut tasks = Vec::with_capacity(plan.sequences.len() * heads);
    for (seq_index, seq) in plan.sequences.iter().enumerate() {
        for h in 0..heads {
            let slots: Vec<&mut [f32]> = heads_of_chunk[seq.chunks.clone()]
                .iter_mut()
                .map(|it| it.next().expect("one slice per head"))
                .collect();
            tasks.push((seq_index * heads + h, h, seq.chunks.clone(), slots));
        }
    }
    tasks
        .into_par_iter()
        .filter_map(|(seq_head, h, chunks, mut slots)| {
            f(seq_head, h, chunks, &mut slots).map(|r| (seq_head, r))
        })
        .collect()
}

/// Scratch of stage C.
struct DstateScratch {
    c_tile: Vec<f32>,
    dy: Vec<f32>,
    /// `(N, len)`: `C^T` scaled by `exp2(s_i)`.
    weighted_ct: Vec<f32>,
    z_tile: Vec<f32>,
}

impl DstateScratch {
    fn new(max_len: usize, head_dim: usize, d_state: usize) -> Self {
        DstateScratch {
            c_tile: vec![0.0; max_len * d_state],
            dy: vec![0.0; max_len * head_dim],
            weighted_ct: vec![0.0; d_state * max_len],
            z_tile: vec![0.0; max_len * head_dim],
        }
    }
}

/// Load `dy = d_out * silu(z)` (or `d_out` without z) of one head of one chunk
/// into `dy`, and `z` into `z_tile`.
fn load_dy<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    view: TileView,
    dy: &mut [f32],
    z_tile: &mut [f32],
) {
    view.load(d_out, dy);
    if let Some(z) = p.z {
        view.load(z, z_tile);
        let n = view.rows * view.cols;
        for (g, &z) in dy[..n].iter_mut().zip(&z_tile[..n]) {
            *g *= silu_f32(z);
        }
    }
}

fn chunk_dstates<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    chunk: &Chunk,
    scalars: &ChunkScalars<'_>,
    scratch: &mut DstateScratch,
    out: &mut [f32],
) {
    let dims = p.dims;
    let (head_dim, d_state, len) = (dims.head_dim, dims.d_state, chunk.len);
    let heads_per_group = dims.heads / dims.groups;
    let head_len = head_dim * d_state;
    let c_tile = &mut scratch.c_tile[..len * d_state];
    let wct = &mut scratch.weighted_ct[..d_state * len];
    for g in 0..dims.groups {
        TileView::group(chunk.token_start, len, dims.groups, d_state, g).load(p.c, c_tile);
        for h in g * heads_per_group..(g + 1) * heads_per_group {
            let view = TileView::head(chunk.token_start, len, dims.heads, head_dim, h);
            load_dy(p, d_out, view, &mut scratch.dy, &mut scratch.z_tile);
            let (_, s) = scalars.head(h);
            for (i, c_row) in c_tile.chunks_exact(d_state).enumerate() {
                let w = s[i].exp2();
                for (n, &c) in c_row.iter().enumerate() {
                    wct[n * len + i] = c * w;
                }
            }
            let dst = &mut out[h * head_len..(h + 1) * head_len];
            dst.fill(0.0);
            for (row, wc_n) in dst.chunks_exact_mut(head_dim).zip(wct.chunks_exact(len)) {
                vec_mat_acc(wc_n, &scratch.dy[..len * head_dim], head_dim, row);
            }
        }
    }
}

/// One chunk's inputs and outputs in stage E.
struct ChunkTask<'a, T> {
    chunk: &'a Chunk,
    scalars: &'a ChunkScalars<'a>,
    /// `(H, N, P)`: the forward state entering the chunk.
    entering: &'a [f32],
    /// `(H, N, P)`: the gradient of the state leaving it.
    leaving_grad: &'a [f32],
    out: ChunkGrads<'a, T>,
}

/// The chunk's slices of the outputs (token-major) and its partial reductions
/// `[dA (H), d dt_bias (H), dD (H, P)]`.
struct ChunkGrads<'a, T> {
    dx: &'a mut [T],
    dz: &'a mut [T],
    ddt: &'a mut [T],
    db: &'a mut [T],
    dc: &'a mut [T],
    partials: &'a mut [f32],
}

/// Per-thread scratch of stage E, sized for the longest chunk.
struct BackScratch {
    b_tile: Vec<f32>,
    c_tile: Vec<f32>,
    x_tile: Vec<f32>,
    z_tile: Vec<f32>,
    dy: Vec<f32>,
    /// `(len, len)`, lower triangles: `C_i.B_j`, `E_ij dt_j (dy_i.x_j)`, `E_ij`.
    cb: Vec<f32>,
    t: Vec<f32>,
    e: Vec<f32>,
    /// `(len, P)`: `S C_i` (the entering state read by `C_i`), then `G B_j`.
    sc: Vec<f32>,
    gb: Vec<f32>,
    /// `(len, P)`: `dx`; `(len, N)`: the group's `dB`, `dC` (summed over its heads).
    dx: Vec<f32>,
    db: Vec<f32>,
    dc: Vec<f32>,
    /// `(len)`: direct `d dt'`, the log-decay gradients `da`, a column of weights.
    ddt: Vec<f32>,
    ds: Vec<f32>,
    col: Vec<f32>,
    d_row: Vec<f32>,
}

impl BackScratch {
    fn new(max_len: usize, head_dim: usize, d_state: usize) -> Self {
        let (lp, ln, ll) = (max_len * head_dim, max_len * d_state, max_len * max_len);
        BackScratch {
            b_tile: vec![0.0; ln],
            c_tile: vec![0.0; ln],
            x_tile: vec![0.0; lp],
            z_tile: vec![0.0; lp],
            dy: vec![0.0; lp],
            cb: vec![0.0; ll],
            t: vec![0.0; ll],
            e: vec![0.0; ll],
            sc: vec![0.0; lp],
            gb: vec![0.0; lp],
            dx: vec![0.0; lp],
            db: vec![0.0; ln],
            dc: vec![0.0; ln],
            ddt: vec![0.0; max_len],
            ds: vec![0.0; max_len],
            col: vec![0.0; max_len],
            d_row: vec![0.0; head_dim],
        }
    }
}

/// Stage E for one chunk (module docs).
// Pairs (i, j) index several tiles at once; index loops read as the math.
#[allow(clippy::needless_range_loop)]
fn chunk_backward<T: Element>(
    p: &SsdParams<'_, T>,
    d_out: &[T],
    task: ChunkTask<'_, T>,
    s: &mut BackScratch,
) {
    let dims = p.dims;
    let (heads, head_dim, d_state) = (dims.heads, dims.head_dim, dims.d_state);
    let heads_per_group = heads / dims.groups;
    let head_len = head_dim * d_state;
    let ChunkTask {
        chunk,
        scalars,
        entering,
        leaving_grad,
        out,
    } = task;
    let len = chunk.len;
    let (da_part, rest) = out.partials.split_at_mut(heads);
    let (dbias_part, dd_part) = rest.split_at_mut(heads);
    let (lp, ln) = (len * head_dim, len * d_state);

    for g in 0..dims.groups {
        let group_tile = TileView::group(chunk.token_start, len, dims.groups, d_state, g);
        group_tile.load(p.b, &mut s.b_tile);
        group_tile.load(p.c, &mut s.c_tile);
        let (b_tile, c_tile) = (&s.b_tile[..ln], &s.c_tile[..ln]);
        for i in 0..len {
            for j in 0..=i {
                s.cb[i * len + j] = dot(
                    &c_tile[i * d_state..(i + 1) * d_state],
                    &b_tile[j * d_state..(j + 1) * d_state],
                );
            }
        }
        s.db[..ln].fill(0.0);
        s.dc[..ln].fill(0.0);
        for h in g * heads_per_group..(g + 1) * heads_per_group {
            let view = TileView::head(chunk.token_start, len, heads, head_dim, h);
            view.load(p.x, &mut s.x_tile);
            load_dy(p, d_out, view, &mut s.dy, &mut s.z_tile);
            let x_tile = &s.x_tile[..lp];
            let dy = &s.dy[..lp];
            let (dt, cum) = scalars.head(h);
            let state = &entering[h * head_len..(h + 1) * head_len];
            let grad = &leaving_grad[h * head_len..(h + 1) * head_len];
            let a = p.a[h];
            let last = cum[len - 1];
            match &p.d {
                Some(d) => {
                    for (pi, v) in s.d_row.iter_mut().enumerate() {
                        *v = d.get(head_dim, h, pi);
                    }
                }
                None => s.d_row.fill(0.0),
            }

            // Decays (mask first), S C_i and G B_j.
            for i in 0..len {
                for j in 0..=i {
                    s.e[i * len + j] = (cum[i] - cum[j]).exp2();
                }
                if planted::active(Bug::SsdBwdCausalMask) {
                    s.e[i * len + i] = 0.0;
                }
            }
            let sc = &mut s.sc[..lp];
            let gb = &mut s.gb[..lp];
            sc.fill(0.0);
            gb.fill(0.0);
            for i in 0..len {
                let row = i * head_dim..(i + 1) * head_dim;
                vec_mat_acc(
                    &c_tile[i * d_state..(i + 1) * d_state],
                    state,
                    head_dim,
                    &mut sc[row.clone()],
                );
                vec_mat_acc(
                    &b_tile[i * d_state..(i + 1) * d_state],
                    grad,
                    head_dim,
                    &mut gb[row],
                );
            }

            // The gate: dz needs the forward's pre-gate output y, recomputed.
            if p.z.is_some() {
                let y = &mut s.dx[..lp]; // dx is free until below: use it for y
                for i in 0..len {
                    let y_i = &mut y[i * head_dim..(i + 1) * head_dim];
                    let w = cum[i].exp2();
                    for (pi, v) in y_i.iter_mut().enumerate() {
                        *v = w * sc[i * head_dim + pi];
                    }
                    for j in 0..=i {
                        s.col[j] = s.cb[i * len + j] * s.e[i * len + j] * dt[j];
                    }
                    vec_mat_acc(&s.col[..=i], x_tile, head_dim, y_i);
                }
                let out_z = &mut out.dz[..];
                for i in 0..len {
                    let g_row = TileView::head(chunk.token_start + i, 1, heads, head_dim, h).first;
                    for pi in 0..head_dim {
                        let k = i * head_dim + pi;
                        let yv = y[k] + s.d_row[pi] * x_tile[k];
                        let gout = d_out[g_row + pi].to_f32();
                        let zv = s.z_tile[k];
                        out_z[(i * heads + h) * head_dim + pi] =
                            T::from_f32(gout * yv * silu_grad_f32(zv));
                    }
                }
            }

            // T_ij = E_ij dt_j (dy_i.x_j) for j <= i, the direct d dt', and the
            // log-decay gradients da_k. A segment sum's gradient belongs to every a_k
            // in the segment, so each da_k is summed from the terms whose segment holds
            // k (row prefixes, suffixes), never as the +w/-w differences of cumulative
            // sums, which leave f32 residues of size |w| in a result that may be tiny.
            s.ddt[..len].fill(0.0);
            let da = &mut s.ds[..len];
            da.fill(0.0);
            for i in 0..len {
                let dy_i = &dy[i * head_dim..(i + 1) * head_dim];
                // Pair (i, j): w_ij = (C_i.B_j) E_ij dt_j (dy_i.x_j) reaches a_k for
                // j < k <= i: da_k += sum_{j<k} w_ij, a running prefix of row i.
                let mut prefix = 0f32;
                for j in 0..=i {
                    let gx = dot(dy_i, &x_tile[j * head_dim..(j + 1) * head_dim]);
                    let e_gx = s.e[i * len + j] * gx;
                    let cb = s.cb[i * len + j];
                    s.t[i * len + j] = e_gx * dt[j];
                    s.ddt[j] += cb * e_gx;
                    if j < i {
                        prefix += cb * e_gx * dt[j];
                        da[j + 1] += prefix;
                    }
                }
            }
            // The entering state read at i, exp2(s_i) dy_i.(S C_i), reaches a_k for
            // k <= i: suffix sums.
            let mut suffix = 0f32;
            for k in (0..len).rev() {
                let row = k * head_dim..(k + 1) * head_dim;
                suffix += cum[k].exp2() * dot(&dy[row.clone()], &sc[row]);
                da[k] += suffix;
            }
            // The leaving state: its carried part exp2(q) <G, S> reaches every a_k,
            // token j's part exp2(q - s_j) dt_j x_j.G B_j the a_k with j < k.
            let carried = last.exp2() * dot(grad, state);
            let mut prefix = 0f32;
            for j in 0..len {
                let decay = (last - cum[j]).exp2();
                let row = j * head_dim..(j + 1) * head_dim;
                let xgb = dot(&x_tile[row.clone()], &gb[row]);
                s.ddt[j] += decay * xgb;
                da[j] += prefix + carried;
                prefix += decay * dt[j] * xgb;
            }

            // dx_j = D dy_j + sum_{i>=j} (C_i.B_j) E_ij dt_j dy_i + exp2(q - s_j) dt_j G B_j.
            let dxs = &mut s.dx[..lp];
            for j in 0..len {
                let dx_j = &mut dxs[j * head_dim..(j + 1) * head_dim];
                let decay = (last - cum[j]).exp2() * dt[j];
                for pi in 0..head_dim {
                    dx_j[pi] = s.d_row[pi] * dy[j * head_dim + pi] + decay * gb[j * head_dim + pi];
                }
                for i in j..len {
                    s.col[i] = s.cb[i * len + j] * s.e[i * len + j] * dt[j];
                }
                vec_mat_acc(&s.col[j..len], &dy[j * head_dim..], head_dim, dx_j);
            }
            // dC_i += exp2(s_i) S^T dy_i + sum_{j<=i} T_ij B_j;
            // dB_j += sum_{i>=j} T_ij C_i + exp2(q - s_j) dt_j G^T x_j.
            for i in 0..len {
                let dc_i = &mut s.dc[i * d_state..(i + 1) * d_state];
                let w = cum[i].exp2();
                let dy_i = &dy[i * head_dim..(i + 1) * head_dim];
                for (n, v) in dc_i.iter_mut().enumerate() {
                    *v += w * dot(&state[n * head_dim..(n + 1) * head_dim], dy_i);
                }
                vec_mat_acc(&s.t[i * len..i * len + i + 1], b_tile, d_state, dc_i);
            }
            for j in 0..len {
                let db_j = &mut s.db[j * d_state..(j + 1) * d_state];
                let decay = (last - cum[j]).exp2() * dt[j];
                let x_j = &x_tile[j * head_dim..(j + 1) * head_dim];
                for (n, v) in db_j.iter_mut().enumerate() {
                    *v += decay * dot(&grad[n * head_dim..(n + 1) * head_dim], x_j);
                }
                for i in j..len {
                    s.col[i] = s.t[i * len + j];
                }
                vec_mat_acc(&s.col[j..len], &c_tile[j * d_state..], d_state, db_j);
            }

            // The dt chain and the partial reductions.
            let bias = p.dt_bias.map_or(0.0, |b| b[h]);
            let limit = if planted::active(Bug::SsdBwdClampGradLeaked) {
                (f32::NEG_INFINITY, f32::INFINITY)
            } else {
                p.dt_limit
            };
            let decay_sign = if planted::active(Bug::SsdBwdDecaySign) {
                -1.0
            } else {
                1.0
            };
            let mut da_h = 0f32;
            let mut dbias_h = 0f32;
            for k in (0..len).rev() {
                let d_dt_prime = s.ddt[k] + decay_sign * a * s.ds[k];
                da_h += dt[k] * s.ds[k];
                let raw = p.dt[(chunk.token_start + k) * heads + h].to_f32();
                let d_raw = d_dt_prime * dt_grad_factor_f32(raw, bias, p.dt_softplus, limit);
                dbias_h += d_raw;
                out.ddt[k * heads + h] = T::from_f32(d_raw);
            }
            da_part[h] = da_h;
            dbias_part[h] = if planted::active(Bug::SsdBwdDtBiasDropped) {
                0.0
            } else {
                dbias_h
            };
            let dd_h = &mut dd_part[h * head_dim..(h + 1) * head_dim];
            dd_h.fill(0.0);
            let d_rows = if planted::active(Bug::SsdBwdDroppedD) {
                0
            } else {
                len
            };
            for (dy_i, x_i) in dy
                .chunks_exact(head_dim)
                .zip(x_tile.chunks_exact(head_dim))
                .take(d_rows)
            {
                for ((acc, &g), &x) in dd_h.iter_mut().zip(dy_i).zip(x_i) {
                    *acc += g * x;
                }
            }
            for (i, dx_i) in dxs.chunks_exact(head_dim).enumerate() {
                let dst = &mut out.dx[(i * heads + h) * head_dim..][..head_dim];
                for (d, &v) in dst.iter_mut().zip(dx_i) {
                    *d = T::from_f32(v);
                }
            }
        }
        // The group's dB, dC, summed over its heads in index order.
        let groups = dims.groups;
        for i in 0..len {
            let at = (i * groups + g) * d_state;
            for n in 0..d_state {
                out.db[at + n] = T::from_f32(s.db[i * d_state + n]);
                out.dc[at + n] = T::from_f32(s.dc[i * d_state + n]);
            }
        }
    }
}
