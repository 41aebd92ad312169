//! The CUDA Mamba-1 decode step against the f64 oracle (`ssm_reference::mamba1_step`),
//! through the harness both families share (`crates/gpu/tests/support/decode_harness.rs`:
//! random problems, the comparison, the table, the test matrix, the device-entry
//! guards). This file says what is Mamba-1's: its shapes, options and oracle.
//! Without a GPU each test prints `SKIPPED` and passes (set `SSM_REQUIRE_GPU=1` to
//! make that a failure).

#[path = "../../gpu/tests/support/decode_harness.rs"]
mod harness;

use harness::{tiled, Case, DOption, Options, Problem, Sizes, TestFamily};
use mamba1_scan::decode_cuda::{DecodeTiling, Mamba1Decode};
use rand::rngs::StdRng;
use rand::Rng;
use ssm_core::decode::Mamba1StepParams;
use ssm_core::Element;

harness::decode_tests!(m1_decode, mamba1_scan::decode_cuda::Mamba1Decode);

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    batch: usize,
    d_inner: usize,
    d_state: usize,
    groups: usize,
}

fn shape(batch: usize, d_inner: usize, d_state: usize, groups: usize) -> Shape {
    Shape {
        batch,
        d_inner,
        d_state,
        groups,
    }
}

impl TestFamily for Mamba1Decode {
    const TAG: &'static str = "m1";
    const D_PER_ROW: &'static str = "D";
    const ALL: Options = Options {
        dt_bias: true,
        dt_softplus: true,
        dt_limit: None,
        d: DOption::PerRow,
        z: true,
        indices: true,
    };
    /// Softplus without bias, D without z.
    const MIXED: Options = Options {
        z: false,
        dt_bias: false,
        ..Self::ALL
    };
    const BATCH_256_GROUPS: &'static [[usize; 4]] = &[[1; 4], [8; 4]];
    const TILING_BATCH: usize = 19;
    const OTHER_N: usize = 8;
    const BAD_INDEX: i64 = 5;
    type Shape = Shape;

    /// Mamba-1 2.8B: D_in = 5120, N = 16.
    fn model(batch: usize, groups: usize) -> Shape {
        shape(batch, 5120, 16, groups)
    }
    /// Odd N (scalar layouts, rows capped), channel counts that leave a partial
    /// block, batches that leave a partial batch tile, groups > 1 with few channels
    /// per group.
    fn odd_shapes() -> Vec<Shape> {
        vec![
            shape(3, 100, 7, 4),
            shape(5, 66, 6, 3),
            shape(7, 96, 12, 2),
            shape(2, 40, 64, 1),
            shape(9, 33, 16, 3),
            shape(1, 1, 1, 1),
        ]
    }
    fn guard_shape() -> Shape {
        shape(2, 64, 16, 1)
    }
    /// Staged B and C: blocks whose channels span 1, 2 (staged) and more (just in
    /// time) groups, partial blocks and batch tiles, odd N.
    fn tiling_cases(t: DecodeTiling) -> Vec<Case> {
        if t.bc_shared == 0 {
            return Vec::new();
        }
        let mut cases: Vec<Case> = Self::odd_shapes()
            .into_iter()
            .map(|s| tiled::<Self, f32>(s, Self::ALL, t))
            .collect();
        cases.push(tiled::<Self, f32>(Self::model(7, 80), Self::ALL, t));
        cases
    }
    fn describe(s: &Shape) -> String {
        format!(
            "b={} D_in={} N={} G={}",
            s.batch, s.d_inner, s.d_state, s.groups
        )
    }
    fn sizes(s: &Shape) -> Sizes {
        Sizes {
            batch: s.batch,
            d_state: s.d_state,
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
