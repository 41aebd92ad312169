//! The GPU decode test harness of both families, written once: random problems,
//! one case run against the f64 oracle, the table it prints, the device-entry
//! guards and the f64 refusal. Included by `#[path]` from
//! `crates/mamba1-scan/tests/gpu_decode.rs` and `crates/mamba2-ssd/tests/gpu_decode.rs`
//! (each supplies its family as a [`TestFamily`]); it lives beside the launcher
//! it tests (`ssm_gpu::decode`), which cannot itself depend on the oracle or on
//! `rand`.
//!
//! Every case draws fresh random inputs (the seed is printed, `SSM_TEST_SEED`
//! replays one), runs one step on the GPU into a poisoned output buffer and
//! compares the output and the updated state with the oracle fed the same inputs:
//! relative L2 within `rel_l2_budget(T, 0)` for outputs and `state_budget(0)` for
//! states (a step exponentiates each decay on its own, so K = 0). Padding rows must
//! give exact zeros, and every cache row that no live batch row points at must come
//! back bit-identical. Without a GPU each test prints `SKIPPED` and passes (set
//! `SSM_REQUIRE_GPU=1` to make that a failure).
//!
//! A state stored in 16 bits (`BlockTiling::state_dtype`, Mamba-2's v6) is run
//! for [`STORED_STEPS`] steps instead of one ([`run_stored_case`]): fresh inputs
//! each step, a poisoned output each step, the state carried from step to step
//! (on the device, or through the host entry point), every output against
//! `stored_state_output_budget` and the final state against
//! `stored_state_budget` (docs/TOLERANCES.md).

// Each family's test uses part of it (Mamba-1 has no D per head dimension).
#![allow(dead_code)]

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ssm_core::decode::{cache_row, HostStepInputs, StepInputs, StepParams};
use ssm_core::tolerance::{
    compare, rel_l2_budget, state_budget, stored_state_budget, stored_state_output_budget,
    Comparison,
};
use ssm_core::{DType, Element, SsmError};
use ssm_gpu::decode::{self, DecodeFamily, DecodeKernel};
use ssm_gpu::{DeviceElement, Gpu};

// ---------------------------------------------------------------------------
// What a family supplies
// ---------------------------------------------------------------------------

/// How `D` enters a case (Mamba-1 has one form, per channel: `PerRow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DOption {
    Off,
    /// One value per channel (Mamba-1) or per head (Mamba-2).
    PerRow,
    /// One value per head and head-dimension index (Mamba-2 only).
    PerHeadDim,
}

/// Which options a case turns on.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub dt_bias: bool,
    pub dt_softplus: bool,
    /// Mamba-2 only.
    pub dt_limit: Option<(f32, f32)>,
    pub d: DOption,
    pub z: bool,
    /// Continuous batching: a larger cache, shuffled rows, about one row in eight padding.
    pub indices: bool,
}

impl Options {
    pub const PLAIN: Options = Options {
        dt_bias: false,
        dt_softplus: false,
        dt_limit: None,
        d: DOption::Off,
        z: false,
        indices: false,
    };

    /// The label part: the switches that are on, `none` without any.
    pub fn name<F: TestFamily>(&self) -> String {
        let mut parts = Vec::new();
        if self.dt_bias {
            parts.push("bias");
        }
        if self.dt_softplus {
            parts.push("softplus");
        }
        if self.dt_limit.is_some() {
            parts.push("limit");
        }
        match self.d {
            DOption::Off => {}
            DOption::PerRow => parts.push(F::D_PER_ROW),
            DOption::PerHeadDim => parts.push("D(H,P)"),
        }
        if self.z {
            parts.push("z");
        }
        if self.indices {
            parts.push("indices");
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }
}

/// The sizes of one family's problem.
pub struct Sizes {
    /// Batch rows `b`.
    pub batch: usize,
    /// `N`.
    pub d_state: usize,
    /// x, z and the output, per batch row.
    pub out_row: usize,
    /// dt per batch row.
    pub dt_row: usize,
    /// B and C per batch row (`G * N`).
    pub bc_row: usize,
    /// dt_bias (one per channel or head).
    pub per_row: usize,
    /// D with [`DOption::PerHeadDim`].
    pub per_head_dim: usize,
    /// One cache row of the state.
    pub state_row: usize,
}

/// A family as the harness tests it: its shapes, how its A is drawn, its
/// parameter struct and its oracle, and the shapes and options of its test matrix
/// ([`decode_tests!`]). The launcher itself is reached through [`DecodeFamily`].
pub trait TestFamily: DecodeFamily {
    /// `m1` / `m2`: the first word of each table line.
    const TAG: &'static str;
    /// How [`DOption::PerRow`] is named in a label.
    const D_PER_ROW: &'static str;
    /// Every option the family has, on.
    const ALL: Options;
    /// The other half of each switch.
    const MIXED: Options;
    /// The groups of the b = 256 cases, one round of four cases per entry (f32
    /// with [`Self::ALL`], bf16 with `ALL`, bf16 plain, f16 with [`Self::MIXED`]).
    const BATCH_256_GROUPS: &'static [[usize; 4]];
    /// The batch of the bench-tiling cases.
    const TILING_BATCH: usize;
    /// For [`device_entry_guards`]: another `N` the family compiles and an index
    /// past the 2-row cache.
    const OTHER_N: usize;
    const BAD_INDEX: i64;
    type Shape: Copy + std::fmt::Debug;

