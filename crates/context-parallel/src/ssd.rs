//! The context-parallel Mamba-2 SSD (docs/CONTEXT-PARALLEL.md §5).
//!
//! The pair of a segment per (carried row, head): decay `exp(sum_t dt'_t A_h)`
//! (one scalar), state the `P x N` final state from a zero start.

use crate::comm::Communicator;
use crate::driver::Shapes;
use crate::exchange::sum_in_rank_order;
use crate::family::{entry_points, plain_calls, CpFamily};
use crate::plan::{Plan, Signature};
use crate::{CpError, CpOptions, Segment};
use mamba2_ssd::{ssd_backward, ssd_forward, Backend};
use ssm_core::mamba2::{DSkip, SsdParams};
use ssm_core::mamba2_grad::validate_grad_inputs;
use ssm_core::{ScanOutput, SsdGrads};
use ssm_gpu::DeviceElement;

/// The Mamba-2 SSD as a [`CpFamily`].
pub(crate) struct Mamba2;

impl CpFamily for Mamba2 {
    plain_calls!(SsdParams, SsdGrads, ssd_forward, ssd_backward);

    fn signature<T>(p: &SsdParams<'_, T>, seg: &Segment<'_>) -> Signature {
        let d = p.dims;
        vec![
            2, // the SSD
            d.batch as u64,
            d.heads as u64,
            d.head_dim as u64,
            d.d_state as u64,
            d.groups as u64,
            u64::from(p.dt_bias.is_some()),
            u64::from(p.dt_softplus),
            u64::from(p.dt_limit.0.to_bits()),
            u64::from(p.dt_limit.1.to_bits()),
            match p.d {
                None => 0,
                Some(DSkip::PerHead(_)) => 1,
                Some(DSkip::PerHeadDim(_)) => 2,
            },
            u64::from(p.z.is_some()),
            u64::from(seg.initial_states.is_some()),
            u64::from(seg.cu_seqlens.is_some()),
            u64::from(p.return_final_states),
        ]
    }
    fn shapes<T>(p: &SsdParams<'_, T>) -> Shapes {
        Shapes {
            state_len: p.dims.heads * p.dims.head_dim * p.dims.d_state,
            decays_per_row: p.dims.heads,
        }
    }
    /// `exp(sum_t dt'_t A_h)` over the whole local segment, per carried row and
    /// head (f64 sum, one exp: the exact value the chunked kernels approximate).
    fn segment_decay<T: DeviceElement>(p: &SsdParams<'_, T>, plan: &Plan) -> Vec<f32> {
        let d = p.dims;
        (0..plan.carry_rows)
            .flat_map(|bi| {
                (0..d.heads).map(move |h| {
                    let s: f64 = (0..d.seqlen).map(|t| p.dt_at(bi, t, h)).sum();
                    (s * f64::from(p.a[h])).exp() as f32
                })
            })
            .collect()
    }
    /// The additive pass 2 (`Pass2::AddContribution`): pass 1 ran the head row
    /// from a zero state; add what the entering state `S_in` contributes,
    /// `y_t += exp(s_t) S_in C_t` (`s_t` the log-decay summed from the segment
    /// start through `t`), gated by `silu(z_t)`, over the head piece, and `exp(s)
    /// S_in` to the head piece's final state. f64 sums, one rounding into `T`.
    fn add_entering<T: DeviceElement>(
        p: &SsdParams<'_, T>,
        plan: &Plan,
        out: &mut ScanOutput<T, f32>,
        entering: &[f32],
    ) {
        let d = p.dims;
        let (heads, hd, n, groups, len) = (d.heads, d.head_dim, d.d_state, d.groups, d.seqlen);
        let state = heads * hd * n;
        // The head piece: the whole segment for a plain batch, the first local
        // sequence for varlen.
        let head_len = plan.local_cu.as_ref().map_or(len, |cu| cu[1] as usize);
        for (i, &row) in plan.head_rows.iter().enumerate() {
            let bi = if plan.local_cu.is_some() { 0 } else { row };
            let s0 = &entering[i * state..(i + 1) * state];
            for h in 0..heads {
                let g = d.group_of(h);
                let mut s = 0.0f64;
                for t in 0..head_len {
                    s += p.dt_at(bi, t, h) * f64::from(p.a[h]);
                    let f = s.exp();
                    if f == 0.0 {
                        continue;
                    }
                    let c = &p.c[((bi * len + t) * groups + g) * n..][..n];
                    for q in 0..hd {
                        let sq = &s0[(h * hd + q) * n..][..n];
                        let dot: f64 = sq
                            .iter()
                            .zip(c)
                            .map(|(x, y)| f64::from(*x) * y.to_f64())
                            .sum();
                        let idx = ((bi * len + t) * heads + h) * hd + q;
                        let gate = p.z.map_or(1.0, |z| ssm_core::math::silu(z[idx].to_f64()));
                        out.out[idx] = T::from_f64(out.out[idx].to_f64() + f * dot * gate);
                    }
                }
                if let Some(fs) = out.final_states.as_mut() {
                    let decay = s.exp();
                    let base = row * state + h * hd * n;
                    for (k, x) in fs[base..base + hd * n].iter_mut().enumerate() {
                        *x = (f64::from(*x) + decay * f64::from(s0[h * hd * n + k])) as f32;
                    }
                }
            }
        }
    }
    fn validate<T: DeviceElement>(p: &SsdParams<'_, T>) -> Result<(), CpError> {
        p.validate().map(drop).map_err(CpError::from)
    }
    fn validate_d_out<T: DeviceElement>(p: &SsdParams<'_, T>, d_out: &[T]) -> Result<(), CpError> {
        validate_grad_inputs(p, d_out, None)
            .map(drop)
            .map_err(CpError::from)
    }
    fn finish_grads<T: DeviceElement>(
        local: &SsdParams<'_, T>,
        g: Option<SsdGrads<T, f32>>,
        dinitial: Option<Vec<f32>>,
        comm: &dyn Communicator,
    ) -> Result<SsdGrads<T, f32>, CpError> {
        // Parameter gradients: this rank's partial sums, then the sum over ranks.
        let heads = local.dims.heads;
        let d_len = local.d.map_or(0, |d| d.data().len());
        let bias_len = if local.dt_bias.is_some() { heads } else { 0 };
        let mut partial = vec![0.0f32; heads + d_len + bias_len];
        if let Some(g) = &g {
            partial[..heads].copy_from_slice(&g.da);
            if let Some(dd) = &g.dd {
                partial[heads..heads + d_len].copy_from_slice(dd);
            }
            if let Some(db) = &g.ddt_bias {
                partial[heads + d_len..].copy_from_slice(db);
            }
        }
        let total = sum_in_rank_order(comm, &partial)?;
        let da = total[..heads].to_vec();
        let dd = local.d.map(|_| total[heads..heads + d_len].to_vec());
        let ddt_bias = local.dt_bias.map(|_| total[heads + d_len..].to_vec());
        Ok(match g {
            Some(g) => SsdGrads {
                da,
                dd,
                ddt_bias,
                dinitial_states: dinitial,
                ..g
            },
            None => SsdGrads {
                dx: Vec::new(),
                ddt: Vec::new(),
                db: Vec::new(),
                dc: Vec::new(),
                dz: local.z.map(|_| Vec::new()),
                da,
                dd,
                ddt_bias,
                dinitial_states: dinitial,
            },
        })
    }
}

entry_points! {
    Mamba2, SsdParams, SsdGrads;
    /// The SSD forward of this rank's segment of a longer sequence.
    ///
    /// `local` holds this rank's tokens (`dims.seqlen` = its length, `x, dt, B, C,
    /// z` sliced along L; `cu_seqlens` and `initial_states` `None`: the whole
    /// problem's are in `seg`). Returns `out` for the local tokens and, when
    /// `local.return_final_states`, the final states of every sequence of the
    /// whole problem on every rank. Every rank must call this with the same
    /// problem (checked: a mismatch is an error on every rank).
    fn ssd_forward_cp;
    /// The SSD backward of this rank's segment.
    ///
    /// `d_out` is this rank's `(b, L_r, H, P)` slice; `d_final_states` the whole
    /// problem's `(b or num_seqs, H, P, N)` (same on every rank; only with
    /// `return_final_states`). Returns the local tokens' gradients (`dx, ddt, dB,
    /// dC, dz`), the parameter gradients of the whole problem (`dA, dD, ddt_bias`,
    /// summed over ranks in rank order, the same on every rank) and the
    /// initial-state gradient of every sequence.
    fn ssd_backward_cp;
}
