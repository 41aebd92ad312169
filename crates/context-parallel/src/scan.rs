//! The context-parallel Mamba-1 selective scan (docs/CONTEXT-PARALLEL.md §5).
//!
//! The pair of a segment per (carried row, channel d, state index n): decay
//! `exp(A[d, n] sum_t dt_t)` (elementwise on the N-vector), state the final
//! state from a zero start.

use crate::comm::Communicator;
use crate::driver::Shapes;
use crate::exchange::sum_in_rank_order;
use crate::family::{entry_points, plain_calls, CpFamily};
use crate::plan::{Plan, Signature};
use crate::{CpError, CpOptions, Segment};
use mamba1_scan::{selective_scan, selective_scan_backward, Backend};
use ssm_core::mamba1::{BcInput, SelectiveScanParams};
use ssm_core::math::scan_dt;
use ssm_core::{ScanGradInputs, ScanGrads, ScanOutput};
use ssm_gpu::DeviceElement;

fn bc_word<T>(bc: &BcInput<'_, T>) -> u64 {
    match *bc {
        BcInput::Grouped { groups, .. } => groups as u64,
        BcInput::Constant(_) => 0,
    }
}

/// The Mamba-1 selective scan as a [`CpFamily`].
pub(crate) struct Mamba1;

impl CpFamily for Mamba1 {
    plain_calls!(
        SelectiveScanParams,
        ScanGrads,
        selective_scan,
        selective_scan_backward
    );

