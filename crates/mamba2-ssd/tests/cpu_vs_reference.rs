//! The f32 CPU port against the f64 oracle (`ssm_reference`), fed the same
//! rounded inputs, within the budgets of `ssm_core::tolerance`.

mod cpu_support;

use cpu_support::{assert_dimension_error, chunked_log_decay, dims, Case, DKind, Options, Steps};
use half::{bf16, f16};
use mamba2_ssd::cpu::ssd_chunked;
use mamba2_ssd::decode_cpu::decode_step_cpu;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::decode::Mamba2StepParams;
use ssm_core::mamba2::DSkip;
use ssm_core::tolerance::{compare, rel_l2_budget, state_budget};
use ssm_core::{Element, SsmError};

/// Run the port and the oracle on `case` with inputs rounded to `T` and assert
/// the outputs and final states are within budget. Returns (out, state) errors.
fn check<T: Element>(name: &str, case: &Case, chunk: usize) -> (f64, Option<f64>) {
    let rounded = case.rounded::<T>();
    let p = case.params(&rounded);
    let got = ssd_chunked(&p, chunk).expect("valid problem").to_f64();
    let want = ssm_reference::ssd_recurrence(&p).expect("valid problem");
    let k = chunked_log_decay(&p, chunk);

    let out = compare(&got.out, &want.out);
    let budget = rel_l2_budget(T::DTYPE, k);
    eprintln!(
        "{name} [{} Q={chunk}]: out rel_l2 {:.3e} max_abs {:.3e} (budget {budget:.3e}, K {k:.1})",
        T::DTYPE,
        out.rel_l2,
        out.max_abs
    );
    assert!(
        out.passes(budget),
        "{name}: output {out:?} over budget {budget:.3e}"
    );

    let state_err = match (&got.final_states, &want.final_states) {
        (Some(g), Some(w)) => {
            let s = compare(g, w);
            let budget = state_budget(k);
            eprintln!(
                "{name} [{} Q={chunk}]: final states rel_l2 {:.3e} (budget {budget:.3e})",
                T::DTYPE,
                s.rel_l2
            );
            assert!(
                s.passes(budget),
                "{name}: final states {s:?} over budget {budget:.3e}"
            );
            Some(s.rel_l2)
        }
        (None, None) => None,
        (g, w) => panic!(
            "{name}: final states present in port {} / oracle {}",
            g.is_some(),
            w.is_some()
        ),
    };
    assert_eq!(got.final_states.is_some(), case.opts.final_states);
    (out.rel_l2, state_err)
}

fn check_all_dtypes(name: &str, case: &Case, chunk: usize) {
    check::<f32>(name, case, chunk);
    check::<f16>(name, case, chunk);
    check::<bf16>(name, case, chunk);
}

#[test]
fn plain_problem() {
    let case = Case::new(dims(2, 50, 4, 8, 16, 1), Options::default(), 1);
    check_all_dtypes("plain", &case, 16);
}

#[test]
fn every_option_at_once() {
    let case = Case::new(dims(2, 45, 4, 8, 12, 2), Options::all(), 2);
    check_all_dtypes("all options", &case, 16);
}

#[test]
fn d_per_head_and_per_head_dim() {
    for (kind, seed) in [(DKind::PerHead, 3), (DKind::PerHeadDim, 4)] {
        let opts = Options {
            d: Some(kind),
            ..Options::default()
        };
        let case = Case::new(dims(1, 40, 4, 8, 8, 1), opts, seed);
        check::<f32>(&format!("D {kind:?}"), &case, 16);
    }
}

#[test]
fn two_groups_of_two_heads() {
    let opts = Options {
        z: true,
        final_states: true,
        ..Options::default()
    };
    let case = Case::new(dims(2, 33, 4, 8, 16, 2), opts, 5);
    check_all_dtypes("G=2 H=4", &case, 8);
}

#[test]
fn chunk_sizes_including_one_and_longer_than_the_sequence() {
    let case = Case::new(dims(1, 37, 2, 8, 8, 1), Options::all(), 6);
    for chunk in [1, 3, 16, 64, 1000] {
        check::<f32>("chunk sweep", &case, chunk);
    }
}

#[test]
fn single_token_sequences() {
    let case = Case::new(dims(3, 1, 2, 4, 8, 1), Options::all(), 7);
    for chunk in [1, 4] {
        check_all_dtypes("L=1", &case, chunk);
    }
}

#[test]
fn state_size_not_a_power_of_two() {
    let case = Case::new(dims(1, 29, 2, 12, 13, 1), Options::all(), 8);
    check::<f32>("N=13 P=12", &case, 8);
}

