//! The CPU port against the f64 oracle (`ssm-reference`) on random problems
//! covering every option of the selective scan and of the decode step.
//!
//! Inputs are drawn in f32 and rounded once to the element type under test; the
//! oracle gets the very same rounded parameter struct, so the error measured is
//! the port's own f32 arithmetic plus the rounding of its output. Budgets are
//! those of `ssm_core::tolerance` with no cumulative-sum term: the port
//! exponentiates one step at a time.
//!
//! Run with `--nocapture` to see the errors measured per case and dtype.

use half::{bf16, f16};
use mamba1_scan::cpu::selective_scan_blocked;
use mamba1_scan::decode_cpu::decode_step_cpu;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ssm_core::decode::Mamba1StepParams;
use ssm_core::element::{round_slice, widen};
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::tolerance::{compare, rel_l2_budget, state_budget, Comparison};
use ssm_core::{Element, SsmError};

// ------------------------------------------------------------------ problems

// Shape and options of a problem (`Case`), its f32 draw (`Data`) and its
// tensors rounded to the element type under test (`Rounded`): the backward
// tests' generator, so forward and backward are judged on the same inputs.
#[path = "support/scan_backward.rs"]
mod support;
use support::{randn, randn_vec, Case, Data, Rounded};

// ------------------------------------------------------------------ checks

/// Run the port with `block_len` and the oracle on `case`; assert both budgets
/// and return the output and final-state comparisons.
fn check_scan<T: Element>(
    case: &Case,
    seed: u64,
    block_len: usize,
) -> (Comparison, Option<Comparison>) {
    let data = Data::generate(case, seed);
    let inputs = Rounded::<T>::new(&data);
    let p = inputs.params(case, &data);
    let got = selective_scan_blocked(&p, block_len).expect("valid problem");
    let want = ssm_reference::selective_scan(&p).expect("valid problem");

    let out = compare(&widen(&got.out), &want.out);
    let budget = rel_l2_budget(T::DTYPE, 0.0);
    assert!(
        out.passes(budget),
        "{} out, block {block_len}: {out:?} > {budget:e} for {case:?}",
        T::DTYPE
    );
    let states = match (&got.final_states, &want.final_states) {
        (Some(got), Some(want)) => {
            let states = compare(&widen(got), want);
            assert!(
                states.passes(state_budget(0.0)),
                "{} final states, block {block_len}: {states:?} for {case:?}",
                T::DTYPE
            );
            Some(states)
        }
        (None, None) => None,
        (got, _) => panic!(
            "final states present: {}, requested: {}",
            got.is_some(),
            case.final_states
        ),
    };
    (out, states)
}

/// Check `case` in f32, f16 and bf16 and print the errors.
fn check_all_dtypes(name: &str, case: &Case, seed: u64, block_len: usize) {
    let f32_ = check_scan::<f32>(case, seed, block_len);
    let f16_ = check_scan::<f16>(case, seed, block_len);
    let bf16_ = check_scan::<bf16>(case, seed, block_len);
    let fmt = |(out, states): (Comparison, Option<Comparison>)| {
        let states = states.map_or("-".to_string(), |s| format!("{:.1e}", s.rel_l2));
        format!("out {:.1e} states {states}", out.rel_l2)
    };
    let block = match block_len {
        usize::MAX => "max".to_string(),
        b => b.to_string(),
    };
    eprintln!(
        "{name:<28} block {block:>4} | f32 {} | f16 {} | bf16 {}",
        fmt(f32_),
        fmt(f16_),
        fmt(bf16_)
    );
}

// ------------------------------------------------------------------ scan tests

#[test]
fn plain() {
    check_all_dtypes("plain", &Case::plain(2, 16, 4, 64), 1, 16);
}

#[test]
fn all_options() {
    let case = Case::all(2, 16, 8, 100);
    check_all_dtypes("all options", &case, 2, 32);
}

#[test]
fn all_options_large_steps() {
    let mut case = Case::all(2, 16, 8, 100);
    case.large_dt = true;
    check_all_dtypes("all options, dt up to 10", &case, 3, 32);
}

#[test]
fn constant_b_and_c() {
    let case = Case::all(2, 16, 6, 50).groups(None, None);
    check_all_dtypes("constant B and C", &case, 4, 16);
    let case = Case::all(2, 16, 6, 50).groups(None, Some(2));
    check_all_dtypes("constant B, C G=2", &case, 5, 16);
    let case = Case::plain(1, 16, 6, 50).groups(Some(4), None);
    check_all_dtypes("B G=4, constant C", &case, 6, 16);
}

#[test]
fn grouped_b_and_c() {
    let case = Case::all(2, 16, 8, 60).groups(Some(2), Some(2));
    check_all_dtypes("G=2", &case, 7, 16);
    // Different group counts for B and C: chunks must respect both boundaries.
    let case = Case::all(2, 24, 4, 40).groups(Some(2), Some(3));
    check_all_dtypes("B G=2, C G=3", &case, 8, 16);
}

