//! The CUDA Mamba-1 decode step against the f64 oracle (`ssm_reference::mamba1_step`).
//!
//! Every case draws fresh random inputs (the seed is printed, `SSM_TEST_SEED`
//! replays one), runs one step on the GPU into a poisoned output buffer and
//! compares the output and the updated state with the oracle fed the same inputs:
//! relative L2 within `rel_l2_budget(T, 0)` for outputs and `state_budget(0)` for
//! states (a step exponentiates each decay on its own, so K = 0). Padding rows must
//! give exact zeros, and every cache row that no live batch row points at must come
//! back bit-identical. Without a GPU each test prints `SKIPPED` and passes (set
//! `SSM_REQUIRE_GPU=1` to make that a failure).

use half::{bf16, f16};
use mamba1_scan::decode_cuda::{
    decode_step_cuda, launch_decode_step, DecodeKernel, DecodeTiling, DeviceStepArgs,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ssm_core::decode::{cache_row, Mamba1StepParams};
use ssm_core::tolerance::{compare, rel_l2_budget, state_budget, Comparison};
use ssm_core::{Element, SsmError};
use ssm_gpu::{test_gpu_or_skip, DeviceElement, Gpu};

// ---------------------------------------------------------------------------
// Random problems
// ---------------------------------------------------------------------------

/// Standard normal samples (Box-Muller; the tests need nothing fancier).
fn randn(rng: &mut StdRng, len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(len);
    out
}

fn rounded<T: Element>(values: &[f32]) -> Vec<T> {
    values.iter().map(|&v| T::from_f32(v)).collect()
}

/// Which options a case turns on.
#[derive(Clone, Copy, Debug)]
struct Options {
    dt_bias: bool,
    dt_softplus: bool,
    d: bool,
    z: bool,
    /// Continuous batching: a larger cache, shuffled rows, about one row in eight padding.
    indices: bool,
}

impl Options {
    const PLAIN: Options = Options {
        dt_bias: false,
        dt_softplus: false,
        d: false,
        z: false,
        indices: false,
    };
    const ALL: Options = Options {
        dt_bias: true,
        dt_softplus: true,
        d: true,
        z: true,
        indices: true,
    };
    /// The other half of each switch: softplus without bias, D without z.
    const MIXED: Options = Options {
        dt_bias: false,
        dt_softplus: true,
        d: true,
        z: false,
        indices: true,
    };

    fn name(&self) -> String {
        let flags = [
            (self.dt_bias, "bias"),
            (self.dt_softplus, "softplus"),
            (self.d, "D"),
            (self.z, "z"),
            (self.indices, "indices"),
        ];
        let parts: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Shape {
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

/// One random decode step and the state cache it updates.
struct Problem<T> {
    shape: Shape,
    opts: Options,
    cache_rows: usize,
    x: Vec<T>,
    dt: Vec<T>,
    a: Vec<f32>,
    b: Vec<T>,
    c: Vec<T>,
    d: Vec<f32>,
    z: Vec<T>,
    dt_bias: Vec<f32>,
    indices: Vec<i64>,
    state: Vec<f32>,
}

impl<T: Element> Problem<T> {
    fn random(shape: Shape, opts: Options, rng: &mut StdRng) -> Self {
        let Shape {
            batch,
            d_inner,
            d_state,
            groups,
        } = shape;
        let bd = batch * d_inner;
        // Step sizes: mostly softplus(randn - 4) (~0.02), one in sixteen large (up to 10),
        // either as the final value or as the pre-softplus argument.
        let dt: Vec<f32> = randn(rng, bd)
            .into_iter()
            .map(|v| {
                let large = rng.random_range(0..16) == 0;
                match (opts.dt_softplus, large) {
                    (_, true) => rng.random_range(1.0..10.0),
                    (true, false) => v - 4.0,
                    (false, false) => ssm_core::math::softplus_f32(v - 4.0),
                }
            })
            .collect();
        // A < 0 with |A| between 0.5 and 16 (Mamba-1 initialises A = -(1..=N)).
        let a = (0..d_inner * d_state)
            .map(|_| -rng.random_range(0.5f32.ln()..16f32.ln()).exp())
            .collect();
        let (cache_rows, indices) = if opts.indices {
            cache_layout(batch, rng)
        } else {
            (batch, Vec::new())
        };
        Problem {
            shape,
            opts,
            cache_rows,
            x: rounded(&randn(rng, bd)),
            dt: rounded(&dt),
            a,
            b: rounded(&randn(rng, batch * groups * d_state)),
            c: rounded(&randn(rng, batch * groups * d_state)),
            d: if opts.d {
                randn(rng, d_inner)
            } else {
                Vec::new()
            },
            z: if opts.z {
                rounded(&randn(rng, bd))
            } else {
                Vec::new()
            },
            dt_bias: if opts.dt_bias {
                randn(rng, d_inner).iter().map(|v| 0.5 * v).collect()
            } else {
                Vec::new()
            },
            indices,
            state: randn(rng, cache_rows * d_inner * d_state),
        }
    }

    fn params(&self) -> Mamba1StepParams<'_, T> {
        let s = self.shape;
        let mut p = Mamba1StepParams::new(
            s.batch, s.d_inner, s.d_state, s.groups, &self.x, &self.dt, &self.a, &self.b, &self.c,
        );
        p.cache_rows = self.cache_rows;
        p.d = self.opts.d.then_some(&self.d[..]);
        p.z = self.opts.z.then_some(&self.z[..]);
        p.dt_bias = self.opts.dt_bias.then_some(&self.dt_bias[..]);
        p.dt_softplus = self.opts.dt_softplus;
        p.state_batch_indices = self.opts.indices.then_some(&self.indices[..]);
        p
    }
}

/// A cache with a few spare rows, shuffled assignment, about one batch row in
/// eight padding (never all of them, so something is always computed).
fn cache_layout(batch: usize, rng: &mut StdRng) -> (usize, Vec<i64>) {
    let cache_rows = batch + (batch / 8).max(2);
    let mut rows: Vec<i64> = (0..cache_rows as i64).collect();
    rows.shuffle(rng);
    rows.truncate(batch);
    for (i, r) in rows.iter_mut().enumerate() {
        if batch > 1 && (i % 8 == 3 || rng.random_range(0..16) == 0) {
            *r = -1;
        }
    }
    (cache_rows, rows)
}

// ---------------------------------------------------------------------------
// Running and checking one case
// ---------------------------------------------------------------------------

/// Errors of one case, printed as one line of the verification table.
struct CaseResult {
    label: String,
    out: Comparison,
    out_budget: f64,
    state: Comparison,
    state_budget: f64,
    problems: Vec<String>,
}

impl CaseResult {
    fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for CaseResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<58} out rel_l2 {:.2e} (max_abs {:.2e}, budget {:.0e})  state rel_l2 {:.2e} (max_abs {:.2e}, budget {:.0e})  {}",
            self.label,
            self.out.rel_l2,
            self.out.max_abs,
            self.out_budget,
            self.state.rel_l2,
            self.state.max_abs,
            self.state_budget,
            if self.passed() { "ok".to_string() } else { format!("FAILED: {}", self.problems.join("; ")) }
        )
    }
}

