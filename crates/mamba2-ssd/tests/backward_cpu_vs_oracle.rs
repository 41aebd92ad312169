//! The f32 chunked backward against the f64 adjoint, fed the same rounded inputs,
//! within the budgets of docs/TOLERANCES.md ("Backward"); split and varlen
//! identities; determinism; validation of every gradient input.

mod backward_support;
mod cpu_support;

use backward_support::{assert_passed, incoming, judge};
use cpu_support::{assert_dimension_error, dims, Case, DKind, Options, Steps};
use half::{bf16, f16};
use mamba2_ssd::backward_cpu::ssd_backward_chunked;
use mamba2_ssd::{ssd_backward, Backend, CpuOptions};
use ssm_core::{Element, SsmError};

fn check<T: Element>(what: &str, case: &Case, seed: u64, chunk: usize) {
    let r = case.rounded::<T>();
    let inc = incoming::<T>(case, seed);
    assert_passed(what, T::DTYPE, chunk, &judge(case, &r, &inc, chunk));
}

#[test]
fn every_option_every_dtype() {
    let case = Case::new(dims(2, 45, 4, 8, 12, 2), Options::all(), 1);
    check::<f32>("all options", &case, 1, 16);
    check::<f16>("all options", &case, 1, 16);
    check::<bf16>("all options", &case, 1, 16);
}

#[test]
fn no_options() {
    let case = Case::new(dims(2, 30, 2, 4, 8, 1), Options::default(), 2);
    check::<f32>("no options", &case, 2, 8);
}

#[test]
fn d_per_head_and_per_head_dim() {
    for (kind, seed) in [(DKind::PerHead, 3), (DKind::PerHeadDim, 4)] {
        let opts = Options {
            d: Some(kind),
            z: true,
            ..Options::default()
        };
        let case = Case::new(dims(1, 40, 4, 8, 8, 1), opts, seed);
        check::<f32>(&format!("D {kind:?}"), &case, seed, 16);
    }
}

#[test]
fn every_chunk_size_from_1_to_48_and_64_128_256() {
    let case = Case::new(dims(1, 70, 2, 4, 6, 1), Options::all(), 5);
    for chunk in (1..=48).chain([64, 128, 256]) {
        check::<f32>("chunk sweep", &case, 5, chunk);
    }
}

#[test]
fn single_token_sequences() {
    let case = Case::new(dims(3, 1, 2, 4, 8, 1), Options::all(), 6);
    for chunk in [1, 4] {
        check::<f32>("L=1", &case, 6, chunk);
        check::<bf16>("L=1", &case, 6, chunk);
    }
}

#[test]
fn varlen_with_empty_and_single_token_sequences() {
    let opts = Options {
        cu_seqlens: Some(vec![0i64, 0, 1, 14, 14, 31, 40]),
        ..Options::all()
    };
    let case = Case::new(dims(1, 40, 4, 8, 8, 2), opts, 7);
    for chunk in [1, 5, 16, 64] {
        check::<f32>("varlen", &case, 7, chunk);
    }
    check::<bf16>("varlen", &case, 7, 16);
}

#[test]
fn large_and_spiky_steps() {
    let large = Options::large_steps();
    let case = Case::new(dims(2, 100, 2, 8, 16, 1), large, 8);
    check::<f32>("large dt", &case, 8, 32);
    let spiky = Options {
        steps: Steps::Spiky,
        ..Options::all()
    };
    let case = Case::new(dims(1, 200, 2, 8, 16, 1), spiky, 9);
    for chunk in [16, 64, 256] {
        check::<f32>("spiky dt", &case, 9, chunk);
    }
}

#[test]
fn model_sized_heads() {
    let case = Case::new(dims(1, 130, 2, 64, 64, 1), Options::all(), 10);
    check::<f32>("P=64 N=64", &case, 10, 64);
    check::<bf16>("P=64 N=64", &case, 10, 64);
}

/// Gradients of a sequence split at `m` with the state carried (forward: the first
/// part's final state is the second's initial state; backward: the second part's
/// initial-state gradient is the first's final-state gradient) equal the whole's.
#[test]
fn split_with_state_carry_equals_whole() {
    let opts = Options {
        final_states: true,
        ..Options::all()
    };
    let case = Case::new(dims(1, 40, 2, 4, 6, 1), opts, 11);
    let r = case.rounded::<f32>();
    let inc = incoming::<f32>(&case, 11);
    let row = &case.initial_states;
    for (m, chunk) in [(16, 8), (24, 8), (13, 8), (1, 4), (39, 16)] {
        let whole =
            ssd_backward_chunked(&case.params(&r), &inc.d_out, inc.d_final.as_deref(), chunk)
                .unwrap();
        let first = backward_support::window(&case, 0, 0, m, Some(row.clone()));
        let r1 = first.rounded::<f32>();
        let mid = mamba2_ssd::cpu::ssd_chunked(&first.params(&r1), chunk)
            .unwrap()
            .final_states
            .unwrap();
        let second = backward_support::window(&case, 0, m, 40, Some(mid));
        let r2 = second.rounded::<f32>();
        let width = case.dims.heads * case.dims.head_dim;
        let g2 = ssd_backward_chunked(
            &second.params(&r2),
            &inc.d_out[m * width..],
            inc.d_final.as_deref(),
            chunk,
        )
        .unwrap();
        let carried = g2.dinitial_states.clone().unwrap();
        let g1 = ssd_backward_chunked(
            &first.params(&r1),
            &inc.d_out[..m * width],
            Some(&carried),
            chunk,
        )
        .unwrap();
        let joined = backward_support::concatenate(&[g1, g2]);
        let what = format!("split at {m}, Q={chunk}");
        if m % chunk == 0 {
            // Same chunks, same arithmetic: the per-token gradients are identical.
            backward_support::assert_grads_identical_per_token(&what, &joined, &whole);
        } else {
            backward_support::assert_grads_close(&what, &joined, &whole, 2e-6);
        }
    }
}