    fn signature<T>(p: &SelectiveScanParams<'_, T>, seg: &Segment<'_>) -> Signature {
        let d = p.dims;
        vec![
            1, // the Mamba-1 scan
            d.batch as u64,
            d.d_inner as u64,
            d.d_state as u64,
            bc_word(&p.b),
            bc_word(&p.c),
            u64::from(p.d.is_some()),
            u64::from(p.z.is_some()),
            u64::from(p.delta_bias.is_some()),
            u64::from(p.delta_softplus),
            u64::from(seg.initial_states.is_some()),
            u64::from(seg.cu_seqlens.is_some()),
            u64::from(p.return_final_states),
        ]
    }
    fn shapes<T>(p: &SelectiveScanParams<'_, T>) -> Shapes {
        let n = p.dims.d_inner * p.dims.d_state;
        Shapes {
            state_len: n,
            decays_per_row: n,
        }
    }
    /// `exp(A[d, n] sum_t dt_t)` over the local segment per carried row, channel
    /// and state index: A does not vary in time, so the sum of the log-decays
    /// factors (f64 sum, one exp per element).
    fn segment_decay<T: DeviceElement>(p: &SelectiveScanParams<'_, T>, plan: &Plan) -> Vec<f32> {
        let dims = p.dims;
        let (len, n) = (dims.seqlen, dims.d_state);
        let mut out = Vec::with_capacity(plan.carry_rows * dims.d_inner * n);
        for bi in 0..plan.carry_rows {
            for d in 0..dims.d_inner {
                let bias = p.delta_bias.map_or(0.0, |b| f64::from(b[d]));
                let row = &p.delta[(bi * dims.d_inner + d) * len..][..len];
                let s: f64 = row
                    .iter()
                    .map(|x| scan_dt(x.to_f64(), bias, p.delta_softplus))
                    .sum();
                out.extend((0..n).map(|k| (s * f64::from(p.a[d * n + k])).exp() as f32));
            }
        }
        out
    }
    /// The additive pass 2 (`Pass2::AddContribution`): pass 1 ran the head row
    /// from a zero state; add what the entering state `h_in` contributes,
    /// `y_t += sum_n C_tn exp(A[d, n] sum_{k<=t} dt_k) h_in,n`, gated by
    /// `silu(z_t)`, over the head piece, and the decayed `h_in` to its final
    /// state. One exp per (token, channel, state): as costly as the scan itself.
    fn add_entering<T: DeviceElement>(
        p: &SelectiveScanParams<'_, T>,
        plan: &Plan,
        out: &mut ScanOutput<T, f32>,
        entering: &[f32],
    ) {
        let dims = p.dims;
        let (d_in, n, len) = (dims.d_inner, dims.d_state, dims.seqlen);
        let state = d_in * n;
        let head_len = plan.local_cu.as_ref().map_or(len, |cu| cu[1] as usize);
        let c_at = |bi: usize, d: usize, k: usize, t: usize| -> f64 {
            match p.c {
                BcInput::Grouped { groups, data } => {
                    let g = d / (d_in / groups);
                    data[((bi * groups + g) * n + k) * len + t].to_f64()
                }
                BcInput::Constant(data) => data[d * n + k].to_f64(),
            }
        };
        for (i, &row) in plan.head_rows.iter().enumerate() {
            let bi = if plan.local_cu.is_some() { 0 } else { row };
            let h0 = &entering[i * state..(i + 1) * state];
            for d in 0..d_in {
                let bias = p.delta_bias.map_or(0.0, |b| f64::from(b[d]));
                let a = &p.a[d * n..(d + 1) * n];
                let mut cum = 0.0f64;
                for t in 0..head_len {
                    let idx = (bi * d_in + d) * len + t;
                    cum += scan_dt(p.delta[idx].to_f64(), bias, p.delta_softplus);
                    let y: f64 = (0..n)
                        .map(|k| {
                            c_at(bi, d, k, t)
                                * (f64::from(a[k]) * cum).exp()
                                * f64::from(h0[d * n + k])
                        })
                        .sum();
                    let gate = p.z.map_or(1.0, |z| ssm_core::math::silu(z[idx].to_f64()));
                    out.out[idx] = T::from_f64(out.out[idx].to_f64() + y * gate);
                }
                if let Some(fs) = out.final_states.as_mut() {
                    for k in 0..n {
                        let x = &mut fs[row * state + d * n + k];
                        let decay = (f64::from(a[k]) * cum).exp();
                        *x = (f64::from(*x) + decay * f64::from(h0[d * n + k])) as f32;
                    }
                }
            }
        }
    }
    fn validate<T: DeviceElement>(p: &SelectiveScanParams<'_, T>) -> Result<(), CpError> {
        p.validate()?;
        Ok(())
    }
    fn validate_d_out<T: DeviceElement>(
        p: &SelectiveScanParams<'_, T>,
        d_out: &[T],
    ) -> Result<(), CpError> {
        ScanGradInputs::new(d_out, None).validate(p)?;
        Ok(())
    }
    fn finish_grads<T: DeviceElement>(
        local: &SelectiveScanParams<'_, T>,
        g: Option<ScanGrads<T, f32>>,
        dinitial: Option<Vec<f32>>,
        comm: &dyn Communicator,
    ) -> Result<ScanGrads<T, f32>, CpError> {
        // Parameter gradients (f32) and constant dB/dC (in T, summed in f32): this
        // rank's partials, then the sum over ranks in rank order.
        let dn = local.dims.d_inner * local.dims.d_state;
        let d_in = local.dims.d_inner;
        let b_const = matches!(local.b, BcInput::Constant(_));
        let c_const = matches!(local.c, BcInput::Constant(_));
        let lens = [
            dn,
            if local.d.is_some() { d_in } else { 0 },
            if local.delta_bias.is_some() { d_in } else { 0 },
            if b_const { dn } else { 0 },
            if c_const { dn } else { 0 },
        ];
        let mut offsets = [0usize; 6];
        for i in 0..5 {
            offsets[i + 1] = offsets[i] + lens[i];
        }
        let mut partial = vec![0.0f32; offsets[5]];
        if let Some(g) = &g {
            let widen = |v: &[T]| v.iter().map(|x| x.to_f64() as f32).collect::<Vec<f32>>();
            partial[offsets[0]..offsets[1]].copy_from_slice(&g.da);
            if let Some(dd) = &g.dd {
                partial[offsets[1]..offsets[2]].copy_from_slice(dd);
            }
            if let Some(db) = &g.ddelta_bias {
                partial[offsets[2]..offsets[3]].copy_from_slice(db);
            }
            if b_const {
                partial[offsets[3]..offsets[4]].copy_from_slice(&widen(&g.db));
            }
            if c_const {
                partial[offsets[4]..offsets[5]].copy_from_slice(&widen(&g.dc));
            }
        }
        let total = sum_in_rank_order(comm, &partial)?;
        let part = |i: usize| total[offsets[i]..offsets[i + 1]].to_vec();
        let narrow = |v: Vec<f32>| v.into_iter().map(|x| T::from_f64(f64::from(x))).collect();
        let da = part(0);
        let dd = local.d.map(|_| part(1));
        let ddelta_bias = local.delta_bias.map(|_| part(2));
        let g = g.unwrap_or_else(|| ScanGrads {
            du: Vec::new(),
            ddelta: Vec::new(),
            da: Vec::new(),
            db: Vec::new(),
            dc: Vec::new(),
            dd: None,
            dz: local.z.map(|_| Vec::new()),
            ddelta_bias: None,
            dinitial_states: None,
        });
        // Constant dB/dC: on one rank the local value itself (no rounding trip).
        let one = comm.size() == 1;
        let db = if b_const && !one {
            narrow(part(3))
        } else {
            g.db
        };
        let dc = if c_const && !one {
            narrow(part(4))
        } else {
            g.dc
        };
        let db = if b_const && db.is_empty() {
            narrow(part(3))
        } else {
            db
        };
        let dc = if c_const && dc.is_empty() {
            narrow(part(4))
        } else {
            dc
        };
        Ok(ScanGrads {
            da,
            dd,
            ddelta_bias,
            db,
            dc,
            dinitial_states: dinitial,
            ..g
        })
    }
}

entry_points! {
    Mamba1, SelectiveScanParams, ScanGrads;
    /// The selective-scan forward of this rank's segment of a longer sequence.
    ///
    /// `local` holds this rank's tokens (`dims.seqlen` its length; `u, delta, z`
    /// and grouped `B, C` sliced along L, constant `B, C` whole; `cu_seqlens` and
    /// `initial_states` `None`: the whole problem's are in `seg`). Returns `out`
    /// for the local tokens and, with `return_final_states`, every sequence's
    /// final state on every rank.
    fn scan_forward_cp;
    /// The selective-scan backward of this rank's segment.
    ///
    /// `d_out` is this rank's `(b, D_in, L_r)` slice; `d_final_states` the whole
    /// problem's `(b or num_seqs, D_in, N)`. Returns the local tokens' gradients
    /// (`du, ddelta, dz`, grouped `dB, dC`), the parameter gradients of the whole
    /// problem (`dA, dD, ddelta_bias`, constant `dB, dC`: summed over ranks in
    /// rank order) and the initial-state gradient of every sequence.
    fn scan_backward_cp;
}
