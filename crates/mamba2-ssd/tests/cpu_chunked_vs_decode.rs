//! Two independent algorithms of the port checked against each other, without
//! the oracle: the chunked forward pass must equal the decode step applied one
//! token at a time from the same initial state (docs/DESIGN.md §1.3 is the same
//! recurrence). This also exercises `state_batch_indices` over a sequence.

mod cpu_support;

use cpu_support::{chunked_log_decay, dims, Case, Options, Steps};
use mamba2_ssd::cpu::ssd_chunked;
use mamba2_ssd::decode_cpu::decode_step_cpu;
use ssm_core::decode::Mamba2StepParams;
use ssm_core::mamba2::SsdParams;
use ssm_core::shape::segments;
use ssm_core::tolerance::{compare, rel_l2_budget};
use ssm_core::DType;

/// Run every sequence of `p` through `decode_step_cpu`, token by token, each
/// sequence owning row `seq` of a cache that starts from the initial states.
/// Returns `(out (b, L, H, P), final states)`.
fn by_decode_steps(p: &SsdParams<'_, f32>, num_seqs: usize) -> (Vec<f32>, Vec<f32>) {
    let d = p.dims;
    let (hp, gn) = (d.heads * d.head_dim, d.groups * d.d_state);
    let mut cache = match p.initial_states {
        Some(s0) => s0.to_vec(),
        None => vec![0.0; num_seqs * hp * d.d_state],
    };
    let mut out = vec![0f32; d.batch * d.seqlen * hp];
    let rows = if p.cu_seqlens.is_some() { 1 } else { d.batch };
    let mut seq = 0;
    for bi in 0..rows {
        for (start, end) in segments(p.cu_seqlens, d.seqlen) {
            let index = [seq as i64];
            for t in start..end {
                let tok = bi * d.seqlen + t;
                let mut step = Mamba2StepParams::new(
                    1,
                    d.heads,
                    d.head_dim,
                    d.d_state,
                    d.groups,
                    &p.x[tok * hp..(tok + 1) * hp],
                    &p.dt[tok * d.heads..(tok + 1) * d.heads],
                    p.a,
                    &p.b[tok * gn..(tok + 1) * gn],
                    &p.c[tok * gn..(tok + 1) * gn],
                );
                step.cache_rows = num_seqs;
                step.state_batch_indices = Some(&index);
                step.d = p.d;
                step.z = p.z.map(|z| &z[tok * hp..(tok + 1) * hp]);
                step.dt_bias = p.dt_bias;
                step.dt_softplus = p.dt_softplus;
                step.dt_limit = p.dt_limit;
                let y = decode_step_cpu(&step, &mut cache).expect("valid step");
                out[tok * hp..(tok + 1) * hp].copy_from_slice(&y.out);
            }
            seq += 1;
        }
    }
    (out, cache)
}

fn check(name: &str, case: &Case, chunk: usize) {
    let r = case.rounded::<f32>();
    let p = case.params(&r).with_final_states(true);
    let num_seqs = p.validate().unwrap().num_seqs;
    let chunked = ssd_chunked(&p, chunk).unwrap();
    let (out, states) = by_decode_steps(&p, num_seqs);
    let k = chunked_log_decay(&p, chunk);
    // Both sides carry their own f32 error, so the difference gets twice the budget.
    let budget = 2.0 * rel_l2_budget(DType::F32, k);
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let o = compare(&widen(&chunked.out), &widen(&out));
    let s = compare(
        &widen(chunked.final_states.as_deref().unwrap()),
        &widen(&states),
    );
    eprintln!(
        "{name} Q={chunk}: out rel_l2 {:.3e}, states rel_l2 {:.3e} (budget {budget:.3e})",
        o.rel_l2, s.rel_l2
    );
    assert!(o.passes(budget), "{name}: outputs differ: {o:?}");
    assert!(s.passes(budget), "{name}: final states differ: {s:?}");
}

#[test]
fn chunked_equals_token_by_token_decode() {
    let case = Case::new(dims(2, 41, 4, 16, 12, 2), Options::all(), 30);
    for chunk in [1, 8, 64] {
        check("all options", &case, chunk);
    }
}

#[test]
fn chunked_equals_decode_over_varlen_sequences() {
    let opts = Options {
        cu_seqlens: Some(vec![0, 5, 5, 6, 40]),
        steps: Steps::Spiky,
        ..Options::all()
    };
    let case = Case::new(dims(1, 40, 2, 8, 8, 1), opts, 31);
    for chunk in [3, 16] {
        check("varlen", &case, chunk);
    }
}
