//! The CUDA SSD forward pass against the f64 oracle (`ssm_reference::ssd_recurrence`)
//! and against the f32 CPU port of the same chunked algorithm
//! (`mamba2_ssd::cpu::ssd_chunked`).
//!
//! Every case draws fresh random inputs (the seed is printed; `SSM_TEST_SEED`
//! replays a run), runs the GPU into NaN-poisoned outputs, and requires
//! - output relative L2 to the oracle within `rel_l2_budget(T, K)` and no NaN/Inf,
//! - final states within `state_budget(K)`,
//! - the GPU and the CPU port to agree within the sum of their budgets,
//!
//! with `K` the largest per-chunk log-decay (chunks restart at sequence starts).
//! Each test prints a table row per case before asserting, so one run shows every
//! number. Without a GPU each test prints `SKIPPED` and passes (`SSM_REQUIRE_GPU=1`
//! makes that a failure).

mod cpu_support;

use cpu_support::{chunked_log_decay, dims, Case, DKind, Options, Steps};
use half::{bf16, f16};
use mamba2_ssd::cpu::ssd_chunked;
use mamba2_ssd::cuda::{
    ssd_forward_cuda, ssd_forward_cuda_with, CudaOptions, KernelChoice, KernelConfig, Segmentation,
    SsdDeviceInputs, SsdFeatures, SsdPlan,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::mamba2::SsdDims;
use ssm_core::tolerance::{compare, rel_l2_budget, state_budget};
use ssm_core::{DType, SsmError};
use ssm_gpu::{precompile, test_gpu_or_skip, test_seed, DeviceElement, Gpu};

fn seed() -> u64 {
    test_seed("gpu_ssd")
}

/// One checked run: errors against the oracle and the CPU port.
#[derive(Debug)]
struct Row {
    label: String,
    dtype: DType,
    kernel: String,
    out_rel: f64,
    out_budget: f64,
    out_non_finite: usize,
    state_rel: Option<f64>,
    state_budget: f64,
    vs_cpu: f64,
}

impl Row {
    fn passes(&self) -> bool {
        self.out_non_finite == 0
            && self.out_rel <= self.out_budget
            && self.state_rel.is_none_or(|s| s <= self.state_budget)
            && self.vs_cpu <= 2.0 * self.out_budget
    }
    fn print(&self) {
        eprintln!(
            "| {:<44} | {:<4} | {:<34} | {:.2e} / {:.1e} | {} | {:.2e} | {} |",
            self.label,
            self.dtype,
            self.kernel,
            self.out_rel,
            self.out_budget,
            self.state_rel.map_or("   -    ".to_string(), |s| format!(
                "{s:.2e} / {:.1e}",
                self.state_budget
            )),
            self.vs_cpu,
            if self.passes() { "ok" } else { "FAIL" }
        );
    }
}

fn kernel_name<T: DeviceElement>(gpu: &Gpu, case: &Case, opts: &CudaOptions) -> String {
    let r = case.rounded::<T>();
    let p = case.params(&r);
    let limits = match gpu.limits() {
        Ok(l) => l,
        Err(e) => return format!("({e})"),
    };
    KernelConfig::select(T::DTYPE, &p.dims, SsdFeatures::of(&p), opts, &limits).map_or_else(
        |e| format!("({e})"),
        |c| c.label(false).replace("mamba2.", ""),
    )
}

/// Run `case` on the GPU with inputs rounded to `T` and compare.
fn check<T: DeviceElement>(gpu: &Gpu, label: &str, case: &Case, opts: &CudaOptions) -> Row {
    let rounded = case.rounded::<T>();
    let p = case.params(&rounded);
    let got = ssd_forward_cuda_with(gpu, &p, opts)
        .unwrap_or_else(|e| panic!("{label} [{}]: {e}", T::DTYPE))
        .to_f64();
    let want = ssm_reference::ssd_recurrence(&p).expect("valid problem");
    let cpu = ssd_chunked(&p, opts.chunk_size)
        .expect("valid problem")
        .to_f64();
    let k = chunked_log_decay(&p, opts.chunk_size);
    let out = compare(&got.out, &want.out);
    let state_rel = match (&got.final_states, &want.final_states) {
        (Some(g), Some(w)) => Some(compare(g, w).rel_l2),
        (None, None) => None,
        (g, w) => panic!(
            "{label}: final states present on GPU {} / oracle {}",
            g.is_some(),
            w.is_some()
        ),
    };
    let mut states_nan = 0;
    if let Some(g) = &got.final_states {
        states_nan = g.iter().filter(|v| !v.is_finite()).count();
    }
    Row {
        label: label.to_string(),
        dtype: T::DTYPE,
        kernel: kernel_name::<T>(gpu, case, opts),
        out_rel: out.rel_l2,
        out_budget: rel_l2_budget(T::DTYPE, k),
        out_non_finite: out.non_finite + states_nan,
        state_rel,
        state_budget: state_budget(k),
        vs_cpu: compare(&got.out, &cpu.out).rel_l2,
    }
}

/// One GPU run to check: a case, its options and the input type.
struct Job<'c> {
    label: String,
    case: &'c Case,
    opts: CudaOptions,
    dtype: DType,
}

