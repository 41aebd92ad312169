//! `ssmk kernels`: kernel packs, every kernel variant compiled ahead of time so
//! that a machine without NVRTC can run them (`SSM_KERNEL_PACK=DIR`).
//!
//! - `ssmk kernels pack --out DIR [--arch ...] [--coverage ...] [--shape ...]`
//!   plans every variant of the chosen coverage for each target, with the
//!   limits of the devices that run it ([`planning_profiles`]), compiles each
//!   once with NVRTC (in parallel) and writes the pack. Exit 1 when a variant
//!   fails to compile, 2 without NVRTC.
//! - `ssmk kernels check --pack DIR [...]`: with NVRTC switched off (pack-only
//!   mode), looks up every variant of the same coverage: exit 1 on a miss. It
//!   needs no NVRTC, so it also proves a deployment can run without one.
//!
//! What a coverage holds is listed by [`Coverage`]; `--shape` adds the variants
//! a plan would pick for one problem of yours (the `verify`/`bench` syntax).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use mamba1_scan::cuda::{BwdConfig, ScanConfig, ScanProblem, ScanTuning};
use mamba2_ssd::cuda::backward::BwdConfig as SsdBwdConfig;
use mamba2_ssd::cuda::{CudaOptions, DMode, KernelConfig, SsdFeatures};
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::mamba2::SsdDims;
use ssm_core::DType;
use ssm_gpu::pack::{
    pack_key, planning_profiles, render_defines, sorted_defines, PackManifest, PackTarget,
    PackWriter,
};
use ssm_gpu::ptxas::find_entry;
use ssm_gpu::{Arch, Compiler, DeviceLimits, GpuError, KernelPack, KernelVariant, ModuleOrigin};
use ssm_telemetry::problem::{Problem, SkipKind};
use ssm_telemetry::shape_arg::{parse_problem, ShapeOp};

#[derive(Args, Debug)]
pub struct KernelsArgs {
    #[command(subcommand)]
    pub command: KernelsCommand,
}

#[derive(Subcommand, Debug)]
pub enum KernelsCommand {
    /// Compile every kernel variant of a coverage for each target into a kernel
    /// pack directory (needs NVRTC; no GPU).
    Pack(PackArgs),
    /// Look up every variant of a coverage in a pack, NVRTC switched off: exit 1
    /// on a miss (needs neither NVRTC nor a GPU).
    Check(CheckArgs),
}

/// Which variants a pack holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Coverage {
    /// Only the `--shape` problems (and the runtime's self-test kernels): the
    /// smallest pack for a known workload.
    Shapes,
    /// Every variant the kernel crates list (`kernel_variants()`: the reference
    /// shapes, every kernel file and entry, the runtime's self-test and probe
    /// kernels), planned for each target's devices.
    Reference,
    /// `reference`, plus the shapes of published Mamba models: the SSD forward
    /// at P = 64 and N = 64/128/256 (heads sharing B/C, or alone) with dt bias,
    /// softplus and D per head, every on/off of z, initial and final states,
    /// plus every option on; the SSD backward at P = 64 and N = 64/128/256 with
    /// every option, with and without `d_final_states`; the scan forward and backward at N = 16 with every
    /// option (B/C grouped, L a multiple of 8 or not); both decode steps at N =
    /// 16, 32, 64, 128, 256 with their default tilings. f32, f16 and bf16
    /// throughout; chunk size 64 (the default).
    #[default]
    Models,
}

#[derive(Args, Debug)]
pub struct CoverageArgs {
    /// Targets, comma-separated: sm_80, sm_86, sm_89, sm_90 (SASS), sm_90a,
    /// compute_90 (PTX the driver JIT-compiles on devices newer than sm_90).
    #[arg(long, value_delimiter = ',', value_parser = parse_arch,
          default_value = "sm_80,sm_86,sm_89,sm_90,compute_90")]
    pub arch: Vec<Arch>,
    /// Which variants the pack holds (`--help` lists each).
    #[arg(long, value_enum, default_value_t)]
    pub coverage: Coverage,
    /// Add the variants a plan picks for one problem, as
    /// `OP:SHAPE[:OPTIONS[:DTYPE[:CHUNK]]]` with OP ssd, scan, m1-step or m2-step
    /// and SHAPE/OPTIONS as `ssmk verify --shape/--options` take them, e.g.
    /// `ssd:b=1,L=4096,H=24,P=64,N=128,G=1:bias,softplus,D,final:bf16`
    /// (options default to all, dtype to bf16, chunk to 64). Repeatable.
    #[arg(long = "shape", value_name = "OP:SHAPE[:OPTIONS[:DTYPE[:CHUNK]]]")]
    pub shapes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PackArgs {
    #[command(flatten)]
    pub coverage: CoverageArgs,
    /// The pack directory (created; an old pack there is replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Compile threads (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print what would be compiled and stop (no NVRTC needed).
    #[arg(long)]
    pub plan_only: bool,
    /// Keep source lines in the modules (`-lineinfo`, for profilers): about
    /// four times the size.
    #[arg(long)]
    pub line_info: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub coverage: CoverageArgs,
    /// The pack to check (default: `SSM_KERNEL_PACK`).
    #[arg(long)]
    pub pack: Option<PathBuf>,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse()
}

