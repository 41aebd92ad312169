//! Check before timing: every case's first call (CUDA kernels, CPU ports, the
//! quadratic form) is compared with the f64 oracle on the case's own inputs, and
//! a case that fails is reported as failed, never timed. The output's own type
//! sets the budget (an f64 output is held to the f32 path's 1e-5).
//!
//! The full oracle of a reference workload is tens of GFLOP of f64 work, so the
//! check runs on sampled rows: for SSD two (batch row, head) pairs (the first and
//! the last, so index arithmetic at both ends of every tensor is covered), for
//! the Mamba-1 scan two (batch row, channel) pairs, each as a one-row problem cut
//! out of the full inputs (with its group's B/C, its D, bias, z and initial state)
//! and run through the oracle; decode steps are cheap and are checked whole
//! (output and every updated state row). Budgets are the tolerance model's
//! (`ssm_core::tolerance`, docs/TOLERANCES.md), with the chunked kernel's `K`
//! computed on the sampled rows.

use ssm_core::mamba2::NO_DT_LIMIT;
use ssm_core::math::ssd_dt;
use ssm_core::tolerance::{compare, max_window_log_decay, rel_l2_budget, state_budget};
use ssm_core::{Element, Result, ScanOutput};
use ssm_telemetry::problem::{Mamba1StepShape, Mamba2StepShape, SkipKind};
use ssm_telemetry::record::Verification;

use crate::inputs::{Mamba1Host, SsdHost, StepHost};

/// The longest window of steps whose decays the CUDA SSD multiplies in f32
/// before rounding (its largest chunk): the tolerance model's `K` window.
const CUDA_SSD_WINDOW: usize = 256;

/// What the oracle said about one sampled row, before the rows are combined.
struct RowCheck {
    got: Vec<f64>,
    want: Vec<f64>,
    got_state: Option<Vec<f64>>,
    want_state: Option<Vec<f64>>,
    log_decay: f64,
}

/// Combine sampled rows into one verdict (errors over the concatenated rows).
fn verdict(rows: Vec<RowCheck>, sampled: String, out_dtype: ssm_core::DType) -> Verification {
    verdict_with_state(rows, sampled, out_dtype, None)
}

/// [`verdict`] with the state budget given (`None`: `state_budget(K)`).
fn verdict_with_state(
    rows: Vec<RowCheck>,
    sampled: String,
    out_dtype: ssm_core::DType,
    state_budget_override: Option<f64>,
) -> Verification {
    let k = rows.iter().map(|r| r.log_decay).fold(0.0, f64::max);
    let cat = |f: &dyn Fn(&RowCheck) -> Option<&Vec<f64>>| -> Option<Vec<f64>> {
        let parts: Option<Vec<&Vec<f64>>> = rows.iter().map(f).collect();
        parts.map(|p| p.into_iter().flatten().copied().collect())
    };
    let got = cat(&|r| Some(&r.got)).unwrap_or_default();
    let want = cat(&|r| Some(&r.want)).unwrap_or_default();
    let out = compare(&got, &want);
    let budget = rel_l2_budget(out_dtype, k);
    let states = cat(&|r| r.want_state.as_ref()).map(|want_s| {
        // A missing kernel state where the oracle has one counts as all non-finite.
        let got_s = cat(&|r| r.got_state.as_ref()).unwrap_or_else(|| vec![f64::NAN; want_s.len()]);
        compare(&got_s, &want_s)
    });
    let s_budget = states
        .as_ref()
        .map(|_| state_budget_override.unwrap_or_else(|| state_budget(k)));
    let passed = out.passes(budget)
        && out.len > 0
        && states
            .as_ref()
            .zip(s_budget)
            .is_none_or(|(c, b)| c.passes(b));
    Verification {
        reference: "f64 oracle (reference/)".into(),
        sampled,
        rel_l2: out.rel_l2,
        max_abs: out.max_abs,
        budget,
        state_rel_l2: states.as_ref().map(|c| c.rel_l2),
        state_budget: s_budget,
        passed: passed && out.non_finite == 0 && states.is_none_or(|c| c.non_finite == 0),
    }
}