#[test]
fn varlen_with_empty_and_single_token_sequences_and_initial_states() {
    // Boundaries fall inside chunks; an empty sequence at the start and one inside,
    // a length-1 sequence, and one longer than a chunk.
    let cu = vec![0i64, 0, 1, 14, 14, 31, 40];
    let opts = Options {
        cu_seqlens: Some(cu),
        ..Options::all()
    };
    let case = Case::new(dims(1, 40, 4, 8, 8, 2), opts, 9);
    for chunk in [1, 5, 16, 64] {
        check::<f32>("varlen", &case, chunk);
    }
    check::<bf16>("varlen", &case, 16);
    check::<f16>("varlen", &case, 16);
}

#[test]
fn varlen_final_state_of_an_empty_sequence_is_its_initial_state() {
    let opts = Options {
        cu_seqlens: Some(vec![0, 3, 3, 5]),
        ..Options::all()
    };
    let case = Case::new(dims(1, 5, 2, 4, 3, 1), opts, 10);
    let r = case.rounded::<f32>();
    let got = ssd_chunked(&case.params(&r), 2).unwrap();
    let states = got.final_states.unwrap();
    let state_len = 2 * 4 * 3;
    assert_eq!(
        &states[state_len..2 * state_len],
        &case.initial_states[state_len..2 * state_len]
    );
}

#[test]
fn large_steps_stay_within_the_budget() {
    // dt' = softplus(randn) + U(0, 10), A down to -8: per-step log-decays up to
    // ~-100 and cumulative sums of thousands inside a chunk.
    let case = Case::new(dims(2, 150, 4, 8, 16, 1), Options::large_steps(), 11);
    for chunk in [16, 64] {
        check::<f32>("large dt", &case, chunk);
    }
    check::<bf16>("large dt", &case, 64);
    // The same with varlen boundaries and softplus on the raw values.
    let opts = Options {
        steps: Steps::Large,
        dt_softplus: true,
        cu_seqlens: Some(vec![0, 70, 71, 150]),
        initial_states: true,
        final_states: true,
        ..Options::default()
    };
    let case = Case::new(dims(1, 150, 2, 8, 16, 1), opts, 12);
    check::<f32>("large dt varlen", &case, 64);
}

#[test]
fn spiky_steps_stay_within_the_budget() {
    // Large cumulative sums with moderate decays between spikes: the case the
    // K term of the budget is for.
    let opts = Options {
        steps: Steps::Spiky,
        initial_states: true,
        final_states: true,
        ..Options::default()
    };
    let case = Case::new(dims(1, 256, 4, 16, 16, 1), opts, 15);
    for chunk in [16, 64, 256] {
        check::<f32>("spiky dt", &case, chunk);
    }
}

#[test]
fn model_sized_heads() {
    // P = 64 and 40 take the full-width register blocks of the matmuls
    // (the small cases above only reach the narrow ones).
    for (p, n, seed) in [(64, 64, 16), (40, 48, 17)] {
        let case = Case::new(dims(1, 150, 2, p, n, 1), Options::all(), seed);
        check::<f32>(&format!("P={p} N={n}"), &case, 64);
        check::<bf16>(&format!("P={p} N={n}"), &case, 64);
    }
}

#[test]
fn zero_chunk_size_is_rejected_by_name() {
    let case = Case::new(dims(1, 4, 1, 2, 2, 1), Options::default(), 13);
    let r = case.rounded::<f32>();
    let err = ssd_chunked(&case.params(&r), 0).unwrap_err();
    assert_dimension_error(&err, "chunk_size");
}

#[test]
fn invalid_parameters_are_errors_not_panics() {
    let case = Case::new(dims(1, 4, 2, 2, 2, 1), Options::default(), 14);
    let r = case.rounded::<f32>();
    let p = case.params(&r);
    let short = &r.x[1..];
    let err = ssd_chunked(&ssm_core::mamba2::SsdParams { x: short, ..p }, 4).unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "x", .. }), "{err}");
    let bad_cu = [0i64, 5];
    let err = ssd_chunked(&p.with_cu_seqlens(&bad_cu), 4).unwrap_err();
    assert!(matches!(err, SsmError::CuSeqlens { .. }), "{err}");
}

// ---------------------------------------------------------------- decode step

/// A random decode problem over a cache of `cache_rows` rows.
struct StepCase {
    batch: usize,
    heads: usize,
    head_dim: usize,
    d_state: usize,
    groups: usize,
    cache_rows: usize,
    x: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    z: Vec<f32>,
    d: Vec<f32>,
    dt_bias: Vec<f32>,
    state: Vec<f32>,
}

impl StepCase {
    fn new(
        batch: usize,
        heads: usize,
        head_dim: usize,
        d_state: usize,
        groups: usize,
        cache_rows: usize,
        seed: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut randn = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect()
        };
        let x = randn(batch * heads * head_dim);
        let dt = randn(batch * heads).iter().map(|v| v - 2.0).collect();
        let b = randn(batch * groups * d_state);
        let c = randn(batch * groups * d_state);
        let z = randn(batch * heads * head_dim);
        let d = randn(heads * head_dim);
        let state = randn(cache_rows * heads * head_dim * d_state);
        let a = randn(heads).iter().map(|v| -(v * 0.5).exp()).collect();
        let dt_bias = randn(heads).iter().map(|v| v * 0.3).collect();
        StepCase {
            batch,
            heads,
            head_dim,
            d_state,
            groups,
            cache_rows,
            x,
            dt,
            a,
            b,
            c,
            z,
            d,
            dt_bias,
            state,
        }
    }
}