/// The three input types of `case`.
fn all_dtypes<'c>(jobs: &mut Vec<Job<'c>>, label: &str, case: &'c Case, opts: &CudaOptions) {
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        jobs.push(Job {
            label: label.to_string(),
            case,
            opts: *opts,
            dtype,
        });
    }
}

/// The kernel variants a job compiles (the prepass too when it may split).
fn variants_of<T: DeviceElement>(gpu: &Gpu, job: &Job<'_>) -> Vec<ssm_gpu::KernelVariant> {
    let r = job.case.rounded::<T>();
    let p = job.case.params(&r);
    let Ok(limits) = gpu.limits() else {
        return Vec::new();
    };
    match KernelConfig::select(T::DTYPE, &p.dims, SsdFeatures::of(&p), &job.opts, &limits) {
        Ok(c) => vec![c.variant(false), c.variant(true)],
        Err(_) => Vec::new(),
    }
}

/// Compile every module the jobs need on all cores first (NVRTC dominates the
/// run time otherwise); the checks then load them from the on-disk cache.
fn warm_up(gpu: &Gpu, jobs: &[Job<'_>]) {
    let mut variants = Vec::new();
    for job in jobs {
        variants.extend(match job.dtype {
            DType::F32 => variants_of::<f32>(gpu, job),
            DType::F16 => variants_of::<f16>(gpu, job),
            DType::Bf16 => variants_of::<bf16>(gpu, job),
            DType::F64 => Vec::new(),
        });
    }
    precompile(gpu, variants);
}

fn run_jobs(gpu: &Gpu, jobs: &[Job<'_>]) -> Vec<Row> {
    warm_up(gpu, jobs);
    jobs.iter()
        .map(|j| match j.dtype {
            DType::F32 => check::<f32>(gpu, &j.label, j.case, &j.opts),
            DType::F16 => check::<f16>(gpu, &j.label, j.case, &j.opts),
            DType::Bf16 => check::<bf16>(gpu, &j.label, j.case, &j.opts),
            DType::F64 => unreachable!("no f64 jobs"),
        })
        .collect()
}

fn finish(test: &str, rows: &[Row]) {
    eprintln!("\n{test}:");
    eprintln!(
        "| case | type | kernel | out rel L2 / budget | states rel L2 / budget | GPU vs CPU port | |"
    );
    eprintln!("|---|---|---|---|---|---|---|");
    for r in rows {
        r.print();
    }
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.passes())
        .map(|r| &r.label)
        .collect();
    assert!(failed.is_empty(), "{test}: failed cases {failed:?}");
}

fn opts(chunk: usize) -> CudaOptions {
    CudaOptions {
        chunk_size: chunk,
        ..CudaOptions::default()
    }
}

/// The option combinations of docs/DESIGN.md §1.2: none, all, each one off from all,
/// each one on from none, and random mixes.
fn option_sets(rng: &mut StdRng) -> Vec<(String, Options)> {
    let none = Options::default();
    let all = Options::all();
    type Toggle = (&'static str, fn(&mut Options, bool));
    let toggles: [Toggle; 8] = [
        ("dt_bias", |o, on| o.dt_bias = on),
        ("softplus", |o, on| o.dt_softplus = on),
        ("dt_limit", |o, on| o.dt_limit = on.then_some((1e-3, 0.5))),
        ("D(H)", |o, on| o.d = on.then_some(DKind::PerHead)),
        ("D(H,P)", |o, on| o.d = on.then_some(DKind::PerHeadDim)),
        ("z", |o, on| o.z = on),
        ("s0", |o, on| o.initial_states = on),
        ("final", |o, on| o.final_states = on),
    ];
    let mut sets = vec![
        ("none".to_string(), none.clone()),
        ("all".to_string(), all.clone()),
    ];
    for (name, set) in &toggles {
        let mut o = all.clone();
        set(&mut o, false);
        sets.push((format!("all - {name}"), o));
        let mut o = none.clone();
        set(&mut o, true);
        sets.push((format!("only {name}"), o));
    }
    for i in 0..4 {
        let mut o = none.clone();
        let mut names = Vec::new();
        for (name, set) in &toggles {
            if rng.random_bool(0.5) {
                set(&mut o, true);
                names.push(*name);
            }
        }
        sets.push((format!("mix{i} {}", names.join("+")), o));
    }
    sets
}

#[test]
fn every_option_combination_every_dtype() {
    let Some(gpu) = test_gpu_or_skip("every_option_combination_every_dtype") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed());
    // L not a multiple of the chunk; G = 2 groups of 2 heads.
    let d = dims(2, 203, 4, 64, 32, 2);
    let cases: Vec<(String, Case)> = option_sets(&mut rng)
        .into_iter()
        .map(|(name, o)| (name, Case::new(d, o, rng.random())))
        .collect();
    let mut jobs = Vec::new();
    for (name, case) in &cases {
        all_dtypes(&mut jobs, name, case, &opts(64));
    }
    finish(
        "every_option_combination_every_dtype",
        &run_jobs(&gpu, &jobs),
    );
}

#[test]
fn state_sizes_head_dims_and_chunks() {
    let Some(gpu) = test_gpu_or_skip("state_sizes_head_dims_and_chunks") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed());
    let mut cases = Vec::new();
    for &(n, p, chunk) in &[
        (16, 32, 64),
        (32, 64, 128),
        (64, 128, 256),
        (128, 64, 64),
        (128, 128, 128),
        (256, 64, 64),
        (256, 32, 128),
        (128, 64, 256),
        (24, 64, 64),   // N % 16 != 0: SIMT fallback for f16/bf16
        (64, 48, 64),   // P % 32 != 0: SIMT fallback
        (256, 64, 256), // too much shared memory for the fused kernel: SIMT
    ] {
        let d = dims(1, 2 * chunk + 37, 2, p, n, 1);
        let case = Case::new(d, Options::all(), rng.random());
        cases.push((format!("N={n} P={p} Q={chunk}"), case, chunk));
    }
    let mut jobs = Vec::new();
    for (label, case, chunk) in &cases {
        all_dtypes(&mut jobs, label, case, &opts(*chunk));
    }
    finish("state_sizes_head_dims_and_chunks", &run_jobs(&gpu, &jobs));
}