#[test]
fn varlen_with_empty_and_single_step_sequences() {
    let mut case = Case::all(1, 16, 8, 50);
    // Empty first sequence, a long one, one of length 1, an empty one, the rest.
    case.cu = Some(vec![0, 0, 17, 18, 18, 50]);
    check_all_dtypes("varlen, all options", &case, 9, 7);
    case.h0 = false;
    case = case.groups(Some(2), Some(2));
    check_all_dtypes("varlen, no h0", &case, 10, 16);
}

#[test]
fn block_lengths() {
    let case = Case::all(2, 16, 4, 37);
    for block_len in [1, 7, 37, 64, usize::MAX] {
        check_all_dtypes("block length", &case, 11, block_len);
    }
}

#[test]
fn single_step() {
    let case = Case::all(3, 16, 4, 1);
    check_all_dtypes("L=1", &case, 12, 8);
}

#[test]
fn odd_state_and_channel_counts() {
    // N = 5 and 1 (not powers of two), D_in = 12 and 20 (partial lane groups).
    check_all_dtypes("N=5 D=12", &Case::all(2, 12, 5, 30), 13, 8);
    check_all_dtypes(
        "N=1 D=20 G=2",
        &Case::plain(2, 20, 1, 30).groups(Some(2), Some(2)),
        14,
        8,
    );
    check_all_dtypes("N=17 D=3", &Case::all(1, 3, 17, 30), 15, 8);
}

#[test]
fn many_chunks() {
    // Enough channels for several lane groups per task and several tasks per
    // group: 5 groups of 24 channels, batch 3.
    let case = Case::all(3, 120, 4, 24).groups(Some(5), Some(5));
    check_all_dtypes("D=120 G=5 b=3", &case, 16, 10);
}

#[test]
fn empty_sequence_returns_initial_states() {
    let case = Case::all(2, 8, 3, 0);
    let data = Data::generate(&case, 17);
    let inputs = Rounded::<f32>::new(&data);
    let got = selective_scan_blocked(&inputs.params(&case, &data), 4).unwrap();
    assert!(got.out.is_empty());
    assert_eq!(got.final_states.as_deref(), Some(&data.h0[..]));
}

#[test]
fn final_states_only_when_requested() {
    let mut case = Case::all(1, 8, 3, 10);
    case.final_states = false;
    let (_, states) = check_scan::<f32>(&case, 18, 4);
    assert!(states.is_none());
}

/// Blocking and threading change the order of the loops, not the arithmetic of
/// any channel: the results are bitwise identical.
#[test]
fn result_does_not_depend_on_blocking_or_threads() {
    let mut case = Case::all(1, 40, 5, 45).groups(Some(5), Some(5));
    case.cu = Some(vec![0, 20, 20, 21, 45]);
    let data = Data::generate(&case, 19);
    let inputs = Rounded::<bf16>::new(&data);
    let p = inputs.params(&case, &data);
    let run = |threads: usize, block_len: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| selective_scan_blocked(&p, block_len).unwrap())
    };
    let base = run(1, 1);
    for (threads, block_len) in [(1, 45), (3, 7), (2, 16), (5, 1000)] {
        assert_eq!(
            run(threads, block_len),
            base,
            "{threads} threads, block {block_len}"
        );
    }
}

/// A sequence longer than the largest tile the port holds at once, in one
/// requested block: still the oracle's answer, and the same bits as short blocks.
#[test]
fn very_long_block() {
    let case = Case::all(1, 8, 4, 5000);
    check_scan::<f32>(&case, 23, usize::MAX);
    let data = Data::generate(&case, 23);
    let inputs = Rounded::<f32>::new(&data);
    let p = inputs.params(&case, &data);
    assert_eq!(
        selective_scan_blocked(&p, usize::MAX).unwrap(),
        selective_scan_blocked(&p, 300).unwrap()
    );
}

#[test]
fn invalid_arguments_are_typed_errors() {
    let case = Case::plain(1, 8, 3, 10);
    let data = Data::generate(&case, 20);
    let inputs = Rounded::<f32>::new(&data);
    let p = inputs.params(&case, &data);
    let err = selective_scan_blocked(&p, 0).unwrap_err();
    assert!(
        matches!(
            err,
            SsmError::Dimension {
                arg: "block_len",
                ..
            }
        ),
        "{err}"
    );
    let bad = SelectiveScanParams {
        u: &inputs.u[1..],
        ..p
    };
    let err = selective_scan_blocked(&bad, 4).unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "u", .. }), "{err}");
}

// ------------------------------------------------------------------ decode tests

/// Inputs of one decode step, f32 draw.
struct StepData {
    x: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    z: Vec<f32>,
    dt_bias: Vec<f32>,
    state: Vec<f32>,
}

