//! The blocked f32 backward against the f64 adjoint (`ssm-reference`), and
//! the structural properties that must hold bit for bit: split with state
//! carry == whole, varlen == separate runs, reruns and thread counts.
//!
//! Inputs are drawn in f32 and rounded once to the element type under test;
//! the oracle sees the very same values. Run with `--nocapture` for the errors.

use super::tolerance::judge_all;
use super::*;
use crate::cpu::selective_scan_blocked;
use half::{bf16, f16};
use ssm_core::tolerance::compare;
use ssm_reference::mamba1_backward::{selective_scan_backward, selective_scan_backward_magnitudes};

// The problem generator shared with the integration tests (one generator for
// the CPU and GPU backward tests).
#[path = "../../tests/support/scan_backward.rs"]
mod support;
pub(super) use support::{Case, Data, Rounded};

fn d_final<'a>(case: &Case, data: &'a Data) -> Option<&'a [f32]> {
    case.final_states.then_some(&data.d_final[..])
}

/// Run the port with `block_len` against the oracle; assert every gradient
/// passes and return the worst relative error.
fn check<T: Element>(case: &Case, seed: u64, block_len: usize) -> f64 {
    let data = Data::generate(case, seed);
    let r = Rounded::<T>::new(&data);
    let p = r.params(case, &data);
    let dh = d_final(case, &data);
    let got = selective_scan_backward_blocked(&p, &r.d_out, dh, block_len).unwrap();
    let want = selective_scan_backward(&p, &r.d_out, dh).unwrap();
    let mag = selective_scan_backward_magnitudes(&p, &r.d_out, dh).unwrap();
    let mut worst: f64 = 0.0;
    let verdicts = judge_all(&p, &got, &want, &mag);
    for v in &verdicts {
        assert!(
            v.passes,
            "{} {}: {:?} budget {:e} allowance {:e}, block {block_len}, {case:?}",
            T::DTYPE,
            v.name,
            v.comparison,
            v.budget,
            v.allowance
        );
        worst = worst.max(v.comparison.rel_l2);
    }
    let o = case;
    assert_eq!(
        verdicts.len(),
        5 + [o.d, o.z, o.bias, o.h0].iter().filter(|&&x| x).count()
    );
    worst
}

fn check_dtypes(name: &str, case: &Case, seed: u64, block_len: usize) {
    let f32_ = check::<f32>(case, seed, block_len);
    let f16_ = check::<f16>(case, seed, block_len);
    let bf16_ = check::<bf16>(case, seed, block_len);
    eprintln!(
        "{name:<28} block {block_len:>4} | worst rel_l2 f32 {f32_:.1e} f16 {f16_:.1e} bf16 {bf16_:.1e}"
    );
}

#[test]
fn every_block_length() {
    let case = Case::all(2, 12, 5, 47).groups(Some(2), Some(3));
    for block_len in (1..=48).chain([64, 100, 4096, usize::MAX]) {
        let worst = check::<f32>(&case, 1, block_len);
        if block_len % 16 == 1 || block_len > 48 {
            eprintln!("block {block_len}: worst rel_l2 {worst:.1e}");
        }
    }
    check_dtypes("block 7, all dtypes", &case, 2, 7);
}

#[test]
fn options_and_layouts() {
    check_dtypes("all options G=1", &Case::all(2, 16, 8, 60), 3, 16);
    check_dtypes(
        "constant B and C",
        &Case::all(2, 8, 6, 40).groups(None, None),
        4,
        16,
    );
    check_dtypes(
        "constant B, C G=4",
        &Case::all(2, 8, 4, 33).groups(None, Some(4)),
        5,
        8,
    );
    let mut plain = Case::all(2, 8, 4, 30).groups(Some(4), None);
    plain.d = false;
    plain.z = false;
    plain.bias = false;
    plain.softplus = false;
    plain.h0 = false;
    plain.final_states = false;
    check_dtypes("no options", &plain, 6, 8);
    let mut large = Case::all(2, 16, 8, 64);
    large.large_dt = true;
    check_dtypes("dt up to 10", &large, 7, 16);
    // Channels past one chunk and groups of several chunks: D_in 200, G 2.
    check_dtypes(
        "D=200 G=2",
        &Case::all(1, 200, 3, 20).groups(Some(2), Some(1)),
        8,
        8,
    );
}