pub fn run(args: &KernelsArgs) -> ExitCode {
    match &args.command {
        KernelsCommand::Pack(a) => pack(a),
        KernelsCommand::Check(a) => check(a),
    }
}

/// One module to build: a target and a variant (under every label that
/// planned the same defines).
#[derive(Clone, Debug)]
pub struct Planned {
    pub arch: Arch,
    pub family: &'static str,
    pub variant: KernelVariant,
    pub labels: Vec<String>,
}

/// What makes a module distinct: target, main file and sorted defines.
type ModuleId = (Arch, String, Vec<(String, String)>);

/// Every module of `coverage` (and the `shapes`) for `archs`, deduplicated
/// by target, source and sorted defines; in a stable order.
pub fn plan(coverage: Coverage, shapes: &[Problem], archs: &[Arch]) -> Vec<Planned> {
    let mut planned: BTreeMap<ModuleId, Planned> = BTreeMap::new();
    for &arch in archs {
        for (_, limits) in planning_profiles(arch) {
            let mut push = |family: &'static str, v: KernelVariant| {
                let key = (arch, v.source.path.to_string(), sorted_defines(&v.defines));
                let entry = planned.entry(key).or_insert_with(|| Planned {
                    arch,
                    family,
                    variant: v.clone(),
                    labels: Vec::new(),
                });
                if !entry.labels.contains(&v.label) {
                    entry.labels.push(v.label.clone());
                }
            };
            if coverage == Coverage::Shapes {
                for v in ssm_gpu::selftest::selftest_variants() {
                    push("runtime", v);
                }
                for problem in shapes {
                    for (family, v) in problem_variants(problem, &limits) {
                        push(family, v);
                    }
                }
                continue;
            }
            reference(&limits, &mut |f, v| push(f, v));
            // The crates' own lists are planned for the H100 (their budgets are
            // sm_90's): on devices with its on-chip limits take them as they
            // are, so that a variant added there is packed even before the
            // re-planned lists above learn of it (a test says when they lag).
            if same_on_chip(&limits, &DeviceLimits::H100_SXM) {
                for v in mamba2_ssd::kernel_variants() {
                    push("listed", v);
                }
                for v in mamba1_scan::kernel_variants() {
                    push("listed", v);
                }
            }
            if coverage == Coverage::Models {
                model_ssd(&limits, &mut |v| push("ssd", v));
                model_ssd_bwd(&mut |v| push("ssd-bwd", v));
                model_scan(&limits, &mut |f, v| push(f, v));
                model_decode(&mut |f, v| push(f, v));
            }
            for problem in shapes {
                for (family, v) in problem_variants(problem, &limits) {
                    push(family, v);
                }
            }
        }
    }
    planned.into_values().collect()
}

