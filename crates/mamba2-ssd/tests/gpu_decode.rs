//! The CUDA Mamba-2 decode step against the f64 oracle (`ssm_reference::mamba2_step`),
//! through the harness both families share (`crates/gpu/tests/support/decode_harness.rs`:
//! random problems, the comparison, the table, the device-entry guards). Without
//! a GPU each test prints `SKIPPED` and passes (set `SSM_REQUIRE_GPU=1` to make
//! that a failure).

#[path = "../../gpu/tests/support/decode_harness.rs"]
mod harness;

use half::{bf16, f16};
use harness::{case, tiled, DOption, Options, Problem, Sizes, TestFamily};
use mamba2_ssd::decode_cuda::{DecodeTiling, Mamba2Decode};
use rand::rngs::StdRng;
use rand::Rng;
use ssm_core::decode::Mamba2StepParams;
use ssm_core::mamba2::DSkip;
use ssm_core::Element;
use ssm_gpu::test_gpu_or_skip;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    batch: usize,
    heads: usize,
    head_dim: usize,
    d_state: usize,
    groups: usize,
}

impl Shape {
    fn m2(batch: usize, groups: usize) -> Self {
        Shape {
            batch,
            heads: 80,
            head_dim: 64,
            d_state: 128,
            groups,
        }
    }
}

const ALL: Options = Options {
    dt_bias: true,
    dt_softplus: true,
    dt_limit: Some((5e-3, 0.5)),
    d: DOption::PerHeadDim,
    z: true,
    indices: true,
};
/// The other half of each switch: D per head, softplus without bias or limit.
const MIXED: Options = Options {
    dt_bias: false,
    dt_softplus: true,
    dt_limit: None,
    d: DOption::PerRow,
    z: true,
    indices: true,
};
const PLAIN: Options = Options::PLAIN;

impl TestFamily for Mamba2Decode {
    const TAG: &'static str = "m2";
    const D_PER_ROW: &'static str = "D(H)";
    type Shape = Shape;

    fn batch(s: &Shape) -> usize {
        s.batch
    }
    fn state_size(s: &Shape) -> usize {
        s.d_state
    }
    fn describe(s: &Shape) -> String {
        format!(
            "b={} H={} P={} N={} G={}",
            s.batch, s.heads, s.head_dim, s.d_state, s.groups
        )
    }
    fn sizes(s: &Shape) -> Sizes {
        Sizes {
            out_row: s.heads * s.head_dim,
            dt_row: s.heads,
            bc_row: s.groups * s.d_state,
            per_row: s.heads,
            per_head_dim: s.heads * s.head_dim,
            state_row: s.heads * s.head_dim * s.d_state,
        }
    }
    /// A < 0 with |A| between 1 and 16.
    fn random_a(s: &Shape, rng: &mut StdRng) -> Vec<f32> {
        (0..s.heads)
            .map(|_| -rng.random_range(0.0f32..16f32.ln()).exp())
            .collect()
    }
    fn params<T: Element>(pr: &Problem<Self, T>) -> Mamba2StepParams<'_, T> {
        let s = pr.shape;
        let mut p = Mamba2StepParams::new(
            s.batch, s.heads, s.head_dim, s.d_state, s.groups, &pr.x, &pr.dt, &pr.a, &pr.b, &pr.c,
        );
        p.cache_rows = pr.cache_rows;
        p.d = match pr.opts.d {
            DOption::Off => None,
            DOption::PerRow => Some(DSkip::PerHead(&pr.d)),
            DOption::PerHeadDim => Some(DSkip::PerHeadDim(&pr.d)),
        };
        p.z = pr.opts.z.then_some(&pr.z[..]);
        p.dt_bias = pr.opts.dt_bias.then_some(&pr.dt_bias[..]);
        p.dt_softplus = pr.opts.dt_softplus;
        if let Some(limit) = pr.opts.dt_limit {
            p.dt_limit = limit;
        }
        p.state_batch_indices = pr.opts.indices.then_some(&pr.indices[..]);
        p
    }
    fn oracle<T: Element>(p: &Mamba2StepParams<'_, T>, state: &mut [f64]) -> Vec<f64> {
        ssm_reference::mamba2_step(p, state).expect("oracle").out
    }
}