fn check_decode<T: Element>(seed: u64) -> (Comparison, Comparison) {
    let (batch, d_inner, d_state, groups, cache_rows) = (4, 16, 5, 2, 6);
    let indices = [3i64, -1, 0, 5];
    let mut rng = StdRng::seed_from_u64(seed);
    let bd = batch * d_inner;
    let data = StepData {
        x: randn_vec(&mut rng, bd),
        dt: (0..bd).map(|_| randn(&mut rng) - 4.0).collect(),
        a: (0..d_inner * d_state)
            .map(|_| -randn(&mut rng).clamp(-2.3, 2.0).exp())
            .collect(),
        b: randn_vec(&mut rng, batch * groups * d_state),
        c: randn_vec(&mut rng, batch * groups * d_state),
        d: randn_vec(&mut rng, d_inner),
        z: randn_vec(&mut rng, bd),
        dt_bias: (0..d_inner).map(|_| 0.5 * randn(&mut rng)).collect(),
        state: randn_vec(&mut rng, cache_rows * d_inner * d_state),
    };
    let round = |v: &[f32]| -> Vec<T> { round_slice(v) };
    let (x, dt, b, c, z) = (
        round(&data.x),
        round(&data.dt),
        round(&data.b),
        round(&data.c),
        round(&data.z),
    );
    let mut p = Mamba1StepParams::new(batch, d_inner, d_state, groups, &x, &dt, &data.a, &b, &c);
    p.cache_rows = cache_rows;
    p.d = Some(&data.d);
    p.z = Some(&z);
    p.dt_bias = Some(&data.dt_bias);
    p.dt_softplus = true;
    p.state_batch_indices = Some(&indices);

    let mut state = data.state.clone();
    let got = decode_step_cpu(&p, &mut state).unwrap();
    let mut want_state = widen(&data.state);
    let want = ssm_reference::mamba1_step(&p, &mut want_state).unwrap();

    // Padding row 1: zero output. Cache rows 1, 2 and 4 are nobody's: untouched.
    assert!(got.out[d_inner..2 * d_inner]
        .iter()
        .all(|&v| v == T::from_f32(0.0)));
    let row = d_inner * d_state;
    for r in [1, 2, 4] {
        assert_eq!(
            state[r * row..(r + 1) * row],
            data.state[r * row..(r + 1) * row]
        );
    }
    let out = compare(&widen(&got.out), &want.out);
    assert!(
        out.passes(rel_l2_budget(T::DTYPE, 0.0)),
        "{} decode out {out:?}",
        T::DTYPE
    );
    let states = compare(&widen(&state), &want_state);
    assert!(
        states.passes(state_budget(0.0)),
        "{} decode state {states:?}",
        T::DTYPE
    );
    (out, states)
}

#[test]
fn decode_step_matches_reference() {
    let (f32_, f16_, bf16_) = (
        check_decode::<f32>(21),
        check_decode::<f16>(21),
        check_decode::<bf16>(21),
    );
    let fmt = |(out, states): (Comparison, Comparison)| {
        format!("out {:.1e} states {:.1e}", out.rel_l2, states.rel_l2)
    };
    eprintln!(
        "{:<28}            | f32 {} | f16 {} | bf16 {}",
        "decode step",
        fmt(f32_),
        fmt(f16_),
        fmt(bf16_)
    );
}

/// A token decoded from the scan's final state is the scan's next output, bit
/// for bit: the decode step and the scan share their per-step arithmetic.
#[test]
fn decode_continues_the_scan_exactly() {
    let (d_inner, d_state, groups, len) = (16, 6, 2, 21);
    let case = Case::all(2, d_inner, d_state, len).groups(Some(groups), Some(groups));
    let data = Data::generate(&case, 22);
    let inputs = Rounded::<bf16>::new(&data);
    let full = selective_scan_blocked(&inputs.params(&case, &data), 8).unwrap();

    // The first len - 1 steps, then the last one as a decode step.
    // Rounding is per element: the window of the f32 draw, rounded, is the
    // window of the rounded tensors.
    let (prefix_case, prefix_data) = data.window(&case, 0..len - 1, 0..2);
    let prefix = Rounded::<bf16>::new(&prefix_data);
    let last = |v: &[bf16]| -> Vec<bf16> { v.chunks(len).map(|r| r[len - 1]).collect() };
    let mut state = selective_scan_blocked(&prefix.params(&prefix_case, &prefix_data), 8)
        .unwrap()
        .final_states
        .unwrap();

    let (x, dt, b, c, z) = (
        last(&inputs.u),
        last(&inputs.delta),
        last(&inputs.b),
        last(&inputs.c),
        last(&inputs.z),
    );
    let mut p = Mamba1StepParams::new(2, d_inner, d_state, groups, &x, &dt, &data.a, &b, &c);
    p.d = Some(&data.d);
    p.z = Some(&z);
    p.dt_bias = Some(&data.bias);
    p.dt_softplus = true;
    let step = decode_step_cpu(&p, &mut state).unwrap();

    assert_eq!(step.out, last(&full.out));
    assert_eq!(Some(state), full.final_states);
}