/// Steps the port (f32 cache) and the oracle (f64 cache) `steps` times from the
/// same cache, then checks outputs, updated rows, untouched rows and padding.
fn check_step<T: Element>(
    case: &StepCase,
    indices: Option<&[i64]>,
    all_options: bool,
    steps: usize,
) {
    let x: Vec<T> = ssm_core::element::round_slice(&case.x);
    let dt: Vec<T> = ssm_core::element::round_slice(&case.dt);
    let b: Vec<T> = ssm_core::element::round_slice(&case.b);
    let c: Vec<T> = ssm_core::element::round_slice(&case.c);
    let z: Vec<T> = ssm_core::element::round_slice(&case.z);
    let mut p = Mamba2StepParams::new(
        case.batch,
        case.heads,
        case.head_dim,
        case.d_state,
        case.groups,
        &x,
        &dt,
        &case.a,
        &b,
        &c,
    );
    p.cache_rows = case.cache_rows;
    p.state_batch_indices = indices;
    p.check_finite = true;
    if all_options {
        p.d = Some(DSkip::PerHeadDim(&case.d));
        p.z = Some(&z);
        p.dt_bias = Some(&case.dt_bias);
        p.dt_softplus = true;
        p.dt_limit = (1e-3, 1.0);
    } else {
        // Without softplus the raw dt must be a valid (positive) step.
        p.dt_limit = (1e-3, f32::INFINITY);
    }
    let mut state = case.state.clone();
    let mut ref_state: Vec<f64> = case.state.iter().map(|&v| v as f64).collect();
    for step in 0..steps {
        let got = decode_step_cpu(&p, &mut state).expect("valid step");
        let want = ssm_reference::mamba2_step(&p, &mut ref_state).expect("valid step");
        let got: Vec<f64> = got.out.iter().map(|v| v.to_f64()).collect();
        let out = compare(&got, &want.out);
        let budget = rel_l2_budget(T::DTYPE, 0.0);
        eprintln!(
            "decode [{} step {step} opts {all_options}]: out rel_l2 {:.3e}",
            T::DTYPE,
            out.rel_l2
        );
        assert!(out.passes(budget), "decode out {out:?} over {budget:.3e}");
        let row = case.heads * case.head_dim;
        for i in 0..case.batch {
            if ssm_core::decode::cache_row(indices, i).is_none() {
                assert!(
                    got[i * row..(i + 1) * row].iter().all(|&v| v == 0.0),
                    "padding row {i} output"
                );
            }
        }
    }
    let state_f64: Vec<f64> = state.iter().map(|&v| v as f64).collect();
    let s = compare(&state_f64, &ref_state);
    eprintln!("decode [{}]: state rel_l2 {:.3e}", T::DTYPE, s.rel_l2);
    assert!(s.passes(state_budget(0.0)), "decode state {s:?}");
    // Rows nobody points at are bit-for-bit untouched.
    let row_len = case.heads * case.head_dim * case.d_state;
    for r in 0..case.cache_rows {
        let used = match indices {
            None => true,
            Some(idx) => idx.contains(&(r as i64)),
        };
        if !used {
            assert_eq!(
                &state[r * row_len..(r + 1) * row_len],
                &case.state[r * row_len..(r + 1) * row_len],
                "cache row {r} was touched"
            );
        }
    }
}

#[test]
fn decode_step_plain_and_all_options() {
    let case = StepCase::new(3, 4, 8, 16, 2, 3, 20);
    for all in [false, true] {
        check_step::<f32>(&case, None, all, 4);
        check_step::<bf16>(&case, None, all, 2);
        check_step::<f16>(&case, None, all, 2);
    }
}

#[test]
fn decode_step_with_state_indices_and_padding() {
    let case = StepCase::new(4, 4, 8, 13, 1, 7, 21);
    let indices = [5i64, -1, 0, 3];
    check_step::<f32>(&case, Some(&indices), true, 3);
    check_step::<bf16>(&case, Some(&indices), false, 1);
}

#[test]
fn decode_step_rejects_bad_indices() {
    let case = StepCase::new(2, 2, 2, 2, 1, 3, 22);
    let mut p = Mamba2StepParams::new(2, 2, 2, 2, 1, &case.x, &case.dt, &case.a, &case.b, &case.c);
    p.cache_rows = 3;
    let mut state = case.state.clone();
    let bad = [[0i64, 3], [1, 1]];
    for bad in &bad {
        p.state_batch_indices = Some(bad);
        assert!(decode_step_cpu(&p, &mut state).is_err());
    }
    assert_eq!(
        state, case.state,
        "a rejected call must not touch the cache"
    );
}
