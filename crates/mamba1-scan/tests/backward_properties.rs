//! Property tests of the Mamba-1 backward (issue 15): on random shapes,
//! options, dtypes and block lengths that shrink on failure,
//!
//! - the blocked f32 backward matches the f64 adjoint within the derived
//!   budgets (`mamba1_scan::backward_cpu::tolerance`, docs/TOLERANCES.md);
//! - the backward of a sequence split on a block boundary, with the forward's
//!   state carried into the second part and the second part's initial-state
//!   gradient carried back into the first, equals the backward of the whole
//!   (per-element gradients bit for bit, sums over time to f32 rounding);
//! - each varlen sequence's gradients equal a separate run of it;
//! - the result does not depend on the number of threads.
//!
//! Cases per property: 48 by default (CI), `SSM_PROPTEST_CASES=N` for more.

use std::ops::Range;

use half::{bf16, f16};
use mamba1_scan::backward_cpu::selective_scan_backward_blocked;
use mamba1_scan::backward_cpu::tolerance::{gamma, judge_all, reduction_terms};
use mamba1_scan::cpu::selective_scan_blocked;
use proptest::prelude::*;
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::{Element, ScanGrads};
use ssm_reference::mamba1_backward::{selective_scan_backward, selective_scan_backward_magnitudes};

#[path = "support/proptest_cases.rs"]
mod proptest_cases;
#[path = "support/scan_backward.rs"]
mod support;
use support::{divisors, Case, Data, Rounded};

/// Random shapes (N not a power of two, L = 0 and 1, channels past one
/// 64-channel chunk), independent B and C layouts, every option.
fn case(max_len: usize, varlen: bool) -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        prop_oneof![1usize..=12, 60usize..=80],
        1usize..=9,
        0usize..=max_len,
        any::<[bool; 8]>(),
        any::<(u16, u16)>(),
        proptest::collection::vec(0usize..=max_len, 0..4),
    )
        .prop_map(
            move |(batch, d_inner, d_state, seqlen, flags, (gb, gc), cuts)| {
                let pick = |sel: u16| -> Option<usize> {
                    let divs = divisors(d_inner);
                    // One value in four is the constant layout.
                    (sel % 4 != 0).then(|| divs[sel as usize % divs.len()])
                };
                let cu = (varlen && flags[7]).then(|| {
                    let mut points: Vec<i64> = cuts.iter().map(|&c| c.min(seqlen) as i64).collect();
                    points.push(0);
                    points.push(seqlen as i64);
                    points.sort_unstable();
                    points
                });
                Case {
                    dims: Mamba1Dims {
                        batch: if cu.is_some() { 1 } else { batch },
                        d_inner,
                        d_state,
                        seqlen,
                    },
                    b_groups: pick(gb),
                    c_groups: pick(gc),
                    d: flags[0],
                    z: flags[1],
                    bias: flags[2],
                    softplus: flags[3],
                    h0: flags[4],
                    final_states: flags[5],
                    large_dt: flags[6] && gb % 3 == 0,
                    cu,
                }
            },
        )
}

fn backward<T: Element>(case: &Case, data: &Data, block_len: usize) -> ScanGrads<T, f32> {
    let r = Rounded::<T>::new(data);
    let dh = case.final_states.then_some(&data.d_final[..]);
    selective_scan_backward_blocked(&r.params(case, data), &r.d_out, dh, block_len).unwrap()
}

fn matches_oracle<T: Element>(
    case: &Case,
    seed: u64,
    block_len: usize,
) -> Result<(), TestCaseError> {
    let data = Data::generate(case, seed);
    let r = Rounded::<T>::new(&data);
    let p = r.params(case, &data);
    let dh = case.final_states.then_some(&data.d_final[..]);
    let got = selective_scan_backward_blocked(&p, &r.d_out, dh, block_len).unwrap();
    let want = selective_scan_backward(&p, &r.d_out, dh).unwrap();
    let mag = selective_scan_backward_magnitudes(&p, &r.d_out, dh).unwrap();
    for v in judge_all(&p, &got, &want, &mag) {
        prop_assert!(
            v.passes,
            "{} {}: {:?} budget {:e} allowance {:e}",
            T::DTYPE,
            v.name,
            v.comparison,
            v.budget,
            v.allowance
        );
    }
    Ok(())
}

