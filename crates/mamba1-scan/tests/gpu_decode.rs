//! The CUDA Mamba-1 decode step against the f64 oracle (`ssm_reference::mamba1_step`),
//! through the harness both families share (`crates/gpu/tests/support/decode_harness.rs`:
//! random problems, the comparison, the table, the device-entry guards). Without
//! a GPU each test prints `SKIPPED` and passes (set `SSM_REQUIRE_GPU=1` to make
//! that a failure).

#[path = "../../gpu/tests/support/decode_harness.rs"]
mod harness;

use half::{bf16, f16};
use harness::{case, tiled, DOption, Options, Problem, Sizes, TestFamily};
use mamba1_scan::decode_cuda::{DecodeTiling, Mamba1Decode};
use rand::rngs::StdRng;
use rand::Rng;
use ssm_core::decode::Mamba1StepParams;
use ssm_core::Element;
use ssm_gpu::test_gpu_or_skip;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    batch: usize,
    d_inner: usize,
    d_state: usize,
    groups: usize,
}

impl Shape {
    fn m1(batch: usize, groups: usize) -> Self {
        Shape {
            batch,
            d_inner: 5120,
            d_state: 16,
            groups,
        }
    }
}

const ALL: Options = Options {
    dt_bias: true,
    dt_softplus: true,
    dt_limit: None,
    d: DOption::PerRow,
    z: true,
    indices: true,
};
/// The other half of each switch: softplus without bias, D without z.
const MIXED: Options = Options {
    dt_bias: false,
    dt_softplus: true,
    dt_limit: None,
    d: DOption::PerRow,
    z: false,
    indices: true,
};
const PLAIN: Options = Options::PLAIN;

impl TestFamily for Mamba1Decode {
    const TAG: &'static str = "m1";
    const D_PER_ROW: &'static str = "D";
    type Shape = Shape;

    fn batch(s: &Shape) -> usize {
        s.batch
    }
    fn state_size(s: &Shape) -> usize {
        s.d_state
    }
    fn describe(s: &Shape) -> String {
        format!(
            "b={} D_in={} N={} G={}",
            s.batch, s.d_inner, s.d_state, s.groups
        )
    }
    fn sizes(s: &Shape) -> Sizes {
        Sizes {
            out_row: s.d_inner,
            dt_row: s.d_inner,
            bc_row: s.groups * s.d_state,
            per_row: s.d_inner,
            per_head_dim: s.d_inner,
            state_row: s.d_inner * s.d_state,
        }
    }
    /// A < 0 with |A| between 0.5 and 16 (Mamba-1 initialises A = -(1..=N)).
    fn random_a(s: &Shape, rng: &mut StdRng) -> Vec<f32> {
        (0..s.d_inner * s.d_state)
            .map(|_| -rng.random_range(0.5f32.ln()..16f32.ln()).exp())
            .collect()
    }
    fn params<T: Element>(pr: &Problem<Self, T>) -> Mamba1StepParams<'_, T> {
        let s = pr.shape;
        let mut p = Mamba1StepParams::new(
            s.batch, s.d_inner, s.d_state, s.groups, &pr.x, &pr.dt, &pr.a, &pr.b, &pr.c,
        );
        p.cache_rows = pr.cache_rows;
        p.d = (pr.opts.d != DOption::Off).then_some(&pr.d[..]);
        p.z = pr.opts.z.then_some(&pr.z[..]);
        p.dt_bias = pr.opts.dt_bias.then_some(&pr.dt_bias[..]);
        p.dt_softplus = pr.opts.dt_softplus;
        p.state_batch_indices = pr.opts.indices.then_some(&pr.indices[..]);
        p
    }
    fn oracle<T: Element>(p: &Mamba1StepParams<'_, T>, state: &mut [f64]) -> Vec<f64> {
        ssm_reference::mamba1_step(p, state).expect("oracle").out
    }
}

type F = Mamba1Decode;

