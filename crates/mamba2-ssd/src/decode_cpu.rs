//! The f32 decode step on the CPU (docs/DESIGN.md §1.3): one token per batch row, the
//! `(cache_rows, H, P, N)` state cache updated in place,
//!
//! ```text
//! S <- exp(dt' A) S + dt' x B^T,   y = S C + D x,   out = y * silu(z)
//! ```
//!
//! The decay is one `exp` of one step (base e, as mamba_ssm's
//! `selective_state_update`); no cumulative sum is involved, so the tolerance
//! model's `K` is 0. Rows run in parallel; `state_batch_indices` is validated to
//! name distinct cache rows, so every task owns its row.

use rayon::prelude::*;
use ssm_core::decode::{cache_row, Mamba2StepParams};
use ssm_core::math::{silu_f32, ssd_dt_f32};
use ssm_core::{Element, Result, StepOutput};

use crate::cpu::linalg::dot;

/// One Mamba-2 decode step on the CPU: reads `p`, updates the state cache in
/// place (`(cache_rows, H, P, N)` f32) and returns the output `(b, H, P)` in `T`.
///
/// Errors: any shape of `p` or `state` that [`Mamba2StepParams::validate`]
/// rejects, including duplicate or out-of-range `state_batch_indices`.
pub fn decode_step_cpu<T: Element>(
    p: &Mamba2StepParams<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    let row_len = p.heads * p.head_dim * p.d_state;
    let out_len = p.heads * p.head_dim;
    // Hand every batch row the cache row it owns (None for padding).
    let mut cache_rows: Vec<Option<&mut [f32]>> =
        state.chunks_exact_mut(row_len).map(Some).collect();
    let tasks: Vec<_> = (0..p.batch)
        .map(|i| {
            let row = cache_row(p.state_batch_indices, i).map(|r| {
                cache_rows[r]
                    .take()
                    .expect("validated: cache rows are distinct")
            });
            (i, row)
        })
        .collect();
    let mut out = vec![T::default(); p.batch * out_len];
    out.par_chunks_mut(out_len).zip(tasks).for_each_init(
        || BcRows::new(p.d_state),
        |bc, (out_row, (i, cache))| {
            // Padding rows keep their zero output and touch no state.
            if let Some(cache) = cache {
                step_row(p, i, cache, bc, out_row);
            }
        },
    );
    Ok(StepOutput { out })
}

/// B and C of one (row, group), widened to f32 once and shared by the group's heads.
struct BcRows {
    group: Option<usize>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl BcRows {
    fn new(d_state: usize) -> Self {
        BcRows {
            group: None,
            b: vec![0.0; d_state],
            c: vec![0.0; d_state],
        }
    }

    fn load<T: Element>(&mut self, p: &Mamba2StepParams<'_, T>, i: usize, g: usize) {
        if self.group == Some(g) {
            return;
        }
        let start = (i * p.groups + g) * p.d_state;
        for (dst, src) in [(&mut self.b, p.b), (&mut self.c, p.c)] {
            for (d, s) in dst.iter_mut().zip(&src[start..start + p.d_state]) {
                *d = s.to_f32();
            }
        }
        self.group = Some(g);
    }
}

/// One batch row `i`: update its `(H, P, N)` state and write its `(H, P)` output.
fn step_row<T: Element>(
    p: &Mamba2StepParams<'_, T>,
    i: usize,
    state: &mut [f32],
    bc: &mut BcRows,
    out: &mut [T],
) {
    let (heads, head_dim, d_state) = (p.heads, p.head_dim, p.d_state);
    let heads_per_group = heads / p.groups;
    bc.group = None;
    for (h, (s_h, out_h)) in state
        .chunks_exact_mut(head_dim * d_state)
        .zip(out.chunks_exact_mut(head_dim))
        .enumerate()
    {
        bc.load(p, i, h / heads_per_group);
        let bias = p.dt_bias.map_or(0.0, |b| b[h]);
        let dt = ssd_dt_f32(
            p.dt[i * heads + h].to_f32(),
            bias,
            p.dt_softplus,
            p.dt_limit,
        );
        let decay = (dt * p.a[h]).exp();
        let first = (i * heads + h) * head_dim;
        for (pi, (s_p, o)) in s_h.chunks_exact_mut(d_state).zip(out_h).enumerate() {
            let x = p.x[first + pi].to_f32();
            let dt_x = dt * x;
            for (s, &b) in s_p.iter_mut().zip(&bc.b) {
                *s = decay * *s + dt_x * b;
            }
            let mut y = dot(s_p, &bc.c);
            if let Some(d) = &p.d {
                y += d.get(head_dim, h, pi) * x;
            }
            if let Some(z) = p.z {
                y *= silu_f32(z[first + pi].to_f32());
            }
            *o = T::from_f32(y);
        }
    }
}