/// The sampled (batch row, index) pairs: the first row's first index and the
/// last row's last, so both ends of every tensor are read.
fn corners(batch: usize, n: usize) -> Vec<(usize, usize)> {
    let mut pairs = vec![(0, 0), (batch.saturating_sub(1), n.saturating_sub(1))];
    pairs.dedup();
    pairs
}

/// Check each of the [`corners`] of a `(batch, n)` grid with `row` and combine
/// them into one verdict; `label` names a sampled pair in the verdict's note of
/// what was checked.
fn check_corners(
    batch: usize,
    n: usize,
    out_dtype: ssm_core::DType,
    label: impl Fn(usize, usize) -> String,
    row: impl Fn(usize, usize) -> Result<RowCheck>,
) -> Result<Verification> {
    let pairs = corners(batch, n);
    let rows = pairs
        .iter()
        .map(|&(b, i)| row(b, i))
        .collect::<Result<Vec<_>>>()?;
    let labels: Vec<String> = pairs.iter().map(|&(b, i)| label(b, i)).collect();
    Ok(verdict(rows, labels.join(", "), out_dtype))
}

/// An f32 tensor (a kernel's states) widened to f64 for the comparison.
fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|v| f64::from(*v)).collect()
}

/// The `i`-th run of `width` elements: where one (batch row, index) pair's
/// state or row lies in a tensor that stores them back to back.
fn block(i: usize, width: usize) -> std::ops::Range<usize> {
    i * width..(i + 1) * width
}

/// The initial state `i` (`width` elements) of a one-row problem cut out of a
/// larger one; empty when the problem has no initial states.
fn initial_state(states: &[f32], on: bool, i: usize, width: usize) -> Vec<f32> {
    if on {
        states[block(i, width)].to_vec()
    } else {
        Vec::new()
    }
}

/// Gather `width` contiguous elements at `at(t)` for every `t` in `0..len`.
fn gather<T: Copy>(data: &[T], len: usize, width: usize, at: impl Fn(usize) -> usize) -> Vec<T> {
    (0..len)
        .flat_map(|t| data[at(t)..at(t) + width].iter().copied())
        .collect()
}

// ------------------------------------------------------------------ SSD

/// The one-row SSD problem of (batch row `b`, head `h`) cut out of `host`.
fn ssd_row<T: Element>(host: &SsdHost<T>, b: usize, h: usize) -> SsdHost<T> {
    let s = host.shape;
    let (l, heads, p, n, g) = (s.seqlen, s.heads, s.head_dim, s.d_state, s.groups);
    let grp = h / (heads / g);
    let tok = |t: usize| b * l + t;
    let x_at = |t: usize| (tok(t) * heads + h) * p;
    let bc_at = |t: usize| (tok(t) * g + grp) * n;
    let opt = |on: bool, v: Vec<f32>| if on { v } else { Vec::new() };
    SsdHost {
        shape: ssm_telemetry::problem::SsdShape {
            batch: 1,
            heads: 1,
            groups: 1,
            ..s
        },
        x: gather(&host.x, l, p, x_at),
        dt: (0..l).map(|t| host.dt[tok(t) * heads + h]).collect(),
        a: vec![host.a[h]],
        b: gather(&host.b, l, n, bc_at),
        c: gather(&host.c, l, n, bc_at),
        dt_bias: opt(s.dt_bias, vec![host.dt_bias.get(h).copied().unwrap_or(0.0)]),
        d: match s.d {
            SkipKind::None => Vec::new(),
            SkipKind::PerHead => vec![host.d[h]],
            SkipKind::PerHeadDim => host.d[block(h, p)].to_vec(),
        },
        z: if s.z {
            gather(&host.z, l, p, x_at)
        } else {
            Vec::new()
        },
        initial_states: initial_state(&host.initial_states, s.initial_states, b * heads + h, p * n),
    }
}