fn seed() -> u64 {
    std::env::var("SSM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

fn run_case<T: DeviceElement>(
    gpu: &Gpu,
    shape: Shape,
    opts: Options,
    tiling: Option<DecodeTiling>,
) -> CaseResult {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let problem = Problem::<T>::random(shape, opts, &mut rng);
    let p = problem.params();
    let label = format!(
        "m1 b={} D_in={} N={} G={} {} {}{} seed={seed}",
        shape.batch,
        shape.d_inner,
        shape.d_state,
        shape.groups,
        T::DTYPE,
        opts.name(),
        tiling.map_or(String::new(), |t| format!(" {t:?}")),
    );

    let mut gpu_state = problem.state.clone();
    let gpu_out = match tiling {
        None => {
            decode_step_cuda(gpu, &p, &mut gpu_state)
                .expect("GPU decode step")
                .out
        }
        Some(tiling) => step_with_tiling(gpu, &problem, tiling, &mut gpu_state),
    };
    let mut ref_state: Vec<f64> = problem.state.iter().map(|&v| v as f64).collect();
    let reference = ssm_reference::mamba1_step(&p, &mut ref_state).expect("oracle");

    let out: Vec<f64> = gpu_out.iter().map(|v| v.to_f64()).collect();
    let out_cmp = compare(&out, &reference.out);
    let out_budget = rel_l2_budget(T::DTYPE, 0.0);
    let mut problems = Vec::new();
    if !out_cmp.passes(out_budget) {
        problems.push(format!(
            "output rel_l2 {:.3e} > {out_budget:.0e} or {} non-finite",
            out_cmp.rel_l2, out_cmp.non_finite
        ));
    }

    // Live cache rows: compared with the oracle. The rest: bit-identical.
    let row_len = shape.d_inner * shape.d_state;
    let mut live = vec![false; problem.cache_rows];
    for i in 0..shape.batch {
        match cache_row(p.state_batch_indices, i) {
            Some(r) => live[r] = true,
            None => {
                let row = &out[i * shape.d_inner..(i + 1) * shape.d_inner];
                if row.iter().any(|&v| v != 0.0) {
                    problems.push(format!("padding row {i} has a non-zero output"));
                }
            }
        }
    }
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for (r, &is_live) in live.iter().enumerate() {
        let span = r * row_len..(r + 1) * row_len;
        if is_live {
            got.extend(gpu_state[span.clone()].iter().map(|&v| v as f64));
            want.extend_from_slice(&ref_state[span]);
        } else if gpu_state[span.clone()]
            .iter()
            .zip(&problem.state[span])
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            problems.push(format!("untouched cache row {r} changed"));
        }
    }
    let state_cmp = compare(&got, &want);
    let state_budget = state_budget(0.0);
    if !state_cmp.passes(state_budget) {
        problems.push(format!(
            "state rel_l2 {:.3e} > {state_budget:.0e} or {} non-finite",
            state_cmp.rel_l2, state_cmp.non_finite
        ));
    }
    CaseResult {
        label,
        out: out_cmp,
        out_budget,
        state: state_cmp,
        state_budget,
        problems,
    }
}

/// The device entry point with an explicit tiling (the variants the bench times).
fn step_with_tiling<T: DeviceElement>(
    gpu: &Gpu,
    problem: &Problem<T>,
    tiling: DecodeTiling,
    state: &mut [f32],
) -> Vec<T> {
    let p = problem.params();
    let kernel = DecodeKernel::<T>::new(gpu, p.d_state, tiling).expect("kernel");
    let up = |v: &[T]| gpu.upload(v).expect("upload");
    let upf = |v: &[f32]| gpu.upload(v).expect("upload");
    let (x, dt, b, c, a) = (up(p.x), up(p.dt), up(p.b), up(p.c), upf(p.a));
    let z = p.z.map(up);
    let d = p.d.map(upf);
    let bias = p.dt_bias.map(upf);
    let idx = p
        .state_batch_indices
        .map(|v| gpu.stream().clone_htod(v).expect("upload"));
    let mut dev_state = upf(state);
    let mut out = gpu.alloc_poisoned::<T>(p.x.len()).expect("alloc");
    let args = DeviceStepArgs {
        batch: p.batch,
        d_inner: p.d_inner,
        d_state: p.d_state,
        groups: p.groups,
        cache_rows: p.cache_rows,
        x: x.as_view(),
        dt: dt.as_view(),
        a: a.as_view(),
        b: b.as_view(),
        c: c.as_view(),
        d: d.as_ref().map(|v| v.as_view()),
        z: z.as_ref().map(|v| v.as_view()),
        dt_bias: bias.as_ref().map(|v| v.as_view()),
        dt_softplus: p.dt_softplus,
        state_batch_indices: idx.as_ref().map(|v| v.as_view()),
    };
    launch_decode_step(
        gpu,
        &kernel,
        &args,
        &mut dev_state.as_view_mut(),
        &mut out.as_view_mut(),
    )
    .expect("launch");
    state.copy_from_slice(&gpu.download(&dev_state).expect("download"));
    gpu.download(&out).expect("download")
}

/// One deferred check (cases of several element types share a list).
type Case = Box<dyn Fn(&Gpu) -> CaseResult>;

/// Run `cases`, print the table, fail with every failing line.
fn run_all(gpu: &Gpu, cases: Vec<Case>) {
    let results: Vec<CaseResult> = cases.iter().map(|case| case(gpu)).collect();
    for r in &results {
        println!("{r}");
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.to_string())
        .collect();
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
}

fn case<T: DeviceElement>(shape: Shape, opts: Options) -> Case {
    Box::new(move |gpu| run_case::<T>(gpu, shape, opts, None))
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn m1_decode_batch_1() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_batch_1") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        cases.push(case::<f32>(Shape::m1(1, groups), Options::PLAIN));
        cases.push(case::<f32>(Shape::m1(1, groups), Options::ALL));
        cases.push(case::<bf16>(Shape::m1(1, groups), Options::ALL));
        cases.push(case::<f16>(Shape::m1(1, groups), Options::MIXED));
    }
    run_all(&gpu, cases);
}

