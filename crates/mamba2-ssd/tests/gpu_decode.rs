//! The CUDA Mamba-2 decode step against the f64 oracle (`ssm_reference::mamba2_step`),
//! through the harness both families share (`crates/gpu/tests/support/decode_harness.rs`:
//! random problems, the comparison, the table, the test matrix, the device-entry
//! guards). This file says what is Mamba-2's: its shapes, options and oracle.
//! Without a GPU each test prints `SKIPPED` and passes (set `SSM_REQUIRE_GPU=1` to
//! make that a failure).

#[path = "../../gpu/tests/support/decode_harness.rs"]
mod harness;

use harness::{DOption, Options, Problem, Sizes, TestFamily};
use mamba2_ssd::decode_cuda::Mamba2Decode;
use rand::rngs::StdRng;
use rand::Rng;
use ssm_core::decode::Mamba2StepParams;
use ssm_core::mamba2::DSkip;
use ssm_core::Element;

harness::decode_tests!(m2_decode, mamba2_ssd::decode_cuda::Mamba2Decode);

/// The state cache stored in bf16 / f16 (v6, `BlockTiling::state_dtype`): each
/// case runs `harness::STORED_STEPS` steps on fresh inputs (poisoned outputs)
/// against the f64 oracle within `ssm_core::tolerance::stored_state_budget` /
/// `stored_state_output_budget` (docs/TOLERANCES.md), through the host entry
/// point (b = 1 and 64: the small-batch and the default tiling; every odd
/// shape) and the device entry point with every candidate tiling.
mod m2_stored_state {
    use half::{bf16, f16};
    use mamba2_ssd::decode_cuda::Mamba2Decode;

    macro_rules! gpu_test {
        ($name:ident, $body:expr) => {
            #[test]
            fn $name() {
                let label = concat!("m2_stored_state_", stringify!($name));
                if let Some(gpu) = ssm_gpu::test_gpu_or_skip(label) {
                    let run: fn(&ssm_gpu::Gpu) = $body;
                    run(&gpu);
                }
            }
        };
    }

    gpu_test!(bf16_batches, |g| super::harness::stored_state_batches::<
        Mamba2Decode,
        bf16,
    >(g));
    gpu_test!(bf16_odd_shapes, |g| {
        super::harness::stored_state_odd_shapes::<Mamba2Decode, bf16>(g)
    });
    gpu_test!(bf16_tilings, |g| super::harness::stored_state_tilings::<
        Mamba2Decode,
        bf16,
    >(g));
    gpu_test!(f16_batches, |g| super::harness::stored_state_batches::<
        Mamba2Decode,
        f16,
    >(g));
    gpu_test!(f16_tilings, |g| super::harness::stored_state_tilings::<
        Mamba2Decode,
        f16,
    >(g));
    gpu_test!(guards, |g| super::harness::stored_state_guards::<
        Mamba2Decode,
    >(g));
}

/// `b` batch rows, `H` heads of dimension `P`, state size `N`, `G` B/C groups.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    b: usize,
    h: usize,
    p: usize,
    n: usize,
    g: usize,
}

const fn shape(b: usize, h: usize, p: usize, n: usize, g: usize) -> Shape {
    Shape { b, h, p, n, g }
}

impl TestFamily for Mamba2Decode {
    const TAG: &'static str = "m2";
    const D_PER_ROW: &'static str = "D(H)";
    const ALL: Options = Options {
        dt_bias: true,
        dt_softplus: true,
        dt_limit: Some((5e-3, 0.5)),
        d: DOption::PerHeadDim,
        z: true,
        indices: true,
    };
    /// D per head, softplus without bias or limit.
    const MIXED: Options = Options {
        d: DOption::PerRow,
        dt_bias: false,
        dt_limit: None,
        ..Self::ALL
    };
    const BATCH_256_GROUPS: &'static [[usize; 4]] = &[[1, 8, 1, 8]];
    const TILING_BATCH: usize = 16;
    const OTHER_N: usize = 32;
    const BAD_INDEX: i64 = 7;
    type Shape = Shape;

    /// Mamba-2 2.7B: H = 80 heads of P = 64, N = 128.
    fn model(batch: usize, groups: usize) -> Shape {
        shape(batch, 80, 64, 128, groups)
    }
    /// State sizes off the fast path (N not a multiple of 4, lanes per row < 32,
    /// rows capped), head dims that leave a partial row tile, groups > 1.
    fn odd_shapes() -> Vec<Shape> {
        vec![
            shape(3, 6, 50, 7, 3),
            shape(5, 4, 33, 6, 2),
            shape(2, 8, 48, 64, 4),
            shape(4, 2, 64, 256, 1),
            shape(9, 3, 17, 12, 3),
            shape(1, 1, 1, 1, 1),
        ]
    }
    fn guard_shape() -> Shape {
        shape(2, 4, 8, 16, 1)
    }
    fn describe(s: &Shape) -> String {
        format!("b={} H={} P={} N={} G={}", s.b, s.h, s.p, s.n, s.g)
    }
    fn sizes(s: &Shape) -> Sizes {
        let rows = s.h * s.p;
        Sizes {
            batch: s.b,
            d_state: s.n,
            out_row: rows,
            dt_row: s.h,
            bc_row: s.g * s.n,
            per_row: s.h,
            per_head_dim: rows,
            state_row: rows * s.n,
        }
    }
    /// A < 0 with |A| between 1 and 16.
    fn random_a(s: &Shape, rng: &mut StdRng) -> Vec<f32> {
        (0..s.h)
            .map(|_| -rng.random_range(0.0f32..16f32.ln()).exp())
            .collect()
    }
    fn params<T: Element>(pr: &Problem<Self, T>) -> Mamba2StepParams<'_, T> {
        let s = pr.shape;
        let mut p =
            Mamba2StepParams::new(s.b, s.h, s.p, s.n, s.g, &pr.x, &pr.dt, &pr.a, &pr.b, &pr.c);
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