#[test]
fn lengths_varlen_and_split_sequences() {
    let Some(gpu) = test_gpu_or_skip("lengths_varlen_and_split_sequences") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed());
    let mut cases: Vec<(String, Case, CudaOptions)> = Vec::new();
    for (label, l) in [
        ("L=1", 1usize),
        ("L=64", 64),
        ("L=65", 65),
        ("L=1000", 1000),
    ] {
        let case = Case::new(dims(3, l, 2, 64, 64, 1), Options::all(), rng.random());
        cases.push((label.into(), case, opts(64)));
    }
    // Varlen: boundaries inside chunks, an empty sequence, a one-token sequence,
    // per-sequence initial and final states.
    let cu = vec![0i64, 70, 70, 71, 300, 1100];
    let o = Options {
        cu_seqlens: Some(cu.clone()),
        ..Options::all()
    };
    let case = Case::new(dims(1, 1100, 4, 64, 32, 2), o.clone(), rng.random());
    cases.push(("varlen 70,0,1,229,800".into(), case, opts(64)));
    let case = Case::new(dims(1, 1100, 4, 64, 32, 2), o, rng.random());
    cases.push(("varlen Q=128".into(), case, opts(128)));

    // Split sequences (prepass + state sums), forced, with and without s0.
    for (label, s0, cu) in [
        ("split x6 with s0", true, None),
        ("split x6 no s0", false, None),
        ("split varlen", true, Some(vec![0i64, 1500, 1501, 3100])),
    ] {
        let o = Options {
            initial_states: s0,
            cu_seqlens: cu.clone(),
            ..Options::all()
        };
        let batch = if cu.is_some() { 1 } else { 2 };
        let case = Case::new(dims(batch, 3100, 2, 64, 64, 1), o, rng.random());
        let split = CudaOptions {
            segmentation: Segmentation::AtMost(6),
            ..opts(64)
        };
        cases.push((label.into(), case, split));
    }
    let mut jobs = Vec::new();
    for (label, case, o) in &cases {
        all_dtypes(&mut jobs, label, case, o);
    }
    finish("lengths_varlen_and_split_sequences", &run_jobs(&gpu, &jobs));
}