/// Varlen packing gives the gradients of separate runs, one per sequence.
#[test]
fn varlen_packing_equals_separate_runs() {
    let cu = vec![0i64, 5, 5, 6, 23, 40];
    let opts = Options {
        cu_seqlens: Some(cu.clone()),
        ..Options::all()
    };
    let case = Case::new(dims(1, 40, 4, 4, 6, 2), opts, 12);
    let r = case.rounded::<f32>();
    let inc = incoming::<f32>(&case, 12);
    let state = case.dims.heads * case.dims.head_dim * case.dims.d_state;
    let width = case.dims.heads * case.dims.head_dim;
    for chunk in [4, 16] {
        let packed =
            ssd_backward_chunked(&case.params(&r), &inc.d_out, inc.d_final.as_deref(), chunk)
                .unwrap();
        let mut parts = Vec::new();
        let mut d_init = Vec::new();
        for (s, w) in cu.windows(2).enumerate() {
            let (start, end) = (w[0] as usize, w[1] as usize);
            let seq = backward_support::window(
                &case,
                0,
                start,
                end,
                Some(case.initial_states[s * state..(s + 1) * state].to_vec()),
            );
            let rs = seq.rounded::<f32>();
            let d_final = &inc.d_final.as_ref().unwrap()[s * state..(s + 1) * state];
            let g = ssd_backward_chunked(
                &seq.params(&rs),
                &inc.d_out[start * width..end * width],
                Some(d_final),
                chunk,
            )
            .unwrap();
            d_init.extend(g.dinitial_states.clone().unwrap());
            parts.push(g);
        }
        let mut joined = backward_support::concatenate(&parts);
        joined.dinitial_states = Some(d_init);
        backward_support::assert_grads_identical_per_token(
            &format!("varlen Q={chunk}"),
            &joined,
            &packed,
        );
    }
}

/// The same input gives bit-identical gradients, run after run and whatever the
/// number of threads (fixed reduction order, no atomics).
#[test]
fn deterministic_across_runs_and_thread_counts() {
    let case = Case::new(dims(2, 77, 4, 8, 12, 2), Options::all(), 13);
    let r = case.rounded::<bf16>();
    let inc = incoming::<bf16>(&case, 13);
    let p = case.params(&r);
    let run = || ssd_backward_chunked(&p, &inc.d_out, inc.d_final.as_deref(), 16).unwrap();
    let first = run();
    assert_eq!(first, run());
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(first, pool.install(run), "{threads} threads");
    }
}

/// Every gradient input is validated through the public API with a typed error
/// naming it and its shape; the CUDA backend's absence is typed too.
#[test]
fn gradient_inputs_are_validated() {
    let case = Case::new(dims(2, 6, 2, 4, 3, 1), Options::all(), 14);
    let r = case.rounded::<f32>();
    let inc = incoming::<f32>(&case, 14);
    let p = case.params(&r);
    let cpu = Backend::Cpu(CpuOptions { chunk_size: 4 });
    let d_final = inc.d_final.as_deref();
    assert!(ssd_backward(&p, &inc.d_out, d_final, cpu).is_ok());
    let err = ssd_backward(&p, &inc.d_out[1..], d_final, cpu).unwrap_err();
    assert!(
        matches!(&err, SsmError::Shape { arg: "d_out", expected, .. } if expected == "(b=2, L=6, H=2, P=4)"),
        "{err}"
    );
    let err = ssd_backward(&p, &inc.d_out, Some(&d_final.unwrap()[1..]), cpu).unwrap_err();
    assert!(
        matches!(&err, SsmError::Shape { arg: "d_final_states", expected, .. } if expected == "(b=2, H=2, P=4, N=3)"),
        "{err}"
    );
    let err = ssd_backward(&p.with_final_states(false), &inc.d_out, d_final, cpu).unwrap_err();
    assert_dimension_error(&err, "d_final_states");
    let mut bad = inc.d_out.clone();
    bad[5] = f32::NAN;
    let err = ssd_backward(&p, &bad, d_final, cpu).unwrap_err();
    assert!(
        matches!(
            err,
            SsmError::NonFinite {
                arg: "d_out",
                index: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = ssd_backward(
        &p,
        &inc.d_out,
        d_final,
        Backend::Cpu(CpuOptions { chunk_size: 0 }),
    )
    .unwrap_err();
    assert_dimension_error(&err, "chunk_size");
    // Forward parameters are validated first, as in the forward.
    let err = ssd_backward(
        &ssm_core::mamba2::SsdParams { b: &r.b[1..], ..p },
        &inc.d_out,
        d_final,
        cpu,
    )
    .unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "B", .. }), "{err}");
    // Without final states the incoming final-state gradient may be left out.
    assert!(ssd_backward(&p.with_final_states(false), &inc.d_out, None, cpu).is_ok());
}