/// The per-element gradients (`du`, `ddelta`, `dz`, and grouped dB/dC) of
/// positions `range` of every row, `(lanes, range)`.
fn cut_t<T: Copy>(xs: &[T], lanes: usize, seqlen: usize, range: &Range<usize>) -> Vec<T> {
    (0..lanes)
        .flat_map(|l| xs[l * seqlen + range.start..l * seqlen + range.end].to_vec())
        .collect()
}

fn widen(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| f64::from(x)).collect()
}

/// Sums over time split into parts agree with the whole to the f32 rounding
/// of `terms` additions of terms whose absolute values sum to `magnitude`
/// (the oracle's, element by element): `gamma(terms) ||magnitude||`.
fn sums_agree(
    what: &str,
    parts: &[Vec<f64>],
    whole: &[f32],
    magnitude: &[f64],
    terms: usize,
) -> Result<(), TestCaseError> {
    let sum: Vec<f64> = (0..whole.len())
        .map(|i| parts.iter().map(|p| p[i]).sum())
        .collect();
    let err: f64 = widen(whole)
        .iter()
        .zip(&sum)
        .map(|(w, s)| (w - s) * (w - s))
        .sum::<f64>()
        .sqrt();
    let mag = magnitude.iter().map(|x| x * x).sum::<f64>().sqrt();
    let allowed = gamma(terms) * mag;
    prop_assert!(
        err.is_finite() && err <= allowed,
        "{what}: |whole - sum of parts| = {err:e} > {allowed:e}"
    );
    Ok(())
}

/// The oracle's magnitudes of the problem, for the sums' allowances.
fn magnitudes<T: Element>(case: &Case, data: &Data) -> ScanGrads<f64, f64> {
    let r = Rounded::<T>::new(data);
    let dh = case.final_states.then_some(&data.d_final[..]);
    selective_scan_backward_magnitudes(&r.params(case, data), &r.d_out, dh).unwrap()
}