/// Check an SSD call's output `out` (`(b, L, H, P)`) and final states against the
/// oracle on the first and last (batch row, head).
pub fn verify_ssd<T: Element, O: Element>(
    host: &SsdHost<T>,
    out: &[O],
    final_states: Option<&[f32]>,
) -> Result<Verification> {
    let s = host.shape;
    let (l, heads, p, n) = (s.seqlen, s.heads, s.head_dim, s.d_state);
    check_corners(
        s.batch,
        heads,
        O::DTYPE,
        |b, i| format!("(b {b}, head {i})"),
        |b, h| {
            let sub = ssd_row(host, b, h);
            let want = ssm_reference::ssd_recurrence(&sub.params())?;
            let log_decays = one_head_log_decays(&sub);
            let got = gather(out, l, p, |t| ((b * l + t) * heads + h) * p);
            Ok(row_check(
                got,
                final_states.map(|f| &f[block(b * heads + h, p * n)]),
                want,
                max_window_log_decay(&log_decays, l, CUDA_SSD_WINDOW),
            ))
        },
    )
}

/// Check an SSD backward's per-head gradients (dx, ddt and, with z, dz; the
/// initial-state gradient when there are initial states) against the f64
/// adjoint on the first and last (batch row, head), each as a one-head problem
/// with `d_out` the incoming gradient and no final-state gradient. These depend
/// on the sampled head alone; dB and dC sum over the heads of a group and dA,
/// dD, d dt_bias over all tokens, so they are judged in full by the GPU tests
/// (crates/mamba2-ssd/tests/gpu_ssd_backward.rs), not here.
pub fn verify_ssd_backward<T: Element>(
    host: &SsdHost<T>,
    d_out: &[T],
    dx: &[T],
    ddt: &[T],
    dz: Option<&[T]>,
    dinitial_states: Option<&[f32]>,
) -> Result<Verification> {
    let s = host.shape;
    let (l, heads, p, n) = (s.seqlen, s.heads, s.head_dim, s.d_state);
    check_corners(
        s.batch,
        heads,
        T::DTYPE,
        |b, i| format!("(b {b}, head {i}): dx, ddt, dz"),
        |b, h| {
            let sub = ssd_row(host, b, h);
            let x_at = |t: usize| ((b * l + t) * heads + h) * p;
            let g = gather(d_out, l, p, x_at);
            let want = ssm_reference::ssd_backward::ssd_backward(&sub.params(), &g, None)?;
            let log_decays = one_head_log_decays(&sub);
            let got_ddt: Vec<T> = (0..l).map(|t| ddt[(b * l + t) * heads + h]).collect();
            Ok(grad_row(
                [&gather(dx, l, p, x_at), &got_ddt],
                dz.map(|dz| gather(dz, l, p, x_at)).as_deref(),
                dinitial_states.map(|d| &d[block(b * heads + h, p * n)]),
                [&want.dx, &want.ddt],
                want.dz.as_deref(),
                want.dinitial_states.clone(),
                max_window_log_decay(&log_decays, l, CUDA_SSD_WINDOW),
            ))
        },
    )
}

/// The per-step log decays `dt' * A` of a one-head SSD problem (the tolerance
/// model's window input).
fn one_head_log_decays<T: Element>(sub: &SsdHost<T>) -> Vec<f64> {
    let bias = sub.dt_bias.first().copied().unwrap_or(0.0) as f64;
    let a = sub.a[0] as f64;
    let softplus = sub.shape.softplus;
    sub.dt
        .iter()
        .map(|dt| ssd_dt(dt.to_f64(), bias, softplus, NO_DT_LIMIT) * a)
        .collect()
}