/// The reference coverage on `limits`: the runtime's kernels, and the crates'
/// `kernel_variants()` shapes and options re-planned for these limits.
fn reference(limits: &DeviceLimits, push: &mut dyn FnMut(&'static str, KernelVariant)) {
    for v in ssm_gpu::selftest::selftest_variants()
        .into_iter()
        .chain(ssm_gpu::probes::ceiling_variants())
    {
        push("runtime", v);
    }
    reference_ssd(limits, &mut |v| push("ssd", v));
    reference_ssd_bwd(&mut |v| push("ssd-bwd", v));
    reference_scan(limits, push);
    for v in mamba2_ssd::decode_cuda::decode_kernel_variants() {
        push("m2-step", v);
    }
    for v in mamba1_scan::decode_cuda::decode_kernel_variants() {
        push("m1-step", v);
    }
}

/// Whether two devices plan alike: every limit the selections read (all but
/// the SM count, which sizes grids only, and the L2 size).
fn same_on_chip(a: &DeviceLimits, b: &DeviceLimits) -> bool {
    DeviceLimits {
        sm_count: b.sm_count,
        l2_bytes: b.l2_bytes,
        ..*a
    } == *b
}

fn ssd_dims(heads: usize, groups: usize, head_dim: usize, d_state: usize) -> SsdDims {
    SsdDims::new(1, 4096, heads, head_dim, d_state, groups)
}

/// Every module an SSD plan with this config may load: the main pass, the
/// state-only prepass of split sequences and the C B^T pre-kernel.
fn ssd_config_variants(
    dtype: DType,
    dims: &SsdDims,
    features: SsdFeatures,
    opts: &CudaOptions,
    limits: &DeviceLimits,
    push: &mut dyn FnMut(KernelVariant),
) {
    // A shape the selection refuses is no variant (the plan would refuse it too).
    if let Ok(c) = KernelConfig::select(dtype, dims, features, opts, limits) {
        push(c.variant(false));
        push(c.variant(true));
        if c.uses_chunk_cb() {
            push(c.chunk_cb_variant());
        }
    }
}

/// `mamba2_ssd::cuda::ssd_kernel_variants()`'s shapes and options, planned for
/// `limits` (that list plans for the H100 only: its budgets are sm_90's).
fn reference_ssd(limits: &DeviceLimits, push: &mut dyn FnMut(KernelVariant)) {
    let opts = CudaOptions::default();
    let all = SsdFeatures::all();
    let no_final = SsdFeatures {
        final_states: false,
        ..all
    };
    let in_block = CudaOptions {
        shared_cb: Some(false),
        ..opts
    };
    let two_stages = CudaOptions { stages: 2, ..opts };
    let cases: [(DType, usize, usize, SsdFeatures, &CudaOptions); 10] = [
        (DType::Bf16, 128, 64, all, &opts),
        (DType::F16, 128, 64, all, &opts),
        (DType::Bf16, 128, 128, all, &opts),
        (DType::Bf16, 256, 64, all, &opts),
        (DType::Bf16, 128, 64, all, &two_stages),
        (DType::Bf16, 128, 64, all, &in_block),
        (DType::F32, 128, 64, all, &opts),
        (DType::Bf16, 128, 64, no_final, &opts),
        (DType::Bf16, 128, 128, no_final, &opts),
        (DType::F16, 128, 128, no_final, &opts),
    ];
    for (dtype, n, p, features, o) in cases {
        ssd_config_variants(dtype, &ssd_dims(2, 1, p, n), features, o, limits, push);
    }
}

/// The SSD backward's modules for one shape and option set (its six entry
/// points share one module). The backward's SIMT kernels use a few KB of
/// static shared memory and nothing the limits decide, so every target plans
/// them alike.
fn ssd_bwd_variants(
    dtype: DType,
    dims: &SsdDims,
    features: SsdFeatures,
    d_final: bool,
    chunk: usize,
    push: &mut dyn FnMut(KernelVariant),
) {
    if let Ok(c) = SsdBwdConfig::new(dtype, dims, features, d_final, chunk) {
        // v1's loops everywhere, the tiled v3 where it takes the shape, v4's
        // tensor-core tiles where those do.
        let versions = [
            c.with_tiled(false),
            c.with_tiled(true).and_then(|c| c.with_tensor_tiles(false)),
            c.with_tensor_tiles(true),
        ];
        for c in versions.into_iter().flatten() {
            for v in c.variants() {
                push(v);
            }
        }
    }
}

/// `mamba2_ssd::cuda::backward::ssd_bwd_kernel_variants()`'s shapes and options.
fn reference_ssd_bwd(push: &mut dyn FnMut(KernelVariant)) {
    for (dtype, n, p, chunk) in [
        (DType::Bf16, 128, 64, 64),
        (DType::Bf16, 128, 64, 256),
        (DType::F32, 128, 64, 64),
        // The tiled v3 at P = 128 and at the largest N it takes.
        (DType::Bf16, 128, 128, 64),
        (DType::Bf16, 256, 128, 64),
    ] {
        ssd_bwd_variants(
            dtype,
            &ssd_dims(2, 1, p, n),
            SsdFeatures::all(),
            true,
            chunk,
            push,
        );
    }
    // The tensor-core S C / G B at M2-2.7B's head.
    let dims = ssd_dims(2, 1, 64, 128);
    let mma = SsdBwdConfig::new(DType::Bf16, &dims, SsdFeatures::all(), true, 64)
        .and_then(|c| c.with_tensor_cores(true));
    if let Ok(c) = mma {
        for v in c.variants() {
            push(v);
        }
    }
}

/// The SSD backward at the published Mamba-2 shapes (see [`Coverage::Models`]).
fn model_ssd_bwd(push: &mut dyn FnMut(KernelVariant)) {
    for dtype in [DType::Bf16, DType::F16, DType::F32] {
        for n in [64, 128, 256] {
            for d_final in [true, false] {
                let dims = ssd_dims(8, 1, 64, n);
                ssd_bwd_variants(dtype, &dims, SsdFeatures::all(), d_final, 64, push);
            }
        }
    }
}

/// The published Mamba-2 shapes (see [`Coverage::Models`]).
fn model_ssd(limits: &DeviceLimits, push: &mut dyn FnMut(KernelVariant)) {
    let opts = CudaOptions::default();
    let mut feature_sets = vec![SsdFeatures::all()];
    for bits in 0..8u8 {
        feature_sets.push(SsdFeatures {
            dt_bias: true,
            dt_softplus: true,
            d: DMode::PerHead,
            z: bits & 1 != 0,
            initial_states: bits & 2 != 0,
            final_states: bits & 4 != 0,
        });
    }
    for dtype in [DType::Bf16, DType::F16, DType::F32] {
        for n in [64, 128, 256] {
            // Heads sharing a B/C group (every published model), or alone in it.
            for (heads, groups) in [(8, 1), (8, 8)] {
                for &features in &feature_sets {
                    let dims = ssd_dims(heads, groups, 64, n);
                    ssd_config_variants(dtype, &dims, features, &opts, limits, push);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // the fields of one problem, named at the call
fn scan_problem(
    dtype: DType,
    d_state: usize,
    seqlen: usize,
    grouped: bool,
    options: bool,
    initial: bool,
    final_states: bool,
) -> ScanProblem {
    ScanProblem {
        dtype,
        dims: Mamba1Dims::new(1, 64, d_state, seqlen),
        b_groups: grouped.then_some(1),
        c_groups: grouped.then_some(1),
        has_d: options,
        has_z: options,
        has_delta_bias: options,
        delta_softplus: options,
        has_initial_states: initial,
        return_final_states: final_states,
        varlen_seqs: None,
    }
}

fn scan_variants(
    problem: &ScanProblem,
    limits: &DeviceLimits,
    backward: bool,
    push: &mut dyn FnMut(&'static str, KernelVariant),
) {
    if let Ok(c) = ScanConfig::new(problem, ScanTuning::default(), limits) {
        push("scan", c.variant());
    }
    if backward {
        if let Ok(c) = BwdConfig::new(problem, limits) {
            for v in c.variants() {
                push("scan-bwd", v);
            }
        }
        training_forward(problem, limits, push);
    }
}

/// The training forward (the forward that leaves the backward's checkpoints,
/// `BwdOptions::forward_checkpoints`), where the problem has one.
fn training_forward(
    problem: &ScanProblem,
    limits: &DeviceLimits,
    push: &mut dyn FnMut(&'static str, KernelVariant),
) {
    let training = BwdConfig::new(problem, limits).and_then(|bwd| {
        ScanConfig::new(problem, ScanTuning::default(), limits)?.with_checkpoints(problem, bwd.tile)
    });
    if let Ok(c) = training {
        push("scan", c.variant());
    }
}

/// `mamba1_scan::cuda::scan_kernel_variants()`'s problems, planned for `limits`.
fn reference_scan(limits: &DeviceLimits, push: &mut dyn FnMut(&'static str, KernelVariant)) {
    let m1 = |dtype, n, seqlen, grouped, options| {
        scan_problem(dtype, n, seqlen, grouped, options, false, true)
    };
    let forward_and_backward = [
        m1(DType::Bf16, 16, 4096, true, true),
        m1(DType::F32, 16, 4096, true, true),
        m1(DType::Bf16, 16, 4096, true, false),
        m1(DType::Bf16, 16, 4096, false, true),
        m1(DType::F32, 5, 4095, true, true),
        m1(DType::Bf16, 256, 4096, true, true),
    ];
    for p in &forward_and_backward {
        scan_variants(p, limits, true, push);
    }
    // F16's backward is not in the crate's list, its training forward is.
    training_forward(&m1(DType::F16, 16, 4096, true, true), limits, push);
    for p in [
        m1(DType::F16, 16, 4096, true, true),
        m1(DType::Bf16, 16, 4095, true, true),
        m1(DType::F32, 256, 4096, true, true),
    ] {
        scan_variants(&p, limits, false, push);
    }
}

/// The published Mamba-1 shapes (see [`Coverage::Models`]).
fn model_scan(limits: &DeviceLimits, push: &mut dyn FnMut(&'static str, KernelVariant)) {
    for dtype in [DType::Bf16, DType::F16, DType::F32] {
        for seqlen in [4096, 4095] {
            let p = scan_problem(dtype, 16, seqlen, true, true, false, true);
            scan_variants(&p, limits, true, push);
        }
    }
}

/// Both decode steps at the model state sizes, default tilings.
fn model_decode(push: &mut dyn FnMut(&'static str, KernelVariant)) {
    use mamba1_scan::decode_cuda::Mamba1Decode;
    use mamba2_ssd::decode_cuda::Mamba2Decode;
    use ssm_gpu::decode::{DecodeFamily, SMALL_BATCH};
    for dtype in [DType::Bf16, DType::F16, DType::F32] {
        for n in [16, 32, 64, 128, 256] {
            // The tilings of both batch regimes (DecodeFamily::tiling_for_batch).
            for batch in [1, SMALL_BATCH + 1] {
                let m2 = Mamba2Decode::tiling_for_batch(dtype, batch);
                if let Ok(v) = mamba2_ssd::decode_cuda::decode_variant(dtype, n, m2) {
                    push("m2-step", v);
                }
                let m1 = Mamba1Decode::tiling_for_batch(dtype, batch);
                if let Ok(v) = mamba1_scan::decode_cuda::decode_variant(dtype, n, m1) {
                    push("m1-step", v);
                }
            }
        }
    }
}

/// The variants a plan picks for one `--shape` problem.
fn problem_variants(
    problem: &Problem,
    limits: &DeviceLimits,
) -> Vec<(&'static str, KernelVariant)> {
    let mut out = Vec::new();
    match *problem {
        Problem::Ssd(s) => {
            let dims = SsdDims::new(s.batch, s.seqlen, s.heads, s.head_dim, s.d_state, s.groups);
            let features = SsdFeatures {
                dt_bias: s.dt_bias,
                dt_softplus: s.softplus,
                d: skip_mode(s.d),
                z: s.z,
                initial_states: s.initial_states,
                final_states: s.final_states,
            };
            let opts = CudaOptions {
                chunk_size: s.chunk_size,
                ..CudaOptions::default()
            };
            ssd_config_variants(s.dtype, &dims, features, &opts, limits, &mut |v| {
                out.push(("ssd", v))
            });
        }
        Problem::Mamba1Scan(s) => {
            let p = ScanProblem {
                dtype: s.dtype,
                dims: Mamba1Dims::new(s.batch, s.d_inner, s.d_state, s.seqlen),
                b_groups: s.groups,
                c_groups: s.groups,
                has_d: s.d,
                has_z: s.z,
                has_delta_bias: s.delta_bias,
                delta_softplus: s.softplus,
                has_initial_states: s.initial_states,
                return_final_states: s.final_states,
                varlen_seqs: None,
            };
            scan_variants(&p, limits, true, &mut |f, v| out.push((f, v)));
        }
        Problem::Mamba2Step(s) => {
            let t = mamba2_ssd::decode_cuda::DecodeTiling::default();
            if let Ok(v) = mamba2_ssd::decode_cuda::decode_variant(s.dtype, s.d_state, t) {
                out.push(("m2-step", v));
            }
        }
        Problem::Mamba1Step(s) => {
            let t = mamba1_scan::decode_cuda::DecodeTiling::for_dtype(s.dtype);
            if let Ok(v) = mamba1_scan::decode_cuda::decode_variant(s.dtype, s.d_state, t) {
                out.push(("m1-step", v));
            }
        }
        Problem::Stream(_) => {}
    }
    out
}

fn skip_mode(d: SkipKind) -> DMode {
    match d {
        SkipKind::None => DMode::None,
        SkipKind::PerHead => DMode::PerHead,
        SkipKind::PerHeadDim => DMode::PerHeadDim,
    }
}

/// `OP:SHAPE[:OPTIONS[:DTYPE[:CHUNK]]]` into a problem.
pub fn parse_shape_spec(spec: &str) -> Result<Problem, String> {
    let mut parts = spec.split(':');
    let op = match parts.next().unwrap_or("") {
        "ssd" => ShapeOp::Ssd,
        "scan" => ShapeOp::Scan,
        "m1-step" => ShapeOp::Mamba1Step,
        "m2-step" => ShapeOp::Mamba2Step,
        other => {
            return Err(format!(
                "--shape {spec}: operation `{other}` (expected ssd, scan, m1-step or m2-step)"
            ))
        }
    };
    let shape = parts
        .next()
        .ok_or_else(|| format!("--shape {spec}: no SHAPE after `{}:`", op.name()))?;
    let options = parts.next().unwrap_or("all");
    let dtype = match parts.next() {
        None | Some("") => DType::Bf16,
        Some(d) => parse_dtype(d)
            .ok_or_else(|| format!("--shape {spec}: dtype `{d}` (expected f32, f16 or bf16)"))?,
    };
    let chunk = match parts.next() {
        None | Some("") => CudaOptions::default().chunk_size,
        Some(c) => c
            .parse()
            .map_err(|_| format!("--shape {spec}: chunk `{c}` is not a whole number"))?,
    };
    if let Some(extra) = parts.next() {
        return Err(format!(
            "--shape {spec}: unexpected `:{extra}` (at most 5 fields)"
        ));
    }
    parse_problem(op, shape, options, dtype, chunk).map_err(|e| format!("--shape {spec}: {e}"))
}

fn parse_dtype(s: &str) -> Option<DType> {
    [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .find(|d| d.name() == s.to_ascii_lowercase())
}

fn parse_shapes(args: &CoverageArgs) -> Result<Vec<Problem>, String> {
    args.shapes.iter().map(|s| parse_shape_spec(s)).collect()
}

/// Words for the manifest: what the pack covers.
fn coverage_lines(args: &CoverageArgs) -> Vec<String> {
    let mut lines = vec![format!(
        "coverage {:?}: {}",
        args.coverage,
        match args.coverage {
            Coverage::Shapes => "the --shape problems only",
            Coverage::Reference => "every variant the kernel crates list, planned per target",
            Coverage::Models =>
                "reference + SSD P=64 N=64/128/256 (dt bias, softplus, D per head; z, s0, \
                 final on/off; all on), scan fwd+bwd N=16 all options, decode N=16..256; \
                 f32/f16/bf16, chunk 64",
        }
    )];
    lines.extend(args.shapes.iter().map(|s| format!("shape {s}")));
    lines
}

fn targets(archs: &[Arch]) -> Vec<PackTarget> {
    archs
        .iter()
        .map(|&arch| PackTarget {
            arch,
            planned_for: planning_profiles(arch)
                .into_iter()
                .map(|(name, limits)| (name.to_string(), limits))
                .collect(),
        })
        .collect()
}

fn summary(planned: &[Planned]) -> String {
    let mut per: BTreeMap<(Arch, &str), usize> = BTreeMap::new();
    for p in planned {
        *per.entry((p.arch, p.family)).or_default() += 1;
    }
    let mut out = String::new();
    let mut arch_totals: BTreeMap<Arch, usize> = BTreeMap::new();
    for ((arch, family), n) in &per {
        *arch_totals.entry(*arch).or_default() += n;
        out.push_str(&format!(
            "  {:<10} {family:<8} {n:>5} modules\n",
            arch.name()
        ));
    }
    for (arch, n) in arch_totals {
        out.push_str(&format!("  {:<10} total    {n:>5} modules\n", arch.name()));
    }
    out
}

fn pack(args: &PackArgs) -> ExitCode {
    let shapes = match parse_shapes(&args.coverage) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.coverage.coverage == Coverage::Shapes && shapes.is_empty() {
        eprintln!("error: --coverage shapes needs at least one --shape OP:SHAPE");
        return ExitCode::from(2);
    }
    let mut archs = args.coverage.arch.clone();
    archs.sort();
    archs.dedup();
    let planned = plan(args.coverage.coverage, &shapes, &archs);
    eprintln!(
        "ssmk kernels pack: {} modules for {} ({:?} coverage{})\n{}",
        planned.len(),
        archs
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.coverage.coverage,
        if shapes.is_empty() {
            String::new()
        } else {
            format!(" + {} shapes", shapes.len())
        },
        summary(&planned)
    );
    if args.plan_only {
        return ExitCode::SUCCESS;
    }
    // Build from NVRTC only: never from another pack, and the compile cache
    // is only a speed-up.
    let compiler = match Compiler::new(
        ssm_gpu::SourceRoot::from_env(),
        ssm_gpu::cache::ModuleCache::from_env(),
        ssm_gpu::nvrtc::extra_flags_from_env(),
    ) {
        Ok(c) if args.line_info => c,
        Ok(c) => c.without_line_info(),
        Err(e) => {
            eprintln!("error: building a kernel pack needs NVRTC: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("{}", compiler.describe());
    let mut writer = match PackWriter::create(&args.out) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let results = build_all(&compiler, &planned, jobs, started);
    let mut failures = Vec::new();
    for (p, result) in planned.iter().zip(results) {
        match result.and_then(|built| add(&mut writer, &compiler, p, built)) {
            Ok(()) => {}
            Err(e) => failures.push(format!(
                "{} {} [{}]: {e}",
                p.arch,
                p.labels.join(", "),
                render_defines(&sorted_defines(&p.variant.defines))
            )),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAIL {f}");
        }
        eprintln!(
            "error: {} of {} modules failed to compile; no manifest written, so {} is not a pack",
            failures.len(),
            planned.len(),
            args.out.display()
        );
        return ExitCode::FAILURE;
    }
    let kernels_hash = compiler
        .source_root()
        .kernels_hash()
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let manifest = PackManifest {
        kernels_hash,
        nvrtc: compiler
            .nvrtc()
            .map_or("none".into(), |n| n.version_string()),
        extra_flags: compiler.extra_flags().to_vec(),
        line_info: compiler.line_info(),
        built_by: format!("ssmk {}", env!("CARGO_PKG_VERSION")),
        coverage: coverage_lines(&args.coverage),
        targets: targets(&archs),
        ..PackManifest::default()
    };
    match writer.finish(manifest) {
        Ok(m) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", report(&m, seconds, jobs, &args.out));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What one compile produced: the module, its flattened source and seconds.
struct Built {
    module: ssm_gpu::nvrtc::CompiledModule,
    text: String,
    functions: Vec<ssm_gpu::PtxasFunction>,
    seconds: f64,
}

/// Compile every planned module on `jobs` threads, with a progress line every
/// 5% (and at each failure); results in `planned`'s order.
fn build_all(
    compiler: &Compiler,
    planned: &[Planned],
    jobs: usize,
    started: Instant,
) -> Vec<Result<Built, GpuError>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Built, GpuError>>>> =
        Mutex::new((0..planned.len()).map(|_| None).collect());
    let step = (planned.len() / 20).max(1);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(planned.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = planned.get(i) else { break };
                let t = Instant::now();
                let result = compiler
                    .compile_fresh(&p.variant.source, &p.variant.defines, p.arch)
                    .map(|(out, text)| Built {
                        module: out.module,
                        text,
                        functions: out.functions,
                        seconds: if out.origin == ModuleOrigin::Compiled {
                            t.elapsed().as_secs_f64()
                        } else {
                            0.0
                        },
                    });
                let failed = result.is_err();
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if failed || n % step == 0 || n == planned.len() {
                    eprintln!(
                        "  [{n:>5}/{}] {:>6.1} s  {} {}{}",
                        planned.len(),
                        started.elapsed().as_secs_f64(),
                        p.arch,
                        p.labels[0],
                        if failed { "  FAILED" } else { "" }
                    );
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(GpuError::InvalidArgument("not compiled".into()))))
        .collect()
}

/// Check the entry point exists in the module, then write it.
fn add(
    writer: &mut PackWriter,
    compiler: &Compiler,
    p: &Planned,
    built: Built,
) -> Result<(), GpuError> {
    let entry = p.variant.entry;
    let has_entry = if built.module.is_ptx() {
        String::from_utf8_lossy(&built.module.cubin).contains(&format!(".entry {entry}("))
    } else {
        find_entry(&built.functions, entry).is_some()
    };
    if !has_entry {
        return Err(GpuError::MissingEntry {
            file: p.variant.source.path.to_string(),
            entry: entry.to_string(),
        });
    }
    let key = pack_key(
        p.arch,
        &p.variant.defines,
        compiler.extra_flags(),
        &built.text,
    );
    for label in &p.labels {
        writer.add(
            &key,
            p.arch,
            p.variant.source.path,
            &built.text,
            &p.variant.defines,
            label,
            &built.module,
            built.seconds,
        )?;
    }
    Ok(())
}

fn report(m: &PackManifest, seconds: f64, jobs: usize, dir: &std::path::Path) -> String {
    let mut per: BTreeMap<Arch, (usize, u64, f64)> = BTreeMap::new();
    for e in &m.entries {
        let t = per.entry(e.arch).or_default();
        t.0 += 1;
        t.1 += e.bytes;
        t.2 += e.compile_seconds;
    }
    let mut out = format!(
        "kernel pack {}: {} modules, kernels {}, NVRTC {}\n",
        dir.display(),
        m.entries.len(),
        m.kernels_hash,
        m.nvrtc
    );
    let (mut modules, mut bytes) = (0, 0);
    for (arch, (n, b, s)) in &per {
        modules += n;
        bytes += b;
        out.push_str(&format!(
            "  {:<10} {n:>5} modules {:>8.1} MiB  {s:>7.1} s of NVRTC\n",
            arch.name(),
            *b as f64 / (1024.0 * 1024.0)
        ));
    }
    out.push_str(&format!(
        "  all        {modules:>5} modules {:>8.1} MiB  built in {seconds:.1} s on {jobs} threads\n\
         use it with SSM_KERNEL_PACK={}",
        bytes as f64 / (1024.0 * 1024.0),
        dir.display()
    ));
    out
}

fn check(args: &CheckArgs) -> ExitCode {
    let shapes = match parse_shapes(&args.coverage) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = match args
        .pack
        .clone()
        .or_else(|| std::env::var_os(ssm_gpu::pack::PACK_ENV).map(PathBuf::from))
    {
        Some(d) => d,
        None => {
            eprintln!(
                "error: no pack: pass --pack DIR or set {}",
                ssm_gpu::pack::PACK_ENV
            );
            return ExitCode::from(2);
        }
    };
    let pack = match KernelPack::open(&dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("{}", pack.describe());
    let root = ssm_gpu::SourceRoot::from_env();
    if let Ok(here) = root.kernels_hash() {
        if here != pack.manifest().kernels_hash {
            eprintln!(
                "note: the pack was built from kernels {}, these sources are {here} ({}): \
                 modules of changed files will miss; rebuild the pack",
                pack.manifest().kernels_hash,
                root.describe()
            );
        }
    }
    let compiler = Compiler::pack_only(
        root,
        pack,
        ssm_gpu::nvrtc::extra_flags_from_env(),
        "ssmk kernels check (pack-only)".into(),
    );
    let planned = plan(args.coverage.coverage, &shapes, &args.coverage.arch);
    let mut misses = Vec::new();
    for p in &planned {
        if let Err(e) = compiler.compile(&p.variant.source, &p.variant.defines, p.arch) {
            misses.push(format!("{}: {e}", p.labels.join(", ")));
        }
    }
    for m in &misses {
        eprintln!("MISS {m}");
    }
    println!(
        "{} of {} planned modules found in the pack ({} missing)",
        planned.len() - misses.len(),
        planned.len(),
        misses.len()
    );
    if misses.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_specs_parse_with_defaults_and_name_their_errors() {
        let p = parse_shape_spec("ssd:b=1,L=4096,H=24,P=64,N=128,G=1").unwrap();
        let Problem::Ssd(s) = p else { panic!("{p:?}") };
        assert_eq!(
            (s.heads, s.head_dim, s.d_state, s.chunk_size),
            (24, 64, 128, 64)
        );
        assert_eq!(s.dtype, DType::Bf16);
        assert!(s.z && s.final_states, "options default to all");
        let p = parse_shape_spec("m2-step:b=8,H=80,P=64,N=128:z,D:f16").unwrap();
        assert!(matches!(p, Problem::Mamba2Step(s) if s.dtype == DType::F16 && s.z));
        let p = parse_shape_spec("ssd:b=1,L=64,H=2,P=64,N=64:none:f32:128").unwrap();
        assert!(matches!(p, Problem::Ssd(s) if s.chunk_size == 128 && !s.z));
        for (bad, says) in [
            ("conv:b=1", "operation `conv`"),
            ("ssd", "no SHAPE"),
            ("ssd:b=1,L=64,H=2,P=64,N=64:all:f64", "dtype `f64`"),
            ("ssd:b=1,L=64,H=2,P=64,N=64:all:bf16:x", "chunk `x`"),
            (
                "ssd:b=1,L=64,H=2,P=64,N=64:all:bf16:64:9",
                "at most 5 fields",
            ),
            ("ssd:b=1,H=2", "--shape ssd:b=1,H=2"),
        ] {
            let err = parse_shape_spec(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_re_planned_lists_hold_every_crate_variant() {
        // On the H100's limits (those the crates' lists are planned for) the
        // re-planned reference must hold every listed module; otherwise the
        // other targets lack what the crates added: extend `reference_ssd` /
        // `reference_scan` with the new shapes.
        let mut planned = Vec::new();
        reference(&DeviceLimits::H100_SXM, &mut |_, v| planned.push(v));
        let has = |v: &KernelVariant| {
            let d = sorted_defines(&v.defines);
            planned
                .iter()
                .any(|p| p.source.path == v.source.path && sorted_defines(&p.defines) == d)
        };
        let mut listed = ssm_gpu::selftest::selftest_variants();
        listed.extend(ssm_gpu::probes::ceiling_variants());
        listed.extend(mamba1_scan::kernel_variants());
        listed.extend(mamba2_ssd::kernel_variants());
        let missing: Vec<&str> = listed
            .iter()
            .filter(|v| !has(v))
            .map(|v| v.label.as_str())
            .collect();
        assert!(missing.is_empty(), "not planned: {missing:?}");
        assert!(same_on_chip(&DeviceLimits::B200, &DeviceLimits::H100_SXM));
        assert!(!same_on_chip(&DeviceLimits::A100, &DeviceLimits::H100_SXM));
    }

    #[test]
    fn targets_plan_with_their_own_limits() {
        let planned = plan(Coverage::Reference, &[], &[Arch::Sm86, Arch::Sm90]);
        let max_smem = |arch: Arch| {
            let mut v: Vec<String> = planned
                .iter()
                .filter(|p| p.arch == arch)
                .flat_map(|p| p.variant.defines.iter())
                .filter(|(k, _)| *k == "SSD_MAX_SMEM")
                .map(|(_, v)| v.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(max_smem(Arch::Sm86), [(99 * 1024).to_string()]);
        assert_eq!(max_smem(Arch::Sm90), [(227 * 1024).to_string()]);
        // Modules are unique per (target, source, defines).
        let mut keys: Vec<_> = planned
            .iter()
            .map(|p| {
                (
                    p.arch,
                    p.variant.source.path,
                    sorted_defines(&p.variant.defines),
                )
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn models_coverage_holds_the_model_shapes_and_user_shapes_add_theirs() {
        let models = plan(Coverage::Models, &[], &[Arch::Sm80]);
        let reference = plan(Coverage::Reference, &[], &[Arch::Sm80]);
        assert!(models.len() > reference.len());
        let shape = parse_shape_spec("ssd:b=1,L=4096,H=24,P=96,N=48,G=3:z,D:bf16").unwrap();
        let with = plan(Coverage::Reference, &[shape], &[Arch::Sm80]);
        assert!(with.len() > reference.len());
        assert!(with.iter().any(|p| p
            .variant
            .defines
            .iter()
            .any(|(k, v)| *k == "SSD_P" && v == "96")));
    }
}