#[test]
fn m1_decode_batch_64() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_batch_64") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        for opts in [Options::PLAIN, Options::ALL, Options::MIXED] {
            cases.push(case::<f32>(Shape::m1(64, groups), opts));
            cases.push(case::<bf16>(Shape::m1(64, groups), opts));
        }
        cases.push(case::<f16>(Shape::m1(64, groups), Options::ALL));
    }
    run_all(&gpu, cases);
}

#[test]
fn m1_decode_batch_256() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_batch_256") else {
        return;
    };
    let mut cases = Vec::new();
    for groups in [1, 8] {
        cases.push(case::<f32>(Shape::m1(256, groups), Options::ALL));
        cases.push(case::<bf16>(Shape::m1(256, groups), Options::ALL));
        cases.push(case::<bf16>(Shape::m1(256, groups), Options::PLAIN));
        cases.push(case::<f16>(Shape::m1(256, groups), Options::MIXED));
    }
    run_all(&gpu, cases);
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
        cases.push(case::<f32>(s, Options::ALL));
        cases.push(case::<bf16>(s, Options::MIXED));
        cases.push(case::<f32>(s, Options::PLAIN));
    }
    run_all(&gpu, cases);
}

/// Every tiling the bench times computes the same function.
#[test]
fn m1_decode_bench_tilings() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_bench_tilings") else {
        return;
    };
    let results: Vec<CaseResult> = DecodeTiling::candidates()
        .into_iter()
        .flat_map(|t| {
            let mut cases = vec![
                run_case::<bf16>(&gpu, Shape::m1(19, 8), Options::ALL, Some(t)),
                run_case::<f32>(&gpu, Shape::m1(19, 1), Options::MIXED, Some(t)),
            ];
            // Staged B and C: blocks whose channels span 1, 2 (staged) and more
            // (just in time) groups, partial blocks and batch tiles, odd N.
            if t.bc_shared > 0 {
                for s in odd_shapes() {
                    cases.push(run_case::<f32>(&gpu, s, Options::ALL, Some(t)));
                }
                cases.push(run_case::<f32>(
                    &gpu,
                    Shape::m1(7, 80),
                    Options::ALL,
                    Some(t),
                ));
            }
            cases
        })
        .collect();
    for r in &results {
        println!("{r}");
    }
    assert!(results.iter().all(CaseResult::passed));
}