proptest! {
    #![proptest_config(proptest_cases::config(48, None))]

    /// The blocked backward matches the f64 adjoint for any block length, in
    /// every dtype.
    #[test]
    fn blocked_backward_matches_the_adjoint(
        case in case(48, true),
        block_len in prop_oneof![1usize..=48, 49usize..=200],
        dtype in 0u8..3,
        seed in any::<u64>(),
    ) {
        match dtype {
            0 => matches_oracle::<f32>(&case, seed, block_len)?,
            1 => matches_oracle::<f16>(&case, seed, block_len)?,
            _ => matches_oracle::<bf16>(&case, seed, block_len)?,
        }
    }

    /// Split on a block boundary with the state carried forward and its
    /// gradient carried back == the whole.
    #[test]
    fn split_with_state_carry_equals_whole(
        mut case in case(40, false),
        block_len in 1usize..=12,
        split_blocks in 0usize..=6,
        seed in any::<u64>(),
    ) {
        case.final_states = true;
        case.h0 = true;
        let seqlen = case.dims.seqlen;
        let split = (split_blocks * block_len).min(seqlen);
        let data = Data::generate(&case, seed);
        let whole = backward::<f32>(&case, &data, block_len);
        let rows = 0..case.dims.batch;

        // Forward over the first part for the carried state.
        let (c1, mut d1) = data.window(&case, 0..split, rows.clone());
        let r1 = Rounded::<f32>::new(&d1);
        let carried = selective_scan_blocked(&r1.params(&c1, &d1), block_len).unwrap().final_states.unwrap();
        let (c2, mut d2) = data.window(&case, split..seqlen, rows.clone());
        d2.h0 = carried;
        let second = backward::<f32>(&c2, &d2, block_len);
        d1.d_final = second.dinitial_states.clone().unwrap();
        let first = backward::<f32>(&c1, &d1, block_len);

        let lanes = case.dims.batch * case.dims.d_inner;
        let joined = |a: &[f32], b: &[f32], lanes: usize| -> Vec<f32> {
            let (la, lb) = (a.len() / lanes.max(1), b.len() / lanes.max(1));
            (0..lanes).flat_map(|l| [&a[l * la..(l + 1) * la], &b[l * lb..(l + 1) * lb]].concat()).collect()
        };
        prop_assert_eq!(joined(&first.du, &second.du, lanes), whole.du.clone());
        prop_assert_eq!(joined(&first.ddelta, &second.ddelta, lanes), whole.ddelta.clone());
        if let (Some(a), Some(b), Some(w)) = (&first.dz, &second.dz, &whole.dz) {
            prop_assert_eq!(&joined(a, b, lanes), w);
        }
        prop_assert_eq!(&first.dinitial_states, &whole.dinitial_states);
        let mag = magnitudes::<f32>(&case, &data);
        let r = Rounded::<f32>::new(&data);
        let p = r.params(&case, &data);
        let terms = |name| reduction_terms(name, &p);
        for (name, a, b, w, g, m) in [
            ("dB", &first.db, &second.db, &whole.db, case.b_groups, &mag.db),
            ("dC", &first.dc, &second.dc, &whole.dc, case.c_groups, &mag.dc),
        ] {
            match g {
                Some(g) => prop_assert_eq!(&joined(a, b, case.dims.batch * g * case.dims.d_state), w, "{}", name),
                None => sums_agree(name, &[widen(a), widen(b)], w, m, terms(name))?,
            }
        }
        sums_agree("dA", &[widen(&first.da), widen(&second.da)], &whole.da, &mag.da, terms("dA"))?;
        for (name, a, b, w, m) in [
            ("dD", &first.dd, &second.dd, &whole.dd, &mag.dd),
            ("ddelta_bias", &first.ddelta_bias, &second.ddelta_bias, &whole.ddelta_bias, &mag.ddelta_bias),
        ] {
            if let (Some(a), Some(b), Some(w), Some(m)) = (a, b, w, m) {
                sums_agree(name, &[widen(a), widen(b)], w, m, terms(name))?;
            }
        }
    }

    /// Each varlen sequence's gradients equal those of a separate run.
    #[test]
    fn varlen_equals_separate_runs(
        mut case in case(40, true),
        block_len in 1usize..=20,
        seed in any::<u64>(),
    ) {
        let Some(cu) = case.cu.clone() else { return Ok(()); };
        case.final_states = true;
        let data = Data::generate(&case, seed);
        let packed = backward::<bf16>(&case, &data, block_len);
        let Mamba1Dims { d_inner, d_state, seqlen, .. } = case.dims;
        let state = d_inner * d_state;
        let mut parts = Vec::new();
        for (s, w) in cu.windows(2).enumerate() {
            let range = w[0] as usize..w[1] as usize;
            let (c, d) = data.window(&case, range.clone(), s..s + 1);
            let alone = backward::<bf16>(&c, &d, block_len);
            prop_assert_eq!(cut_t(&packed.du, d_inner, seqlen, &range), alone.du.clone(), "sequence {} du", s);
            prop_assert_eq!(cut_t(&packed.ddelta, d_inner, seqlen, &range), alone.ddelta.clone());
            if let (Some(p), Some(a)) = (&packed.dz, &alone.dz) {
                prop_assert_eq!(&cut_t(p, d_inner, seqlen, &range), a);
            }
            for (p, a, g) in [(&packed.db, &alone.db, case.b_groups), (&packed.dc, &alone.dc, case.c_groups)] {
                if let Some(g) = g {
                    prop_assert_eq!(&cut_t(p, g * d_state, seqlen, &range), a);
                }
            }
            if let (Some(p), Some(a)) = (&packed.dinitial_states, &alone.dinitial_states) {
                prop_assert_eq!(&p[s * state..(s + 1) * state], &a[..]);
            }
            parts.push(alone);
        }
        let mag = magnitudes::<bf16>(&case, &data);
        let r = Rounded::<bf16>::new(&data);
        let terms = reduction_terms("dA", &r.params(&case, &data));
        let da: Vec<Vec<f64>> = parts.iter().map(|a| widen(&a.da)).collect();
        sums_agree("dA", &da, &packed.da, &mag.da, terms)?;
    }

    /// The same bits on 1 and 3 threads.
    #[test]
    fn threads_do_not_change_the_bits(case in case(30, true), block_len in 1usize..=16, seed in any::<u64>()) {
        let data = Data::generate(&case, seed);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
                .install(|| backward::<f16>(&case, &data, block_len))
        };
        prop_assert_eq!(run(1), run(3));
    }
}
