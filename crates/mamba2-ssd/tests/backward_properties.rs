//! Property tests of the CPU backward, on random shapes and options that shrink on
//! failure: chunked backward == f64 adjoint for every chunk size, and gradients of
//! a sequence split with state carry == gradients of the whole. 64 cases per
//! property by default (CI speed); `SSM_PROPTEST_CASES=N` for more.

mod backward_support;
mod cpu_support;
#[path = "../../mamba1-scan/tests/support/proptest_cases.rs"]
mod proptest_cases;

use backward_support::{incoming, judge, judge_against, window};
use cpu_support::{dims, Case, DKind, Options, Steps};
use half::bf16;
use mamba2_ssd::backward_cpu::ssd_backward_chunked;
use mamba2_ssd::cpu::ssd_chunked;
use proptest::prelude::*;
use ssm_core::Element;

/// A random problem: shape, options, steps, seed.
#[derive(Clone, Debug)]
struct Spec {
    batch: usize,
    seqlen: usize,
    heads: usize,
    groups: usize,
    head_dim: usize,
    d_state: usize,
    opts: Options,
    seed: u64,
}

impl Spec {
    fn case(&self) -> Case {
        let d = dims(
            self.batch,
            self.seqlen,
            self.heads,
            self.head_dim,
            self.d_state,
            self.groups,
        );
        Case::new(d, self.opts.clone(), self.seed)
    }
}

fn chunk_size() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..=48, 1 => prop::sample::select(vec![64usize, 128, 256])]
}

fn options() -> impl Strategy<Value = Options> {
    (
        any::<[bool; 6]>(),
        prop::option::of(prop::bool::ANY),
        prop::sample::select(vec![Steps::Typical, Steps::Spiky, Steps::Large]),
    )
        .prop_map(|(on, d, steps)| Options {
            dt_bias: on[0],
            dt_softplus: on[1],
            dt_limit: on[2].then_some((1e-3, 0.5)),
            d: d.map(|per_dim| {
                if per_dim {
                    DKind::PerHeadDim
                } else {
                    DKind::PerHead
                }
            }),
            z: on[3],
            initial_states: on[4],
            final_states: on[5],
            cu_seqlens: None,
            steps,
        })
}

/// Shapes up to L = 64, H = 4, P = 8, N = 12; a varlen split of a batch-1 row
/// (boundaries anywhere, empty sequences included) one time in three.
fn spec() -> impl Strategy<Value = Spec> {
    (
        1usize..=2,
        1usize..=64,
        prop::sample::select(vec![(1usize, 1usize), (2, 1), (2, 2), (4, 2), (4, 1)]),
        1usize..=8,
        1usize..=12,
        options(),
        any::<u64>(),
        prop::collection::vec(0.0f64..1.0, 0..4),
        prop::bool::weighted(0.33),
    )
        .prop_map(
            |(batch, seqlen, (heads, groups), head_dim, d_state, mut opts, seed, cuts, varlen)| {
                let batch = if varlen { 1 } else { batch };
                if varlen {
                    let mut cu: Vec<i64> =
                        cuts.iter().map(|f| (f * seqlen as f64) as i64).collect();
                    cu.push(0);
                    cu.push(seqlen as i64);
                    cu.sort_unstable();
                    opts.cu_seqlens = Some(cu);
                }
                Spec {
                    batch,
                    seqlen,
                    heads,
                    groups,
                    head_dim,
                    d_state,
                    opts,
                    seed,
                }
            },
        )
}

fn chunked_equals_adjoint<T: Element>(spec: &Spec, chunk: usize) -> Result<(), TestCaseError> {
    let case = spec.case();
    let r = case.rounded::<T>();
    let inc = incoming::<T>(&case, spec.seed);
    let failed: Vec<_> = judge(&case, &r, &inc, chunk)
        .into_iter()
        .filter(|c| !c.passed)
        .collect();
    prop_assert!(failed.is_empty(), "{} Q={chunk}: {failed:?}", T::DTYPE);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_cases::config(64, Some(500)))]

    #[test]
    fn chunked_backward_equals_adjoint_f32(spec in spec(), chunk in chunk_size()) {
        chunked_equals_adjoint::<f32>(&spec, chunk)?;
    }

    #[test]
    fn chunked_backward_equals_adjoint_bf16(spec in spec(), chunk in chunk_size()) {
        chunked_equals_adjoint::<bf16>(&spec, chunk)?;
    }

    /// Split one sequence at `m` (forward: the first part's final state starts the
    /// second; backward: the second part's initial-state gradient is the first's
    /// final-state gradient): the joined gradients are the whole's, within the
    /// budgets against the whole's oracle, and at chunk-aligned splits bit for bit
    /// the whole's per-token gradients.
    #[test]
    fn split_with_state_carry_equals_whole(
        spec in spec(),
        chunk in chunk_size(),
        at in 0.0f64..1.0,
    ) {
        let mut spec = spec;
        spec.batch = 1;
        spec.seqlen = spec.seqlen.max(2);
        spec.opts.cu_seqlens = None;
        spec.opts.final_states = true;
        spec.opts.initial_states = true;
        let case = spec.case();
        let m = 1 + ((spec.seqlen - 1) as f64 * at) as usize; // 1..seqlen-1
        let r = case.rounded::<f32>();
        let inc = incoming::<f32>(&case, spec.seed);
        let p = case.params(&r);
        let whole = ssd_backward_chunked(&p, &inc.d_out, inc.d_final.as_deref(), chunk).unwrap();

        let first = window(&case, 0, 0, m, Some(case.initial_states.clone()));
        let r1 = first.rounded::<f32>();
        let mid = ssd_chunked(&first.params(&r1), chunk).unwrap().final_states.unwrap();
        let second = window(&case, 0, m, spec.seqlen, Some(mid));
        let r2 = second.rounded::<f32>();
        let width = spec.heads * spec.head_dim;
        let g2 = ssd_backward_chunked(&second.params(&r2), &inc.d_out[m * width..], inc.d_final.as_deref(), chunk).unwrap();
        let carried = g2.dinitial_states.clone().unwrap();
        let g1 = ssd_backward_chunked(&first.params(&r1), &inc.d_out[..m * width], Some(&carried), chunk).unwrap();
        let joined = backward_support::concatenate(&[g1, g2]);

        let oracle = ssm_reference::ssd_backward::ssd_backward_detailed(&p, &inc.d_out, inc.d_final.as_deref()).unwrap();
        let failed: Vec<_> = judge_against(
            &p,
            &inc.d_out,
            inc.d_final.as_deref(),
            &joined.to_f64(),
            &oracle,
            chunk,
        )
            .into_iter()
            .filter(|c| !c.passed)
            .collect();
        prop_assert!(failed.is_empty(), "split at {m} Q={chunk}: {failed:?}");
        if m % chunk == 0 {
            prop_assert_eq!(&joined.dx, &whole.dx);
            prop_assert_eq!(&joined.ddt, &whole.ddt);
            prop_assert_eq!(&joined.db, &whole.db);
            prop_assert_eq!(&joined.dc, &whole.dc);
            prop_assert_eq!(&joined.dinitial_states, &whole.dinitial_states);
        }
    }
}