/// The device entry point refuses what its kernel cannot do safely, and the kernel
/// itself never writes past the cache for an unchecked index.
#[test]
fn m1_decode_device_entry_guards() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_device_entry_guards") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed());
    let shape = Shape {
        batch: 2,
        d_inner: 64,
        d_state: 16,
        groups: 1,
    };
    let problem = Problem::<f32>::random(shape, Options::PLAIN, &mut rng);
    let p = problem.params();
    let kernel = DecodeKernel::<f32>::new(&gpu, 16, DecodeTiling::default()).expect("kernel");
    let up = |v: &[f32]| gpu.upload(v).expect("upload");
    let (x, dt, a, b, c) = (up(p.x), up(p.dt), up(p.a), up(p.b), up(p.c));
    let mut state_buf = up(&[problem.state.clone(), vec![0.0; 4]].concat());
    let mut out = gpu.alloc_poisoned::<f32>(p.x.len()).expect("alloc");
    // Row 0 points past the cache (cache_rows = 2), row 1 is valid.
    let idx = gpu.stream().clone_htod(&[5i64, 1]).expect("upload");
    let args = |with_idx: bool| DeviceStepArgs {
        batch: 2,
        d_inner: 64,
        d_state: 16,
        groups: 1,
        cache_rows: 2,
        x: x.as_view(),
        dt: dt.as_view(),
        a: a.as_view(),
        b: b.as_view(),
        c: c.as_view(),
        d: None,
        z: None,
        dt_bias: None,
        dt_softplus: false,
        state_batch_indices: with_idx.then(|| idx.as_view()),
    };
    let len = problem.state.len();

    // A state view that starts one float in: not 16-byte aligned.
    let err = launch_decode_step(
        &gpu,
        &kernel,
        &args(false),
        &mut state_buf.slice_mut(1..len + 1),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(
        matches!(err, SsmError::Dimension { arg: "state", .. }),
        "{err}"
    );
    // A state view of the wrong length.
    let err = launch_decode_step(
        &gpu,
        &kernel,
        &args(false),
        &mut state_buf.slice_mut(0..len - 16),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "state", .. }), "{err}");
    // A kernel compiled for another N.
    let other = DecodeKernel::<f32>::new(&gpu, 8, DecodeTiling::default()).expect("kernel");
    let err = launch_decode_step(
        &gpu,
        &other,
        &args(false),
        &mut state_buf.slice_mut(0..len),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(
        matches!(err, SsmError::Dimension { arg: "d_state", .. }),
        "{err}"
    );

    // Index 5 >= cache_rows: NaN output for row 0, cache row 0 untouched, and the 4
    // floats past the cache unchanged.
    launch_decode_step(
        &gpu,
        &kernel,
        &args(true),
        &mut state_buf.slice_mut(0..len),
        &mut out.as_view_mut(),
    )
    .expect("launch");
    let out = gpu.download(&out).expect("download");
    let state = gpu.download(&state_buf).expect("download");
    assert!(out[..64].iter().all(|v| v.is_nan()));
    assert!(out[64..].iter().all(|v| v.is_finite()));
    let row_len = 64 * 16;
    assert_eq!(
        state[..row_len],
        problem.state[..row_len],
        "cache row 0 was not addressed"
    );
    assert_ne!(
        state[row_len..2 * row_len],
        problem.state[row_len..2 * row_len]
    );
    assert_eq!(state[len..], [0.0; 4]);
}

/// f64 inputs have no kernel; the error says so instead of computing in f32.
#[test]
fn m1_decode_refuses_f64() {
    let Some(gpu) = test_gpu_or_skip("m1_decode_refuses_f64") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(1);
    let problem = Problem::<f64>::random(Shape::m1(1, 1), Options::PLAIN, &mut rng);
    let mut state = problem.state.clone();
    let err = decode_step_cuda(&gpu, &problem.params(), &mut state).unwrap_err();
    assert!(matches!(err, SsmError::Unsupported { .. }), "{err}");
}