    /// The model's shape at `batch` rows and `groups` B/C groups.
    fn model(batch: usize, groups: usize) -> Self::Shape;
    /// Shapes off the common path (odd `N`, partial tiles, groups > 1).
    fn odd_shapes() -> Vec<Self::Shape>;
    /// A 2-row shape with `N = 16` for [`device_entry_guards`].
    fn guard_shape() -> Self::Shape;
    /// Cases a tiling needs besides the two every tiling gets.
    fn tiling_cases(_tiling: Self::Tiling) -> Vec<Case> {
        Vec::new()
    }
    /// `b=.. D_in=.. N=.. G=..`
    fn describe(shape: &Self::Shape) -> String;
    fn sizes(shape: &Self::Shape) -> Sizes;
    /// A < 0, the family's range.
    fn random_a(shape: &Self::Shape, rng: &mut StdRng) -> Vec<f32>;
    fn params<T: Element>(problem: &Problem<Self, T>) -> Self::Params<'_, T>;
    fn oracle<T: Element>(p: &Self::Params<'_, T>, state: &mut [f64]) -> Vec<f64>;
}

// ---------------------------------------------------------------------------
// Random problems
// ---------------------------------------------------------------------------

/// Standard normal samples (Box-Muller; the tests need nothing fancier).
pub fn randn(rng: &mut StdRng, len: usize) -> Vec<f32> {
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

/// One random decode step and the state cache it updates.
pub struct Problem<F: TestFamily, T> {
    pub shape: F::Shape,
    pub opts: Options,
    pub cache_rows: usize,
    pub x: Vec<T>,
    pub dt: Vec<T>,
    pub a: Vec<f32>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub d: Vec<f32>,
    pub z: Vec<T>,
    pub dt_bias: Vec<f32>,
    pub indices: Vec<i64>,
    pub state: Vec<f32>,
}

impl<F: TestFamily, T: Element> Problem<F, T> {
    pub fn random(shape: F::Shape, opts: Options, rng: &mut StdRng) -> Self {
        let sizes = F::sizes(&shape);
        let batch = sizes.batch;
        // Step sizes: mostly softplus(randn - 4) (~0.02), one in sixteen large (up to 10),
        // either as the final value or as the pre-softplus argument.
        let dt: Vec<f32> = randn(rng, batch * sizes.dt_row)
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
        let a = F::random_a(&shape, rng);
        let (cache_rows, indices) = if opts.indices {
            cache_layout(batch, rng)
        } else {
            (batch, Vec::new())
        };
        let bx = batch * sizes.out_row;
        Problem {
            shape,
            opts,
            cache_rows,
            x: rounded(&randn(rng, bx)),
            dt: rounded(&dt),
            a,
            b: rounded(&randn(rng, batch * sizes.bc_row)),
            c: rounded(&randn(rng, batch * sizes.bc_row)),
            d: match opts.d {
                DOption::Off => Vec::new(),
                DOption::PerRow => randn(rng, sizes.per_row),
                DOption::PerHeadDim => randn(rng, sizes.per_head_dim),
            },
            z: if opts.z {
                rounded(&randn(rng, bx))
            } else {
                Vec::new()
            },
            dt_bias: if opts.dt_bias {
                randn(rng, sizes.per_row).iter().map(|v| 0.5 * v).collect()
            } else {
                Vec::new()
            },
            indices,
            state: randn(rng, cache_rows * sizes.state_row),
        }
    }

    pub fn params(&self) -> F::Params<'_, T> {
        F::params(self)
    }
}

// ---------------------------------------------------------------------------
// Running and checking one case
// ---------------------------------------------------------------------------

/// Errors of one case, printed as one line of the verification table.
pub struct CaseResult {
    label: String,
    out: Comparison,
    out_budget: f64,
    state: Comparison,
    state_budget: f64,
    problems: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
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

pub fn seed() -> u64 {
    ssm_gpu::test_seed("decode")
}

/// One random case: the host entry point (`tiling: None`) or the device entry
/// point with that tiling, against the oracle.
pub fn run_case<F: TestFamily, T: DeviceElement>(
    gpu: &Gpu,
    shape: F::Shape,
    opts: Options,
    tiling: Option<F::Tiling>,
) -> CaseResult {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let problem = Problem::<F, T>::random(shape, opts, &mut rng);
    let p = problem.params();
    let label = format!(
        "{} {} {} {}{} seed={seed}",
        F::TAG,
        F::describe(&shape),
        T::DTYPE,
        opts.name::<F>(),
        tiling.map_or(String::new(), |t| format!(" {t:?}")),
    );

    let mut gpu_state = problem.state.clone();
    let gpu_out = match tiling {
        None => {
            decode::decode_step_cuda::<F, T>(gpu, &p, &mut gpu_state)
                .expect("GPU decode step")
                .out
        }
        Some(tiling) => step_with_tiling::<F, T>(gpu, &p, tiling, &mut gpu_state),
    };
    let mut ref_state: Vec<f64> = problem.state.iter().map(|&v| v as f64).collect();
    let reference = F::oracle(&p, &mut ref_state);

    let out: Vec<f64> = gpu_out.iter().map(|v| v.to_f64()).collect();
    let out_cmp = compare(&out, &reference);
    let out_budget = rel_l2_budget(T::DTYPE, 0.0);
    let mut problems = Vec::new();
    if !out_cmp.passes(out_budget) {
        problems.push(format!(
            "output rel_l2 {:.3e} > {out_budget:.0e} or {} non-finite",
            out_cmp.rel_l2, out_cmp.non_finite
        ));
    }

    // Live cache rows: compared with the oracle. The rest: bit-identical.
    let sizes = F::sizes(&shape);
    let (row_len, out_row) = (sizes.state_row, sizes.out_row);
    let indices = opts.indices.then_some(&problem.indices[..]);
    let mut live = vec![false; problem.cache_rows];
    for i in 0..sizes.batch {
        match cache_row(indices, i) {
            Some(r) => live[r] = true,
            None => {
                if out[i * out_row..(i + 1) * out_row]
                    .iter()
                    .any(|&v| v != 0.0)
                {
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

/// Device buffers of a step's inputs.
type Uploaded<T> = StepInputs<
    ssm_gpu::cudarc::driver::CudaSlice<T>,
    ssm_gpu::cudarc::driver::CudaSlice<f32>,
    ssm_gpu::cudarc::driver::CudaSlice<i64>,
>;

fn upload<T: DeviceElement>(gpu: &Gpu, host: HostStepInputs<'_, T>) -> Uploaded<T> {
    host.map(
        |v| gpu.upload(v).expect("upload"),
        |v| gpu.upload(v).expect("upload"),
        |v| gpu.stream().clone_htod(v).expect("upload"),
    )
}

/// The device entry point with an explicit tiling (the variants the bench times).
fn step_with_tiling<F: TestFamily, T: DeviceElement>(
    gpu: &Gpu,
    p: &F::Params<'_, T>,
    tiling: F::Tiling,
    state: &mut [f32],
) -> Vec<T> {
    let kernel = DecodeKernel::<F, T>::new(gpu, p.d_state(), tiling).expect("kernel");
    let host = p.inputs();
    let bufs = upload(gpu, host);
    let mut dev_state = gpu.upload(state).expect("upload");
    let mut out = gpu.alloc_poisoned::<T>(host.x.len()).expect("alloc");
    let views = bufs
        .as_ref()
        .map(|v| v.as_view(), |v| v.as_view(), |v| v.as_view());
    decode::launch_decode_step(
        gpu,
        &kernel,
        &decode::device_args::<F, T>(p, views),
        &mut dev_state.as_view_mut(),
        &mut out.as_view_mut(),
    )
    .expect("launch");
    state.copy_from_slice(&gpu.download(&dev_state).expect("download"));
    gpu.download(&out).expect("download")
}

/// One deferred check (cases of several element types share a list).
pub type Case = Box<dyn Fn(&Gpu) -> CaseResult>;

/// Run `cases`, print the table, fail with every failing line.
pub fn run_all(gpu: &Gpu, cases: Vec<Case>) {
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

/// A case through the host entry point.
pub fn case<F: TestFamily, T: DeviceElement>(shape: F::Shape, opts: Options) -> Case {
    Box::new(move |gpu| run_case::<F, T>(gpu, shape, opts, None))
}

/// A case through the device entry point with `tiling` (a tiling with a 16-bit
/// state runs [`STORED_STEPS`] steps through [`run_stored_case`]).
pub fn tiled<F: TestFamily, T: DeviceElement>(
    shape: F::Shape,
    opts: Options,
    tiling: F::Tiling,
) -> Case {
    let n = F::sizes(&shape).d_state;
    match state_dtype_of::<F>(n, T::DTYPE, tiling) {
        DType::Bf16 => stored::<F, T, bf16>(shape, opts, Some(tiling)),
        DType::F16 => stored::<F, T, f16>(shape, opts, Some(tiling)),
        _ => Box::new(move |gpu| run_case::<F, T>(gpu, shape, opts, Some(tiling))),
    }
}

/// The type `tiling` stores the state cache in (f32 when the family refuses it:
/// the launch then reports the refusal).
pub fn state_dtype_of<F: TestFamily>(d_state: usize, dtype: DType, tiling: F::Tiling) -> DType {
    F::geometry(d_state, dtype, tiling).map_or(DType::F32, |g| F::block(&g).state_dtype)
}

// ---------------------------------------------------------------------------
// A state stored in f16 / bf16, over several steps
// ---------------------------------------------------------------------------

/// Steps of a 16-bit-state case: enough for the stored roundings to accumulate
/// (the budget grows as sqrt(steps)).
pub const STORED_STEPS: usize = 4;

/// A 16-bit-state case of [`STORED_STEPS`] steps: through the host entry point
/// (`tiling: None`, the batch's default tiling with the state type `S`) or the
/// device entry point with `tiling` (whose state type must be `S`).
pub fn stored<F: TestFamily, T: DeviceElement, S: DeviceElement>(
    shape: F::Shape,
    opts: Options,
    tiling: Option<F::Tiling>,
) -> Case {
    Box::new(move |gpu| run_stored_case::<F, T, S>(gpu, shape, opts, tiling, STORED_STEPS))
}

/// `steps` decode steps with the state cache stored as `S`, each on fresh random
/// inputs into a poisoned output, against the f64 oracle run on the same inputs
/// from the same (representable) initial state: every step's output within
/// `stored_state_output_budget(T, S, step)`, padding rows exactly zero at every
/// step, the live cache rows after the last step within
/// `stored_state_budget(S, steps)`, every other cache row bit-identical.
pub fn run_stored_case<F: TestFamily, T: DeviceElement, S: DeviceElement>(
    gpu: &Gpu,
    shape: F::Shape,
    opts: Options,
    tiling: Option<F::Tiling>,
    steps: usize,
) -> CaseResult {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let first = Problem::<F, T>::random(shape, opts, &mut rng);
    // Later steps: fresh inputs, the first step's cache and index list.
    let mut problems = vec![first];
    for _ in 1..steps {
        let mut p = Problem::<F, T>::random(shape, opts, &mut rng);
        p.cache_rows = problems[0].cache_rows;
        p.indices = problems[0].indices.clone();
        p.state = Vec::new();
        problems.push(p);
    }
    let label = format!(
        "{} {} {} {} state {} x{steps}{} seed={seed}",
        F::TAG,
        F::describe(&shape),
        T::DTYPE,
        opts.name::<F>(),
        S::DTYPE,
        tiling.map_or(String::new(), |t| format!(" {t:?}")),
    );
    let initial: Vec<S> = problems[0].state.iter().map(|&v| S::from_f32(v)).collect();
    let mut ref_state: Vec<f64> = initial.iter().map(|v| v.to_f64()).collect();
    let sizes = F::sizes(&shape);
    let (row_len, out_row) = (sizes.state_row, sizes.out_row);
    let mut problems_found = Vec::new();
    let mut worst: Option<(Comparison, f64)> = None;

    // The device entry point keeps the state on the device between steps.
    let mut device = tiling.map(|t| {
        let n = sizes.d_state;
        let kernel = DecodeKernel::<F, T>::new(gpu, n, t).expect("kernel");
        let dev_state = gpu.upload(&initial).expect("upload");
        (kernel, dev_state)
    });
    let mut host_state = initial.clone();
    for (k, problem) in problems.iter().enumerate() {
        let p = problem.params();
        let gpu_out: Vec<T> = match &mut device {
            None => {
                decode::decode_step_cuda_state::<F, T, S>(gpu, &p, &mut host_state)
                    .expect("GPU decode step")
                    .out
            }
            Some((kernel, dev_state)) => {
                let host = p.inputs();
                let bufs = upload(gpu, host);
                let mut out = gpu.alloc_poisoned::<T>(host.x.len()).expect("alloc");
                let views = bufs
                    .as_ref()
                    .map(|v| v.as_view(), |v| v.as_view(), |v| v.as_view());
                decode::launch_decode_step_state(
                    gpu,
                    kernel,
                    &decode::device_args::<F, T>(&p, views),
                    &mut dev_state.as_view_mut(),
                    &mut out.as_view_mut(),
                )
                .expect("launch");
                gpu.download(&out).expect("download")
            }
        };
        let reference = F::oracle(&p, &mut ref_state);
        let out: Vec<f64> = gpu_out.iter().map(|v| v.to_f64()).collect();
        let cmp = compare(&out, &reference);
        let budget = stored_state_output_budget(T::DTYPE, S::DTYPE, k + 1);
        if !cmp.passes(budget) {
            problems_found.push(format!(
                "step {}: output rel_l2 {:.3e} > {budget:.1e} or {} non-finite",
                k + 1,
                cmp.rel_l2,
                cmp.non_finite
            ));
        }
        if worst.is_none_or(|(w, b)| cmp.rel_l2 / budget > w.rel_l2 / b) {
            worst = Some((cmp, budget));
        }
        let indices = opts.indices.then_some(&problem.indices[..]);
        for i in 0..sizes.batch {
            if cache_row(indices, i).is_none()
                && out[i * out_row..(i + 1) * out_row]
                    .iter()
                    .any(|&v| v != 0.0)
            {
                problems_found.push(format!(
                    "step {}: padding row {i} has a non-zero output",
                    k + 1
                ));
            }
        }
    }
    let gpu_state: Vec<S> = match &device {
        None => host_state,
        Some((_, dev_state)) => gpu.download(dev_state).expect("download"),
    };

    let indices = opts.indices.then_some(&problems[0].indices[..]);
    let mut live = vec![false; problems[0].cache_rows];
    for i in 0..sizes.batch {
        if let Some(r) = cache_row(indices, i) {
            live[r] = true;
        }
    }
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for (r, &is_live) in live.iter().enumerate() {
        let span = r * row_len..(r + 1) * row_len;
        if is_live {
            got.extend(gpu_state[span.clone()].iter().map(|v| v.to_f64()));
            want.extend_from_slice(&ref_state[span]);
        } else if gpu_state[span.clone()]
            .iter()
            .zip(&initial[span])
            .any(|(a, b)| a.to_f64().to_bits() != b.to_f64().to_bits())
        {
            problems_found.push(format!("untouched cache row {r} changed"));
        }
    }
    let state_cmp = compare(&got, &want);
    let s_budget = stored_state_budget(S::DTYPE, steps);
    if !state_cmp.passes(s_budget) {
        problems_found.push(format!(
            "state rel_l2 {:.3e} > {s_budget:.1e} or {} non-finite",
            state_cmp.rel_l2, state_cmp.non_finite
        ));
    }
    let (out_cmp, out_budget) = worst.expect("at least one step");
    CaseResult {
        label,
        out: out_cmp,
        out_budget,
        state: state_cmp,
        state_budget: s_budget,
        problems: problems_found,
    }
}

/// For the 16-bit-state tests: the host entry point with the state stored as
/// `S` on the model shape at b = 1 and 64 (the small-batch and the default
/// tiling), every input type, with and without options and groups.
pub fn stored_state_batches<F: TestFamily, S: DeviceElement>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for groups in [1, 8] {
        let s = F::model(1, groups);
        cases.push(stored::<F, f32, S>(s, Options::PLAIN, None));
        cases.push(stored::<F, f32, S>(s, F::ALL, None));
        cases.push(stored::<F, bf16, S>(s, F::ALL, None));
        cases.push(stored::<F, f16, S>(s, F::MIXED, None));
        let s = F::model(64, groups);
        cases.push(stored::<F, bf16, S>(s, F::ALL, None));
        cases.push(stored::<F, f32, S>(s, F::MIXED, None));
    }
    run_all(gpu, cases);
}

/// For the 16-bit-state tests: every odd shape (every state layout: 8-, 4-, 2-
/// and 1-element accesses, fewer lanes per row, partial tiles) with the state
/// stored as `S`.
pub fn stored_state_odd_shapes<F: TestFamily, S: DeviceElement>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for s in F::odd_shapes() {
        cases.push(stored::<F, f32, S>(s, F::ALL, None));
        cases.push(stored::<F, bf16, S>(s, F::MIXED, None));
    }
    run_all(gpu, cases);
}

/// For the 16-bit-state tests: every candidate tiling with its state stored
/// as `S` (the block shapes the f32 state is verified with), through the
/// device entry point.
pub fn stored_state_tilings<F: TestFamily, S: DeviceElement>(gpu: &Gpu) {
    let mut tilings: Vec<F::Tiling> = Vec::new();
    for t in F::candidates() {
        let t = F::with_state_dtype(t, S::DTYPE);
        if !tilings.contains(&t) {
            tilings.push(t);
        }
    }
    let mut cases = Vec::new();
    for t in tilings {
        cases.push(stored::<F, bf16, S>(
            F::model(F::TILING_BATCH, 8),
            F::ALL,
            Some(t),
        ));
        cases.push(stored::<F, f32, S>(
            F::model(F::TILING_BATCH, 1),
            F::MIXED,
            Some(t),
        ));
    }
    run_all(gpu, cases);
}

/// For the 16-bit-state tests: the state buffer must have the type the kernel
/// stores (an f32 buffer for a bf16-state kernel and the reverse are refused,
/// naming `state`), its length is checked in elements, and a 16-bit view must be
/// aligned for the kernel's 16-byte accesses.
pub fn stored_state_guards<F: TestFamily>(gpu: &Gpu) {
    let shape = F::guard_shape();
    let sizes = F::sizes(&shape);
    let mut rng = StdRng::seed_from_u64(seed());
    let problem = Problem::<F, f32>::random(shape, Options::PLAIN, &mut rng);
    let p = problem.params();
    let base = F::Tiling::default();
    let bf16_tiling = F::with_state_dtype(base, DType::Bf16);
    let k16 = DecodeKernel::<F, f32>::new(gpu, sizes.d_state, bf16_tiling).expect("kernel");
    assert_eq!(k16.state_dtype(), DType::Bf16);
    let k32 = DecodeKernel::<F, f32>::new(gpu, sizes.d_state, base).expect("kernel");
    let bufs = upload(gpu, p.inputs());
    let views = || {
        bufs.as_ref()
            .map(|v| v.as_view(), |v| v.as_view(), |v| v.as_view())
    };
    let len = problem.state.len();
    let state16: Vec<bf16> = problem.state.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut s16 = gpu
        .upload(&[state16.clone(), vec![bf16::ZERO; 8]].concat())
        .expect("upload");
    let mut s32 = gpu.upload(&problem.state).expect("upload");
    let mut out = gpu.alloc_poisoned::<f32>(problem.x.len()).expect("alloc");
    let is_state_dim = |e: &SsmError| matches!(e, SsmError::Dimension { arg: "state", .. });

    // An f32 buffer for a bf16-state kernel (through the f32 entry point too).
    let err = decode::launch_decode_step(
        gpu,
        &k16,
        &decode::device_args::<F, f32>(&p, views()),
        &mut s32.as_view_mut(),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(is_state_dim(&err), "{err}");
    assert!(err.to_string().contains("bf16"), "{err}");
    // A bf16 buffer for an f32-state kernel.
    let err = decode::launch_decode_step_state(
        gpu,
        &k32,
        &decode::device_args::<F, f32>(&p, views()),
        &mut s16.slice_mut(0..len),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(is_state_dim(&err), "{err}");
    // The right type, the wrong length.
    let err = decode::launch_decode_step_state(
        gpu,
        &k16,
        &decode::device_args::<F, f32>(&p, views()),
        &mut s16.slice_mut(0..len - 8),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "state", .. }), "{err}");
    // A view one element in: 2 bytes off the kernel's 16-byte accesses.
    let err = decode::launch_decode_step_state(
        gpu,
        &k16,
        &decode::device_args::<F, f32>(&p, views()),
        &mut s16.slice_mut(1..len + 1),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(is_state_dim(&err), "{err}");
    // The host entry point checks the length before anything else.
    let mut short = state16[..len - 1].to_vec();
    let err = decode::decode_step_cuda_state::<F, f32, bf16>(gpu, &p, &mut short).unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "state", .. }), "{err}");
    // Nothing above launched: the buffers are as uploaded.
    assert_eq!(gpu.download(&s16).expect("download")[..len], state16[..]);
}

// ---------------------------------------------------------------------------
// The test matrix, the same for both families
// ---------------------------------------------------------------------------

/// The tests of one family's `tests/gpu_decode.rs`, in a module `$module`
/// (`m1_decode`: `m1_decode::batch_1`, ...; the skip labels read
/// `m1_decode_batch_1`, ...). Each runs the harness function of its name.
macro_rules! decode_tests {
    ($module:ident, $family:ty) => {
        mod $module {
            $crate::harness::decode_tests!(@each $module, $family; batch_1, batch_64, batch_256,
                odd_shapes, bench_tilings, device_entry_guards, refuses_f64);
        }
    };
    (@each $module:ident, $family:ty; $($test:ident),*) => {
        $(
            #[test]
            fn $test() {
                let label = concat!(stringify!($module), "_", stringify!($test));
                if let Some(gpu) = ssm_gpu::test_gpu_or_skip(label) {
                    $crate::harness::$test::<$family>(&gpu);
                }
            }
        )*
    };
}
pub(crate) use decode_tests;

/// One batch row, every element type, with and without options and groups.
pub fn batch_1<F: TestFamily>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for groups in [1, 8] {
        let s = F::model(1, groups);
        cases.push(case::<F, f32>(s, Options::PLAIN));
        cases.push(case::<F, f32>(s, F::ALL));
        cases.push(case::<F, bf16>(s, F::ALL));
        cases.push(case::<F, f16>(s, F::MIXED));
    }
    run_all(gpu, cases);
}

pub fn batch_64<F: TestFamily>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for groups in [1, 8] {
        for opts in [Options::PLAIN, F::ALL, F::MIXED] {
            cases.push(case::<F, f32>(F::model(64, groups), opts));
            cases.push(case::<F, bf16>(F::model(64, groups), opts));
        }
        cases.push(case::<F, f16>(F::model(64, groups), F::ALL));
    }
    run_all(gpu, cases);
}

pub fn batch_256<F: TestFamily>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for &[g0, g1, g2, g3] in F::BATCH_256_GROUPS {
        cases.push(case::<F, f32>(F::model(256, g0), F::ALL));
        cases.push(case::<F, bf16>(F::model(256, g1), F::ALL));
        cases.push(case::<F, bf16>(F::model(256, g2), Options::PLAIN));
        cases.push(case::<F, f16>(F::model(256, g3), F::MIXED));
    }
    run_all(gpu, cases);
}

/// State sizes off the fast path (N not a multiple of 4, fewer than 32 lanes per
/// row, rows capped), partial tiles, groups > 1.
pub fn odd_shapes<F: TestFamily>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for s in F::odd_shapes() {
        cases.push(case::<F, f32>(s, F::ALL));
        cases.push(case::<F, bf16>(s, F::MIXED));
        cases.push(case::<F, f32>(s, Options::PLAIN));
    }
    run_all(gpu, cases);
}

/// Every tiling the bench times computes the same function.
pub fn bench_tilings<F: TestFamily>(gpu: &Gpu) {
    let mut cases = Vec::new();
    for t in F::candidates() {
        cases.push(tiled::<F, bf16>(F::model(F::TILING_BATCH, 8), F::ALL, t));
        cases.push(tiled::<F, f32>(F::model(F::TILING_BATCH, 1), F::MIXED, t));
        cases.extend(F::tiling_cases(t));
    }
    run_all(gpu, cases);
}

/// The device entry point refuses what its kernel cannot do safely (a misaligned
/// state view, a state view of the wrong length, a kernel compiled for another
/// `N`), and the kernel itself never writes past the cache for an unchecked
/// index: batch row 0 of the 2-row guard shape points at `BAD_INDEX >= cache_rows`.
pub fn device_entry_guards<F: TestFamily>(gpu: &Gpu) {
    let shape = F::guard_shape();
    let (other_n, bad_index) = (F::OTHER_N, F::BAD_INDEX);
    let sizes = F::sizes(&shape);
    assert_eq!((sizes.batch, sizes.d_state), (2, 16));
    let mut rng = StdRng::seed_from_u64(seed());
    let problem = Problem::<F, f32>::random(shape, Options::PLAIN, &mut rng);
    let p = problem.params();
    let tiling = F::Tiling::default();
    let kernel = DecodeKernel::<F, f32>::new(gpu, 16, tiling).expect("kernel");
    let bufs = upload(gpu, p.inputs());
    let mut state_buf = gpu
        .upload(&[problem.state.clone(), vec![0.0; 4]].concat())
        .expect("upload");
    let mut out = gpu.alloc_poisoned::<f32>(problem.x.len()).expect("alloc");
    // Row 0 points past the cache (cache_rows = 2), row 1 is valid.
    let idx = gpu.stream().clone_htod(&[bad_index, 1]).expect("upload");
    let args = |with_idx: bool| {
        let mut views = bufs
            .as_ref()
            .map(|v| v.as_view(), |v| v.as_view(), |v| v.as_view());
        views.state_batch_indices = with_idx.then(|| idx.as_view());
        decode::device_args::<F, f32>(&p, views)
    };
    let len = problem.state.len();

    // A state view that starts one float in: not 16-byte aligned.
    let err = decode::launch_decode_step(
        gpu,
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
    let err = decode::launch_decode_step(
        gpu,
        &kernel,
        &args(false),
        &mut state_buf.slice_mut(0..len - 16),
        &mut out.as_view_mut(),
    )
    .unwrap_err();
    assert!(matches!(err, SsmError::Shape { arg: "state", .. }), "{err}");
    // A kernel compiled for another N.
    let other = DecodeKernel::<F, f32>::new(gpu, other_n, tiling).expect("kernel");
    let err = decode::launch_decode_step(
        gpu,
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

    // The index past the cache: NaN output for row 0, cache row 0 (not addressed)
    // untouched, and the 4 floats past the cache unchanged.
    decode::launch_decode_step(
        gpu,
        &kernel,
        &args(true),
        &mut state_buf.slice_mut(0..len),
        &mut out.as_view_mut(),
    )
    .expect("launch");
    let out = gpu.download(&out).expect("download");
    let state = gpu.download(&state_buf).expect("download");
    let (out_row, row_len) = (sizes.out_row, sizes.state_row);
    assert!(out[..out_row].iter().all(|v| v.is_nan()));
    assert!(out[out_row..].iter().all(|v| v.is_finite()));
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
pub fn refuses_f64<F: TestFamily>(gpu: &Gpu) {
    let shape = F::model(1, 1);
    let mut rng = StdRng::seed_from_u64(1);
    let problem = Problem::<F, f64>::random(shape, Options::PLAIN, &mut rng);
    let mut state = problem.state.clone();
    let err = decode::decode_step_cuda::<F, f64>(gpu, &problem.params(), &mut state).unwrap_err();
    assert!(matches!(err, SsmError::Unsupported { .. }), "{err}");
}