/// One row of a backward check: two per-element gradients and, when both
/// sides have it, the gate's, each side concatenated in that order (widened to
/// f64); the initial-state gradients compared as the row's states.
fn grad_row<T: Element>(
    got: [&[T]; 2],
    got_z: Option<&[T]>,
    got_state: Option<&[f32]>,
    want: [&[f64]; 2],
    want_z: Option<&[f64]>,
    want_state: Option<Vec<f64>>,
    log_decay: f64,
) -> RowCheck {
    let mut g: Vec<f64> = got.concat().iter().map(|v| v.to_f64()).collect();
    let mut w = want.concat();
    if let (Some(gz), Some(wz)) = (got_z, want_z) {
        g.extend(gz.iter().map(|v| v.to_f64()));
        w.extend_from_slice(wz);
    }
    RowCheck {
        got: g,
        want: w,
        got_state: got_state.map(widen),
        want_state,
        log_decay,
    }
}

fn row_check<O: Element>(
    got: Vec<O>,
    got_state: Option<&[f32]>,
    want: ScanOutput<f64, f64>,
    log_decay: f64,
) -> RowCheck {
    RowCheck {
        got: got.iter().map(|v| v.to_f64()).collect(),
        want: want.out,
        got_state: got_state.map(widen),
        want_state: want.final_states,
        log_decay,
    }
}

// ------------------------------------------------------------------ Mamba-1 scan

/// The one-row Mamba-1 problem of (batch row `b`, channel `d`) cut out of `host`.
fn scan_row<T: Element>(host: &Mamba1Host<T>, b: usize, d: usize) -> Mamba1Host<T> {
    let s = host.shape;
    let (dim, n, l) = (s.d_inner, s.d_state, s.seqlen);
    let row = |v: &[T]| v[block(b * dim + d, l)].to_vec();
    let bc = |v: &[T]| match s.groups {
        Some(g) => {
            let grp = d / (dim / g);
            v[block(b * g + grp, n * l)].to_vec()
        }
        None => v[block(d, n)].to_vec(),
    };
    let pick = |v: &[f32], i: usize| if v.is_empty() { Vec::new() } else { vec![v[i]] };
    Mamba1Host {
        shape: ssm_telemetry::problem::Mamba1ScanShape {
            batch: 1,
            d_inner: 1,
            groups: s.groups.map(|_| 1),
            ..s
        },
        u: row(&host.u),
        delta: row(&host.delta),
        a: host.a[block(d, n)].to_vec(),
        b: bc(&host.b),
        c: bc(&host.c),
        d: pick(&host.d, d),
        z: if s.z { row(&host.z) } else { Vec::new() },
        delta_bias: pick(&host.delta_bias, d),
        initial_states: initial_state(&host.initial_states, s.initial_states, b * dim + d, n),
    }
}

/// Check a Mamba-1 scan's output `out` (`(b, D_in, L)`) and final states against
/// the oracle on the first and last (batch row, channel).
pub fn verify_scan<T: Element, O: Element>(
    host: &Mamba1Host<T>,
    out: &[O],
    final_states: Option<&[f32]>,
) -> Result<Verification> {
    let s = host.shape;
    let (dim, n, l) = (s.d_inner, s.d_state, s.seqlen);
    check_corners(
        s.batch,
        dim,
        O::DTYPE,
        |b, i| format!("(b {b}, channel {i})"),
        |b, d| {
            let sub = scan_row(host, b, d);
            let want = ssm_reference::selective_scan(&sub.params())?;
            let at = (b * dim + d) * l;
            // The scan multiplies no decays across a window before rounding
            // (K = 0 in the tolerance model, as in ssm-verify's checks).
            Ok(row_check(
                out[at..at + l].to_vec(),
                final_states.map(|f| &f[block(b * dim + d, n)]),
                want,
                0.0,
            ))
        },
    )
}