#[test]
fn large_and_spiky_steps_and_the_simt_kernel_on_half_inputs() {
    let Some(gpu) = test_gpu_or_skip("large_and_spiky_steps") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed());
    let mut cases = Vec::new();
    for (label, steps) in [("large dt", Steps::Large), ("spiky dt", Steps::Spiky)] {
        let o = Options {
            steps,
            dt_limit: None,
            ..Options::all()
        };
        cases.push((
            label,
            Case::new(dims(2, 300, 4, 64, 64, 2), o, rng.random()),
        ));
    }
    let half_case = Case::new(dims(2, 150, 2, 64, 32, 1), Options::all(), rng.random());
    let mut jobs = Vec::new();
    for (label, case) in &cases {
        all_dtypes(&mut jobs, label, case, &opts(64));
        all_dtypes(&mut jobs, &format!("{label} Q=256"), case, &opts(256));
    }
    let simt = CudaOptions {
        kernel: KernelChoice::Simt,
        ..opts(64)
    };
    let stages2 = CudaOptions {
        stages: 2,
        ..opts(64)
    };
    let cb_in_block = CudaOptions {
        shared_cb: Some(false),
        ..opts(64)
    };
    let cb_shared = CudaOptions {
        shared_cb: Some(true),
        ..opts(128)
    };
    let warps8 = CudaOptions {
        warps: Some(8),
        ..opts(64)
    };
    let yc32 = CudaOptions {
        y_cols: Some(32),
        ..opts(64)
    };
    let yc64_in_block = CudaOptions {
        y_cols: Some(64),
        shared_cb: Some(false),
        ..opts(64)
    };
    for (label, o, dtype) in [
        ("forced SIMT", simt, DType::Bf16),
        ("forced SIMT", simt, DType::F16),
        ("2 cp.async stages", stages2, DType::Bf16),
        ("2 cp.async stages", stages2, DType::F16),
        ("C B^T formed in-block", cb_in_block, DType::Bf16),
        ("C B^T formed in-block", cb_in_block, DType::F16),
        ("C B^T precomputed, Q=128", cb_shared, DType::Bf16),
        ("8 warps", warps8, DType::Bf16),
        ("8 warps", warps8, DType::F16),
        ("32-column units", yc32, DType::Bf16),
        ("32-column units", yc32, DType::F16),
        (
            "64-column units, C B^T in-block",
            yc64_in_block,
            DType::Bf16,
        ),
    ] {
        jobs.push(Job {
            label: label.into(),
            case: &half_case,
            opts: o,
            dtype,
        });
    }
    finish("large_and_spiky_steps", &run_jobs(&gpu, &jobs));
}