type F = Mamba2Decode;

#[test]
fn m2_decode_batch_1() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_batch_1") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        cases.push(case::<F, f32>(Shape::m2(1, groups), PLAIN));
        cases.push(case::<F, f32>(Shape::m2(1, groups), ALL));
        cases.push(case::<F, bf16>(Shape::m2(1, groups), ALL));
        cases.push(case::<F, f16>(Shape::m2(1, groups), MIXED));
    }
    harness::run_all(&gpu, cases);
}

#[test]
fn m2_decode_batch_64() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_batch_64") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        for opts in [PLAIN, ALL, MIXED] {
            cases.push(case::<F, f32>(Shape::m2(64, groups), opts));
            cases.push(case::<F, bf16>(Shape::m2(64, groups), opts));
        }
        cases.push(case::<F, f16>(Shape::m2(64, groups), ALL));
    }
    harness::run_all(&gpu, cases);
}

#[test]
fn m2_decode_batch_256() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_batch_256") else {
        return;
    };
    let cases = vec![
        case::<F, f32>(Shape::m2(256, 1), ALL),
        case::<F, bf16>(Shape::m2(256, 8), ALL),
        case::<F, bf16>(Shape::m2(256, 1), PLAIN),
        case::<F, f16>(Shape::m2(256, 8), MIXED),
    ];
    harness::run_all(&gpu, cases);
}

/// State sizes off the fast path (N not a multiple of 4, lanes per row < 32, rows
/// capped), head dims that leave a partial row tile, groups > 1.
#[test]
fn m2_decode_odd_shapes() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_odd_shapes") else {
        return;
    };
    let shape = |batch, heads, head_dim, d_state, groups| Shape {
        batch,
        heads,
        head_dim,
        d_state,
        groups,
    };
    let mut cases = Vec::new();
    for s in [
        shape(3, 6, 50, 7, 3),
        shape(5, 4, 33, 6, 2),
        shape(2, 8, 48, 64, 4),
        shape(4, 2, 64, 256, 1),
        shape(9, 3, 17, 12, 3),
        shape(1, 1, 1, 1, 1),
    ] {
        cases.push(case::<F, f32>(s, ALL));
        cases.push(case::<F, bf16>(s, MIXED));
        cases.push(case::<F, f32>(s, PLAIN));
    }
    harness::run_all(&gpu, cases);
}

/// Every tiling the bench times computes the same function.
#[test]
fn m2_decode_bench_tilings() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_bench_tilings") else {
        return;
    };
    let mut cases = Vec::new();
    for t in DecodeTiling::candidates() {
        cases.push(tiled::<F, bf16>(Shape::m2(16, 8), ALL, t));
        cases.push(tiled::<F, f32>(Shape::m2(16, 1), MIXED, t));
    }
    harness::run_all(&gpu, cases);
}

/// The device entry point refuses what its kernel cannot do safely, and the kernel
/// itself never writes past the cache for an unchecked index.
#[test]
fn m2_decode_device_entry_guards() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_device_entry_guards") else {
        return;
    };
    let shape = Shape {
        batch: 2,
        heads: 4,
        head_dim: 8,
        d_state: 16,
        groups: 1,
    };
    harness::device_entry_guards::<F>(&gpu, shape, 32, 7);
}

/// f64 inputs have no kernel; the error says so instead of computing in f32.
#[test]
fn m2_decode_refuses_f64() {
    let Some(gpu) = test_gpu_or_skip("m2_decode_refuses_f64") else {
        return;
    };
    harness::refuses_f64::<F>(&gpu, Shape::m2(1, 1));
}