/// Check a Mamba-1 scan backward's per-element gradients (du, ddelta, dz; the
/// initial-state gradient when there are initial states) against the f64
/// adjoint on the first and last (batch row, channel), with `d_out` the
/// incoming gradient and no final-state gradient. These depend on the sampled
/// channel alone; the sums over channels, rows and time (dA, dB, dC, dD,
/// ddelta_bias) are judged in full by the GPU tests
/// (crates/mamba1-scan/tests/gpu_scan_backward.rs), not here.
pub fn verify_scan_backward<T: Element>(
    host: &Mamba1Host<T>,
    d_out: &[T],
    du: &[T],
    ddelta: &[T],
    dz: Option<&[T]>,
    dinitial_states: Option<&[f32]>,
) -> Result<Verification> {
    let s = host.shape;
    let (dim, n, l) = (s.d_inner, s.d_state, s.seqlen);
    check_corners(
        s.batch,
        dim,
        T::DTYPE,
        |b, i| format!("du, ddelta, dz of (b {b}, channel {i})"),
        |b, d| {
            let sub = scan_row(host, b, d);
            let at = (b * dim + d) * l;
            let g = &d_out[at..at + l];
            let want =
                ssm_reference::mamba1_backward::selective_scan_backward(&sub.params(), g, None)?;
            Ok(grad_row(
                [&du[at..at + l], &ddelta[at..at + l]],
                dz.map(|dz| &dz[at..at + l]),
                dinitial_states.map(|h| &h[block(b * dim + d, n)]),
                [&want.du, &want.ddelta],
                want.dz.as_deref(),
                want.dinitial_states.clone(),
                0.0,
            ))
        },
    )
}

// ------------------------------------------------------------------ decode steps

