//! The f32 decode step on the CPU (docs/DESIGN.md §1.3): one token per batch row, the
//! state cache `(cache_rows, D_in, N)` updated in place.
//!
//! Same arithmetic as one step of the scan in [`crate::cpu`] (decay
//! `exp2(dt * (A * log2 e))`, state update, sequential sum over N, skip, gate),
//! so a token decoded after a prefill continues the scan exactly as the scan
//! itself would. Batch rows are independent and run in parallel; each owns its
//! cache row (validation rejects repeated rows), padding rows (negative index)
//! output zero and touch nothing.

use rayon::prelude::*;
use ssm_core::decode::{cache_row, Mamba1StepParams};
use ssm_core::math::{scan_dt_f32, silu_f32};
use ssm_core::{Element, Result, StepOutput};

use crate::cpu::exp2::exp2;

/// One Mamba-1 decode step on the CPU: reads `p`, updates the state cache in
/// place (`(cache_rows, D_in, N)` f32) and returns the output `(b, D_in)` in `T`.
///
/// Errors: any shape of `p` or `state` that [`Mamba1StepParams::validate`]
/// rejects, including duplicate or out-of-range `state_batch_indices`.
pub fn decode_step_cpu<T: Element>(
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    let (d_inner, n_state) = (p.d_inner, p.d_state);
    let channel_state = d_inner * n_state;

    // Hand each batch row its own cache row: indices are unique (validated), so
    // every `take` finds the row still there.
    let mut cache: Vec<Option<&mut [f32]>> =
        state.chunks_exact_mut(channel_state).map(Some).collect();
    let rows: Vec<Option<&mut [f32]>> = (0..p.batch)
        .map(|i| {
            cache_row(p.state_batch_indices, i)
                .or_else(|| {
                    ssm_core::planted::active(ssm_core::planted::Bug::PaddingRowWritten)
                        .then(|| p.cache_rows - 1)
                })
                .and_then(|r| cache[r].take())
        })
        .collect();

    let mut out = vec![T::from_f32(0.0); p.batch * d_inner];
    out.par_chunks_mut(d_inner)
        .zip(rows)
        .enumerate()
        .for_each(|(i, (out, row))| {
            if let Some(row) = row {
                step_row(p, i, row, out);
            }
        });
    Ok(StepOutput { out })
}

/// One token of batch row `i` against its state `(D_in, N)`.
fn step_row<T: Element>(p: &Mamba1StepParams<'_, T>, i: usize, state: &mut [f32], out: &mut [T]) {
    let (d_inner, n_state) = (p.d_inner, p.d_state);
    let channels_per_group = d_inner / p.groups;
    let token = i * d_inner;
    // Scratch for one group's B and C, widened once and shared by its channels.
    let mut b = vec![0.0f32; n_state];
    let mut c = vec![0.0f32; n_state];
    let mut loaded_group = None;

    let channels = state.chunks_exact_mut(n_state).zip(out).enumerate();
    for (d, (h, out)) in channels {
        let g = d / channels_per_group;
        if loaded_group != Some(g) {
            let at = (i * p.groups + g) * n_state;
            for (dst, src) in [(&mut b, p.b), (&mut c, p.c)] {
                for (x, v) in dst.iter_mut().zip(&src[at..at + n_state]) {
                    *x = v.to_f32();
                }
            }
            loaded_group = Some(g);
        }
        let bias = p.dt_bias.map_or(0.0, |bias| bias[d]);
        let dt = scan_dt_f32(p.dt[token + d].to_f32(), bias, p.dt_softplus);
        let x = p.x[token + d].to_f32();
        let dtx = dt * x;
        let a = &p.a[d * n_state..(d + 1) * n_state];
        // Update first (independent per n, so it vectorises), then reduce in
        // sequential n order as the scan does.
        for ((h, &a), &b) in h.iter_mut().zip(a).zip(&b) {
            let decay = exp2(dt * (a * std::f32::consts::LOG2_E));
            *h = decay * *h + dtx * b;
        }
        let mut y = h.iter().zip(&c).fold(0.0f32, |y, (&h, &c)| y + c * h);
        y += p.d.map_or(0.0, |skip| skip[d]) * x;
        if let Some(z) = p.z {
            y *= silu_f32(z[token + d].to_f32());
        }
        *out = T::from_f32(y);
    }
}