#[test]
fn m1_decode_batch_1() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_batch_1") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        cases.push(case::<F, f32>(Shape::m1(1, groups), PLAIN));
        cases.push(case::<F, f32>(Shape::m1(1, groups), ALL));
        cases.push(case::<F, bf16>(Shape::m1(1, groups), ALL));
        cases.push(case::<F, f16>(Shape::m1(1, groups), MIXED));
    }
    harness::run_all(&gpu, cases);
}

#[test]
fn m1_decode_batch_64() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_batch_64") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        for opts in [PLAIN, ALL, MIXED] {
            cases.push(case::<F, f32>(Shape::m1(64, groups), opts));
            cases.push(case::<F, bf16>(Shape::m1(64, groups), opts));
        }
        cases.push(case::<F, f16>(Shape::m1(64, groups), ALL));
    }
    harness::run_all(&gpu, cases);
}

#[test]
fn m1_decode_batch_256() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_batch_256") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        cases.push(case::<F, f32>(Shape::m1(256, groups), ALL));
        cases.push(case::<F, bf16>(Shape::m1(256, groups), ALL));
        cases.push(case::<F, bf16>(Shape::m1(256, groups), PLAIN));
        cases.push(case::<F, f16>(Shape::m1(256, groups), MIXED));
    }
    harness::run_all(&gpu, cases);
}

/// Shapes off the common path: odd N (scalar layouts, rows capped), channel
/// counts that leave a partial block, batches that leave a partial batch tile,
/// groups > 1 with few channels per group.
fn odd_shapes() -> [Shape; 6] {
    let shape = |batch, d_inner, d_state, groups| Shape {
        batch,
        d_inner,
        d_state,
        groups,
    };
    [
        shape(3, 100, 7, 4),
        shape(5, 66, 6, 3),
        shape(7, 96, 12, 2),
        shape(2, 40, 64, 1),
        shape(9, 33, 16, 3),
        shape(1, 1, 1, 1),
    ]
}

/// State sizes off the fast path (N not a multiple of 4, one lane per channel,
/// rows capped), channel counts that leave a partial block, batches that leave a
/// partial batch tile, groups > 1.
#[test]
fn m1_decode_odd_shapes() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_odd_shapes") else {
        return;
    };
    let mut cases = Vec::new();
    for s in odd_shapes() {
        cases.push(case::<F, f32>(s, ALL));
        cases.push(case::<F, bf16>(s, MIXED));
        cases.push(case::<F, f32>(s, PLAIN));
    }
    harness::run_all(&gpu, cases);
}

/// Every tiling the bench times computes the same function.
#[test]
fn m1_decode_bench_tilings() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_bench_tilings") else {
        return;
    };
    let mut cases = Vec::new();
    for t in DecodeTiling::candidates() {
        cases.push(tiled::<F, bf16>(Shape::m1(19, 8), ALL, t));
        cases.push(tiled::<F, f32>(Shape::m1(19, 1), MIXED, t));
        // Staged B and C: blocks whose channels span 1, 2 (staged) and more
        // (just in time) groups, partial blocks and batch tiles, odd N.
        if t.bc_shared > 0 {
            for s in odd_shapes() {
                cases.push(tiled::<F, f32>(s, ALL, t));
            }
            cases.push(tiled::<F, f32>(Shape::m1(7, 80), ALL, t));
        }
    }
    harness::run_all(&gpu, cases);
}

/// The device entry point refuses what its kernel cannot do safely, and the kernel
/// itself never writes past the cache for an unchecked index.
#[test]
fn m1_decode_device_entry_guards() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_device_entry_guards") else {
        return;
    };
    let shape = Shape {
        batch: 2,
        d_inner: 64,
        d_state: 16,
        groups: 1,
    };
    harness::device_entry_guards::<F>(&gpu, shape, 8, 5);
}

/// f64 inputs have no kernel; the error says so instead of computing in f32.
#[test]
fn m1_decode_refuses_f64() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_refuses_f64") else {
        return;
    };
    harness::refuses_f64::<F>(&gpu, Shape::m1(1, 1));
}