/// Which family a decode step belongs to, with its shape.
pub enum StepShape<'a> {
    Mamba1(&'a Mamba1StepShape),
    Mamba2(&'a Mamba2StepShape),
}

/// Check one decode step from the host's initial state: its output and every
/// updated state row, against the oracle on the whole batch.
pub fn verify_step<T: Element, O: Element>(
    host: &StepHost<T>,
    shape: StepShape<'_>,
    out: &[O],
    state_after: &[f32],
) -> Result<Verification> {
    let mut state = widen(&host.state);
    let want = match shape {
        StepShape::Mamba1(s) => ssm_reference::mamba1_step(&host.mamba1_params(s), &mut state)?,
        StepShape::Mamba2(s) => ssm_reference::mamba2_step(&host.mamba2_params(s), &mut state)?,
    };
    let rows = vec![RowCheck {
        got: out.iter().map(|v| v.to_f64()).collect(),
        want: want.out,
        got_state: Some(widen(state_after)),
        want_state: Some(state),
        log_decay: 0.0,
    }];
    Ok(verdict(rows, "all rows".into(), O::DTYPE))
}

/// [`verify_step`] for a state cache stored as `state_dtype` (f32, or the
/// 16-bit state of Mamba-2's v6; `state_after` widened to f32, `host.state`
/// representable in it): the state is judged by
/// `ssm_core::tolerance::stored_state_budget(state_dtype, 1)`, the output as
/// usual (the first step's output sees no stored rounding).
pub fn verify_step_stored<T: Element, O: Element>(
    host: &StepHost<T>,
    shape: StepShape<'_>,
    out: &[O],
    state_after: &[f32],
    state_dtype: ssm_core::DType,
) -> Result<Verification> {
    let mut state = widen(&host.state);
    let want = match shape {
        StepShape::Mamba1(s) => ssm_reference::mamba1_step(&host.mamba1_params(s), &mut state)?,
        StepShape::Mamba2(s) => ssm_reference::mamba2_step(&host.mamba2_params(s), &mut state)?,
    };
    let rows = vec![RowCheck {
        got: out.iter().map(|v| v.to_f64()).collect(),
        want: want.out,
        got_state: Some(widen(state_after)),
        want_state: Some(state),
        log_decay: 0.0,
    }];
    let budget = ssm_core::tolerance::stored_state_budget(state_dtype, 1);
    Ok(verdict_with_state(
        rows,
        "all rows".into(),
        O::DTYPE,
        Some(budget),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_core::DType;
    use ssm_telemetry::problem::{Mamba1ScanShape, SsdShape};

    fn ssd_shape() -> SsdShape {
        SsdShape {
            batch: 2,
            seqlen: 37,
            heads: 4,
            head_dim: 3,
            d_state: 5,
            groups: 2,
            chunk_size: 64,
            dtype: DType::F32,
            z: true,
            d: SkipKind::PerHeadDim,
            dt_bias: true,
            softplus: true,
            initial_states: true,
            final_states: true,
        }
    }

    fn narrow<T: Element>(v: &[f64]) -> Vec<T> {
        v.iter().map(|x| T::from_f64(*x)).collect()
    }

    #[test]
    fn the_oracles_own_output_passes_and_a_perturbed_one_fails() {
        let host = SsdHost::<f32>::generate(&ssd_shape(), 3);
        let full = ssm_reference::ssd_recurrence(&host.params()).unwrap();
        let out: Vec<f32> = narrow(&full.out);
        let states: Vec<f32> = narrow(full.final_states.as_ref().unwrap());
        let ok = verify_ssd(&host, &out, Some(&states)).unwrap();
        assert!(ok.passed, "{ok:?}");
        assert!(ok.sampled.contains("head 3"), "{}", ok.sampled);
        // One wrong element in the last sampled row is caught.
        let s = host.shape;
        let mut bad = out.clone();
        let last = ((s.batch * s.seqlen - 1) * s.heads + s.heads - 1) * s.head_dim;
        bad[last] += 1.0;
        assert!(!verify_ssd(&host, &bad, Some(&states)).unwrap().passed);
        // So is a missing or wrong final state, and an unwritten (NaN) output.
        assert!(!verify_ssd(&host, &out, None).unwrap().passed);
        let mut nan = out.clone();
        nan[0] = f32::NAN;
        assert!(!verify_ssd(&host, &nan, Some(&states)).unwrap().passed);
    }

    #[test]
    fn scan_rows_are_cut_with_their_group_and_checked() {
        let shape = Mamba1ScanShape {
            batch: 2,
            d_inner: 6,
            d_state: 4,
            seqlen: 29,
            groups: Some(3),
            dtype: DType::F32,
            z: true,
            d: true,
            delta_bias: true,
            softplus: true,
            initial_states: true,
            final_states: true,
        };
        for groups in [Some(3), None] {
            let host = Mamba1Host::<f32>::generate(&Mamba1ScanShape { groups, ..shape }, 5);
            let full = ssm_reference::selective_scan(&host.params()).unwrap();
            let out: Vec<f32> = narrow(&full.out);
            let states: Vec<f32> = narrow(full.final_states.as_ref().unwrap());
            let ok = verify_scan(&host, &out, Some(&states)).unwrap();
            assert!(ok.passed, "{groups:?}: {ok:?}");
            let mut bad = out.clone();
            let last = out.len() - 1;
            bad[last] *= 1.01;
            assert!(!verify_scan(&host, &bad, Some(&states)).unwrap().passed);
        }
    }

    #[test]
    fn steps_are_checked_whole() {
        let shape = Mamba2StepShape {
            batch: 3,
            heads: 4,
            head_dim: 2,
            d_state: 3,
            groups: 2,
            dtype: DType::F32,
            z: true,
            d: SkipKind::PerHead,
            dt_bias: true,
            softplus: true,
        };
        let host = StepHost::<f32>::mamba2(&shape, 9);
        let mut state = widen(&host.state);
        let want = ssm_reference::mamba2_step(&host.mamba2_params(&shape), &mut state).unwrap();
        let out: Vec<f32> = narrow(&want.out);
        let after: Vec<f32> = narrow(&state);
        let step = StepShape::Mamba2(&shape);
        assert!(verify_step(&host, step, &out, &after).unwrap().passed);
        // A state row left untouched fails even when the output is right.
        let stale = host.state.clone();
        assert!(
            !verify_step(&host, StepShape::Mamba2(&shape), &out, &stale)
                .unwrap()
                .passed
        );
    }
}