#[test]
fn empty_input_and_unsupported_requests_are_errors_not_answers() {
    let Some(gpu) = test_gpu_or_skip("empty_input_and_unsupported_requests") else {
        return;
    };
    // L = 0: no launch, final states equal the initial ones.
    let case = Case::new(dims(2, 0, 2, 32, 16, 1), Options::all(), 1);
    let r = case.rounded::<bf16>();
    let got = ssd_forward_cuda(&gpu, &case.params(&r)).expect("L = 0 is valid");
    assert!(got.out.is_empty());
    assert_eq!(got.final_states.as_deref(), Some(&case.initial_states[..]));

    let case = Case::new(dims(1, 10, 2, 64, 32, 1), Options::all(), 2);
    let r = case.rounded::<bf16>();
    let p = case.params(&r);
    for bad in [
        CudaOptions {
            chunk_size: 100,
            ..CudaOptions::default()
        },
        CudaOptions {
            stages: 3,
            ..CudaOptions::default()
        },
    ] {
        let e = ssd_forward_cuda_with(&gpu, &p, &bad).unwrap_err();
        assert!(matches!(e, SsmError::Unsupported { .. }), "{e}");
    }
    let r32 = case.rounded::<f32>();
    let forced = CudaOptions {
        kernel: KernelChoice::Fused,
        ..CudaOptions::default()
    };
    let e = ssd_forward_cuda_with(&gpu, &case.params(&r32), &forced).unwrap_err();
    assert!(matches!(e, SsmError::Unsupported { .. }), "{e}");
    let r64 = case.rounded::<f64>();
    let e = ssd_forward_cuda(&gpu, &case.params(&r64)).unwrap_err();
    assert!(matches!(e, SsmError::Unsupported { .. }), "{e}");
}

#[test]
fn plan_relaunch_rewrites_every_output() {
    let Some(gpu) = test_gpu_or_skip("plan_relaunch_rewrites_every_output") else {
        return;
    };
    let case = Case::new(dims(2, 500, 4, 64, 128, 1), Options::all(), seed());
    let r = case.rounded::<bf16>();
    let p = case.params(&r);
    let plan = SsdPlan::new(&gpu, &p, &CudaOptions::default()).expect("plan");
    let inputs = SsdDeviceInputs::upload(&gpu, &p).expect("upload");
    let mut outputs = plan.alloc_outputs::<bf16>(&gpu).expect("alloc");
    plan.launch(&gpu, &inputs, &mut outputs).expect("launch");
    let first = gpu.download(&outputs.out).expect("download");
    gpu.poison(&mut outputs.out).expect("poison");
    plan.launch(&gpu, &inputs, &mut outputs).expect("launch");
    let second = gpu.download(&outputs.out).expect("download");
    assert!(
        second.iter().all(|v| v.to_f32().is_finite()),
        "unwritten outputs after relaunch"
    );
    assert_eq!(first, second, "the kernel is deterministic");
    // Buffers of the wrong size are refused.
    let wrong = SsdDims { batch: 1, ..p.dims };
    let rs = Case::new(wrong, Options::all(), 3);
    let rr = rs.rounded::<bf16>();
    let small = SsdDeviceInputs::upload(&gpu, &rs.params(&rr)).expect("upload");
    assert!(plan.launch(&gpu, &small, &mut outputs).is_err());
}