#[test]
fn varlen_and_one_step() {
    let mut case = Case::all(1, 8, 4, 40).groups(Some(2), Some(2));
    case.cu = Some(vec![0, 0, 17, 18, 18, 40]);
    check_dtypes("varlen", &case, 9, 7);
    check_dtypes("L=1", &Case::all(3, 8, 4, 1), 10, 8);
    // L = 0: nothing but the final-state gradient passed to the initial state.
    let case = Case::all(2, 4, 3, 0);
    let data = Data::generate(&case, 11);
    let r = Rounded::<f32>::new(&data);
    let g = selective_scan_backward_blocked(&r.params(&case, &data), &[], Some(&data.d_final), 4)
        .unwrap();
    assert_eq!(g.dinitial_states.unwrap(), data.d_final);
    assert!(g.da.iter().all(|&v| v == 0.0) && g.du.is_empty());
}

/// Backward of the whole == backward of two halves, the second starting from
/// the forward's state after the first and handing its initial-state gradient
/// to the first as its final-state gradient. With the split on a block
/// boundary the per-element gradients are the same bits; the sums over time
/// are associated differently and agree to f32 rounding.
#[test]
fn split_with_state_carry_equals_whole() {
    let (seqlen, split, block) = (40, 24, 8);
    let case = Case::all(2, 8, 4, seqlen).groups(Some(2), None);
    let data = Data::generate(&case, 12);
    let r = Rounded::<f32>::new(&data);
    let p = r.params(&case, &data);
    let whole = selective_scan_backward_blocked(&p, &r.d_out, Some(&data.d_final), block).unwrap();

    let cut = |xs: &[f32], lanes: usize, range: Range<usize>| -> Vec<f32> {
        (0..lanes)
            .flat_map(|lane| xs[lane * seqlen + range.start..lane * seqlen + range.end].to_vec())
            .collect()
    };
    let half = |range: Range<usize>, h0: Vec<f32>, d_final: Vec<f32>| {
        let lanes = 2 * 8;
        let mut c = case.clone();
        c.dims.seqlen = range.len();
        let d = Data {
            u: cut(&data.u, lanes, range.clone()),
            delta: cut(&data.delta, lanes, range.clone()),
            b: cut(&data.b, 2 * 2 * 4, range.clone()),
            z: cut(&data.z, lanes, range.clone()),
            d_out: cut(&data.d_out, lanes, range.clone()),
            h0,
            d_final,
            ..data.clone()
        };
        (c, d)
    };
    let (c1, d1) = half(0..split, data.h0.clone(), vec![0.0; data.d_final.len()]);
    let r1 = Rounded::<f32>::new(&d1);
    let first_final = selective_scan_blocked(&r1.params(&c1, &d1), block)
        .unwrap()
        .final_states
        .unwrap();
    let (c2, d2) = half(split..seqlen, first_final, data.d_final.clone());
    let r2 = Rounded::<f32>::new(&d2);
    let second =
        selective_scan_backward_blocked(&r2.params(&c2, &d2), &r2.d_out, Some(&d2.d_final), block)
            .unwrap();
    let (c1, d1) = half(
        0..split,
        data.h0.clone(),
        second.dinitial_states.clone().unwrap(),
    );
    let r1 = Rounded::<f32>::new(&d1);
    let first =
        selective_scan_backward_blocked(&r1.params(&c1, &d1), &r1.d_out, Some(&d1.d_final), block)
            .unwrap();

    let lanes = 16;
    let joined = |a: &[f32], b: &[f32], lanes: usize| -> Vec<f32> {
        let (la, lb) = (a.len() / lanes, b.len() / lanes);
        (0..lanes)
            .flat_map(|l| [&a[l * la..(l + 1) * la], &b[l * lb..(l + 1) * lb]].concat())
            .collect()
    };
    assert_eq!(joined(&first.du, &second.du, lanes), whole.du);
    assert_eq!(joined(&first.ddelta, &second.ddelta, lanes), whole.ddelta);
    assert_eq!(
        joined(
            first.dz.as_ref().unwrap(),
            second.dz.as_ref().unwrap(),
            lanes
        ),
        *whole.dz.as_ref().unwrap()
    );
    assert_eq!(joined(&first.db, &second.db, 2 * 2 * 4), whole.db);
    assert_eq!(first.dinitial_states, whole.dinitial_states);
    let sum = |a: &[f32], b: &[f32]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) + f64::from(*y))
            .collect()
    };
    let widen = |xs: &[f32]| -> Vec<f64> { xs.iter().map(|&x| f64::from(x)).collect() };
    for (name, a, b, w) in [
        ("dA", &first.da, &second.da, &whole.da),
        ("dC", &first.dc, &second.dc, &whole.dc),
        (
            "dD",
            first.dd.as_ref().unwrap(),
            second.dd.as_ref().unwrap(),
            whole.dd.as_ref().unwrap(),
        ),
        (
            "ddelta_bias",
            first.ddelta_bias.as_ref().unwrap(),
            second.ddelta_bias.as_ref().unwrap(),
            whole.ddelta_bias.as_ref().unwrap(),
        ),
    ] {
        let cmp = compare(&sum(a, b), &widen(w));
        assert!(cmp.rel_l2 < 1e-6, "{name}: {cmp:?}");
    }
}

/// Each varlen sequence's gradients equal a separate run of that sequence:
/// bit for bit for everything that is not summed over sequences.
#[test]
fn varlen_equals_separate_runs() {
    let cu = vec![0i64, 5, 5, 6, 29, 40];
    let seqlen = 40;
    let mut case = Case::all(1, 8, 3, seqlen).groups(Some(2), Some(1));
    case.cu = Some(cu.clone());
    let data = Data::generate(&case, 13);
    let r = Rounded::<bf16>::new(&data);
    let p = r.params(&case, &data);
    let packed = selective_scan_backward_blocked(&p, &r.d_out, Some(&data.d_final), 6).unwrap();
    let state = 8 * 3;
    let mut da = vec![0.0f64; 8 * 3];
    for (s, w) in cu.windows(2).enumerate() {
        let range = w[0] as usize..w[1] as usize;
        let cut = |xs: &[f32], lanes: usize| -> Vec<f32> {
            (0..lanes)
                .flat_map(|l| xs[l * seqlen + range.start..l * seqlen + range.end].to_vec())
                .collect()
        };
        let mut c = case.clone();
        c.cu = None;
        c.dims.seqlen = range.len();
        let d = Data {
            u: cut(&data.u, 8),
            delta: cut(&data.delta, 8),
            b: cut(&data.b, 2 * 3),
            c: cut(&data.c, 3),
            z: cut(&data.z, 8),
            d_out: cut(&data.d_out, 8),
            h0: data.h0[s * state..(s + 1) * state].to_vec(),
            d_final: data.d_final[s * state..(s + 1) * state].to_vec(),
            ..data.clone()
        };
        let ra = Rounded::<bf16>::new(&d);
        let alone =
            selective_scan_backward_blocked(&ra.params(&c, &d), &ra.d_out, Some(&d.d_final), 6)
                .unwrap();
        let cut_t = |xs: &[bf16], lanes: usize| -> Vec<bf16> {
            (0..lanes)
                .flat_map(|l| xs[l * seqlen + range.start..l * seqlen + range.end].to_vec())
                .collect()
        };
        assert_eq!(cut_t(&packed.du, 8), alone.du, "sequence {s} du");
        assert_eq!(
            cut_t(&packed.ddelta, 8),
            alone.ddelta,
            "sequence {s} ddelta"
        );
        assert_eq!(cut_t(packed.dz.as_ref().unwrap(), 8), alone.dz.unwrap());
        assert_eq!(cut_t(&packed.db, 2 * 3), alone.db, "sequence {s} dB");
        assert_eq!(cut_t(&packed.dc, 3), alone.dc, "sequence {s} dC");
        assert_eq!(
            &packed.dinitial_states.as_ref().unwrap()[s * state..(s + 1) * state],
            &alone.dinitial_states.unwrap()[..],
            "sequence {s} dinitial_states"
        );
        for (acc, v) in da.iter_mut().zip(&alone.da) {
            *acc += f64::from(*v);
        }
    }
    let packed_da: Vec<f64> = packed.da.iter().map(|&v| f64::from(v)).collect();
    let cmp = compare(&packed_da, &da);
    assert!(cmp.rel_l2 < 1e-6, "dA: {cmp:?}");
}

/// `f` on a fresh pool of `threads` threads.
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(f)
}

/// Reruns and any number of threads give the same bits (fixed partition and
/// fixed reduction order).
#[test]
fn bit_identical_across_reruns_and_threads() {
    let mut case = Case::all(1, 150, 4, 45).groups(Some(3), None);
    case.cu = Some(vec![0, 20, 20, 21, 45]);
    let data = Data::generate(&case, 14);
    let r = Rounded::<bf16>::new(&data);
    let p = r.params(&case, &data);
    let backward =
        || selective_scan_backward_blocked(&p, &r.d_out, Some(&data.d_final), 16).unwrap();
    let base = on_threads(1, backward);
    for threads in [1, 2, 3, 8] {
        assert_eq!(on_threads(threads, backward), base, "{threads} threads");
    }
    let batched = Case::all(3, 70, 4, 20);
    let data = Data::generate(&batched, 15);
    let r = Rounded::<f32>::new(&data);
    let p = r.params(&batched, &data);
    let backward =
        || selective_scan_backward_blocked(&p, &r.d_out, Some(&data.d_final), 5).unwrap();
    assert_eq!(on_threads(1, backward), on_threads(4, backward));
}

/// Every gradient input is validated with a typed error naming it.
#[test]
fn typed_errors_on_every_gradient_input() {
    let case = Case::all(2, 4, 3, 6);
    let data = Data::generate(&case, 16);
    let r = Rounded::<f32>::new(&data);
    let p = r.params(&case, &data);
    let run = |p: &SelectiveScanParams<'_, f32>, d_out: &[f32], dh: Option<&[f32]>, block| {
        selective_scan_backward_blocked(p, d_out, dh, block).unwrap_err()
    };
    let dh = Some(&data.d_final[..]);
    let err = run(&p, &r.d_out[1..], dh, 4);
    assert!(matches!(err, SsmError::Shape { arg: "d_out", .. }), "{err}");
    assert!(err.to_string().contains("(b=2, D_in=4, L=6)"), "{err}");
    let err = run(&p, &r.d_out, Some(&data.d_final[..5]), 4);
    assert!(
        matches!(
            err,
            SsmError::Shape {
                arg: "d_final_states",
                ..
            }
        ),
        "{err}"
    );
    let err = run(&p.with_final_states(false), &r.d_out, dh, 4);
    assert!(matches!(
        err,
        SsmError::Dimension {
            arg: "d_final_states",
            ..
        }
    ));
    let err = run(&p, &r.d_out, dh, 0);
    assert!(matches!(
        err,
        SsmError::Dimension {
            arg: "block_len",
            ..
        }
    ));
    let mut bad = r.d_out.clone();
    bad[7] = f32::NAN;
    let err = run(&p.with_check_finite(true), &bad, dh, 4);
    assert!(matches!(
        err,
        SsmError::NonFinite {
            arg: "d_out",
            index: 7,
            ..
        }
    ));
    let mut bad = data.d_final.clone();
    bad[2] = f32::INFINITY;
    let err = run(&p.with_check_finite(true), &r.d_out, Some(&bad), 4);
    assert!(matches!(
        err,
        SsmError::NonFinite {
            arg: "d_final_states",
            index: 2,
            ..
        }
    ));
    // The forward's own checks still apply.
    let bad = SelectiveScanParams {
        delta: &r.delta[1..],
        ..p
    };
    assert!(matches!(
        run(&bad, &r.d_out, dh, 4),
        SsmError::Shape { arg: "delta", .. }
    ));
    // And through the public entry point.
    let err = crate::selective_scan_backward(
        &p,
        &r.d_out[2..],
        dh,
        crate::Backend::Cpu(crate::CpuOptions::default()),
    )
    .unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "d_out", .. }));
}
