//! `ssmk verify ssd|scan|step --shape ...`: the verifier on a shape the user types.
//!
//! The shape, options and element type are parsed by
//! `ssm_telemetry::shape_arg::parse_problem` (the same syntax `ssmk bench` takes),
//! turned into the `ssm_verify::gen` case of that operation, drawn from `--seed`
//! and checked through `ssm_verify::check` against the f64 oracle, every
//! implementation named by `--impl` (CUDA with the options of `--chunk` and
//! `--kernel-opt`). `--fuzz-case SEED` instead replays a `ssmk fuzz` case on its
//! exact inputs (the command a fuzz finding prints).

use clap::{Args, ValueEnum};
use half::{bf16, f16};
use mamba1_scan::cuda::ScanTuning;
use mamba2_ssd::cuda::{CudaOptions, KernelChoice, Segmentation};
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::DType;
use ssm_gpu::Gpu;
use ssm_telemetry::problem::{Problem, SkipKind};
use ssm_telemetry::shape_arg::{parse_problem, ShapeOp};
use ssm_verify::check::{check_scan, check_ssd, check_step, CheckRow};
use ssm_verify::fuzz::draw::Bytes;
use ssm_verify::fuzz::problems::{ScanProblem, SsdProblem, StepProblem};
use ssm_verify::fuzz::{random_case, Ctx, Target};
use ssm_verify::gen::{DKind, Mamba1Case, Mamba1Data, SsdCase, SsdData, StepCase, StepData};
use ssm_verify::impls::{Family, ScanImpl, SsdImpl, StepImpl};

/// Which decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StepFamily {
    #[value(alias = "mamba1")]
    M1,
    #[value(alias = "mamba2")]
    M2,
}

/// The arguments every custom-shape verification takes.
#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// The shape, `key=value` comma-separated: ssd `b,L,H,P,N[,G]`, scan
    /// `b,D,N,L[,G]` (G=const for constant B/C), step m1 `b,D,N[,G]`, m2
    /// `b,H,P,N[,G]`.
    #[arg(long)]
    pub shape: String,
    /// `all`, `none`, or a comma list: ssd z,D,Dp,bias,softplus,s0,final; scan
    /// z,D,bias,softplus,h0,final; step z,D,(Dp),bias,softplus.
    #[arg(long, default_value = "all")]
    pub options: String,
    /// Element type of the inputs: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Implementations, comma-separated (the f64 oracle always runs): ssd
    /// cpu,cuda,quadratic; scan cpu,cuda; step cpu,cuda. CUDA ones need a GPU.
    #[arg(long = "impl", value_delimiter = ',', default_value = "cpu,cuda")]
    pub impls: Vec<String>,
    /// Kernel options, `key=value` comma-separated (ssd: kernel, stages, segments,
    /// shared_cb, warps, y_cols; scan: lanes, channels_per_lane, tile, threads,
    /// exp_poly, elem_exp_poly, slice_major, min_blocks).
    #[arg(long = "kernel-opt", value_delimiter = ',')]
    pub kernel_opts: Vec<String>,
    /// Replay this `ssmk fuzz` case seed on its exact inputs (the shape, options
    /// and dtype given must be the case's: they are checked).
    #[arg(long)]
    pub fuzz_case: Option<u64>,
    /// Seed of the random inputs (also accepted before the operation's name).
    #[arg(long)]
    pub seed: Option<u64>,
    /// GPU use: auto, off, require (also accepted before the operation's name).
    #[arg(long, value_enum)]
    pub gpu: Option<crate::GpuMode>,
}

#[derive(Args, Debug, Clone)]
pub struct SsdArgs {
    #[command(flatten)]
    pub common: ShapeArgs,
    /// Chunk length of the chunked CPU port and the CUDA kernel: 64, 128 or 256.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Verify the backward pass instead: every gradient of the chunked CPU
    /// backward against the f64 adjoint (no CUDA backward in this build).
    #[arg(long)]
    pub backward: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ScanArgs {
    #[command(flatten)]
    pub common: ShapeArgs,
    /// Time block of the blocked CPU port.
    #[arg(long, default_value_t = 256)]
    pub block_len: usize,
    /// Verify the backward pass instead: every gradient of the blocked CPU
    /// backward against the f64 adjoint (no CUDA backward in this build).
    #[arg(long)]
    pub backward: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StepArgs {
    #[command(flatten)]
    pub common: ShapeArgs,
    /// m1 (Mamba-1) or m2 (Mamba-2).
    #[arg(long, value_enum)]
    pub family: StepFamily,
    /// Extra state-cache rows: the batch rows then index a shuffled cache.
    #[arg(long)]
    pub indexed: Option<usize>,
}

/// One custom-shape verification.
#[derive(Clone, Debug)]
pub enum Custom {
    Ssd(SsdArgs),
    Scan(ScanArgs),
    Step(StepArgs),
}

impl Custom {
    pub fn common(&self) -> &ShapeArgs {
        match self {
            Custom::Ssd(a) => &a.common,
            Custom::Scan(a) => &a.common,
            Custom::Step(a) => &a.common,
        }
    }

    fn op(&self) -> ShapeOp {
        match self {
            Custom::Ssd(_) => ShapeOp::Ssd,
            Custom::Scan(_) => ShapeOp::Scan,
            Custom::Step(a) if a.family == StepFamily::M1 => ShapeOp::Mamba1Step,
            Custom::Step(_) => ShapeOp::Mamba2Step,
        }
    }

    /// The problem the arguments describe.
    pub fn problem(&self) -> Result<Problem, String> {
        let c = self.common();
        let chunk = match self {
            Custom::Ssd(a) => a.chunk,
            _ => 64,
        };
        parse_problem(self.op(), &c.shape, &c.options, c.dtype, chunk)
    }

    /// Whether `--backward` was given (the decode steps have no backward).
    pub fn backward(&self) -> bool {
        match self {
            Custom::Ssd(a) => a.backward,
            Custom::Scan(a) => a.backward,
            Custom::Step(_) => false,
        }
    }

    /// The backward of this operation (the steps have none: reported as the scan's,
    /// never reached since `backward()` is false for them).
    fn backward_op(&self) -> crate::backward::Op {
        match self {
            Custom::Ssd(_) => crate::backward::Op::Ssd,
            _ => crate::backward::Op::Scan,
        }
    }

    /// Parse everything the command line says (shape, options, implementations,
    /// kernel options) without running anything: usage errors come first.
    pub fn validate(&self) -> Result<(), String> {
        let problem = self.problem()?;
        let c = self.common();
        if self.backward() {
            if c.fuzz_case.is_some() {
                return Err(
                    "--fuzz-case replays a forward case; the backward cases replay \
                            with `ssmk fuzz --replay SEED`"
                        .into(),
                );
            }
            crate::backward::check_impls(
                self.backward_op(),
                &impl_names("backward", &c.impls, &["cpu", "cuda", "quadratic"])?,
            )?;
        }
        match self {
            Custom::Ssd(a) => {
                ssd_cuda_options(a.chunk, &c.kernel_opts)?;
                impl_names("ssd", &c.impls, &["cpu", "cuda", "quadratic"])?;
            }
            Custom::Scan(_) => {
                scan_tuning(&c.kernel_opts)?;
                impl_names("scan", &c.impls, &["cpu", "cuda"])?;
            }
            Custom::Step(a) => {
                kernel_opts("step", &c.kernel_opts, &[])?;
                impl_names("step", &c.impls, &["cpu", "cuda"])?;
                step_case(&problem, a.indexed)?;
            }
        }
        Ok(())
    }

    /// Whether any requested implementation needs a GPU.
    pub fn wants_gpu(&self) -> bool {
        // The SSD's backward runs on the CPU only: no GPU to open.
        !(self.backward() && self.backward_op() == crate::backward::Op::Ssd)
            && self.common().impls.iter().any(|i| i.trim() == "cuda")
    }
}

/// `key=value` pairs of `--kernel-opt`, each key known, none repeated.
fn kernel_opts<'a>(
    op: &str,
    raw: &'a [String],
    valid: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for item in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!(
                "--kernel-opt: `{item}` is not key=value (valid keys for {op}: {})",
                valid.join(", ")
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if !valid.contains(&k) {
            return Err(format!(
                "--kernel-opt: unknown key `{k}` for {op} (valid: {})",
                if valid.is_empty() {
                    "none: this operation has no kernel options".to_string()
                } else {
                    valid.join(", ")
                }
            ));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("--kernel-opt: {k} given twice"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn number(key: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("--kernel-opt: {key}={v} is not a whole number"))
}

/// `auto` for `None`, else a number.
fn auto_number(key: &str, v: &str) -> Result<Option<usize>, String> {
    if v == "auto" {
        Ok(None)
    } else {
        number(key, v).map(Some)
    }
}

fn flag(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(format!(
            "--kernel-opt: {key}={v} (expected on/off, true/false or 1/0)"
        )),
    }
}

pub const SSD_KERNEL_OPTS: [&str; 6] = [
    "kernel",
    "stages",
    "segments",
    "shared_cb",
    "warps",
    "y_cols",
];
pub const SCAN_KERNEL_OPTS: [&str; 8] = [
    "lanes",
    "channels_per_lane",
    "tile",
    "threads",
    "exp_poly",
    "elem_exp_poly",
    "slice_major",
    "min_blocks",
];

/// `--chunk` and `--kernel-opt` as the SSD's `CudaOptions`.
pub fn ssd_cuda_options(chunk: usize, raw: &[String]) -> Result<CudaOptions, String> {
    let mut o = CudaOptions {
        chunk_size: chunk,
        ..CudaOptions::default()
    };
    for (k, v) in kernel_opts("ssd", raw, &SSD_KERNEL_OPTS)? {
        match k {
            "kernel" => {
                o.kernel = match v {
                    "auto" => KernelChoice::Auto,
                    "fused" => KernelChoice::Fused,
                    "simt" => KernelChoice::Simt,
                    _ => return Err(format!("--kernel-opt: kernel={v} (auto, fused or simt)")),
                }
            }
            "stages" => o.stages = number(k, v)?,
            "segments" => {
                o.segmentation = match auto_number(k, v)? {
                    None => Segmentation::Auto,
                    Some(n) => Segmentation::AtMost(n),
                }
            }
            "shared_cb" => o.shared_cb = if v == "auto" { None } else { Some(flag(k, v)?) },
            "warps" => o.warps = auto_number(k, v)?,
            "y_cols" => o.y_cols = auto_number(k, v)?,
            _ => unreachable!("kernel_opts admits only SSD_KERNEL_OPTS"),
        }
    }
    Ok(o)
}

/// `--kernel-opt` as the scan's `ScanTuning`.
pub fn scan_tuning(raw: &[String]) -> Result<ScanTuning, String> {
    let mut t = ScanTuning::default();
    for (k, v) in kernel_opts("scan", raw, &SCAN_KERNEL_OPTS)? {
        match k {
            "lanes" => t.lanes_per_channel = auto_number(k, v)?,
            "channels_per_lane" => t.channels_per_lane = auto_number(k, v)?,
            "tile" => t.tile = auto_number(k, v)?,
            "threads" => t.threads = auto_number(k, v)?,
            "exp_poly" => t.exp_poly = auto_number(k, v)?,
            "elem_exp_poly" => t.elem_exp_poly = Some(flag(k, v)?),
            "slice_major" => t.slice_major = Some(flag(k, v)?),
            "min_blocks" => t.min_blocks = auto_number(k, v)?,
            _ => unreachable!("kernel_opts admits only SCAN_KERNEL_OPTS"),
        }
    }
    Ok(t)
}

/// Implementation names, checked against the op's list.
fn impl_names<'a>(op: &str, raw: &'a [String], valid: &[&str]) -> Result<Vec<&'a str>, String> {
    let names: Vec<&str> = raw
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = names.iter().find(|n| !valid.contains(n)) {
        return Err(format!(
            "--impl: unknown implementation `{bad}` for {op} (valid: {}; the f64 oracle always runs)",
            valid.join(", ")
        ));
    }
    if names.is_empty() {
        return Err(format!("--impl: none given (valid: {})", valid.join(", ")));
    }
    Ok(names)
}

/// The verification case of a parsed SSD problem.
pub fn ssd_case(p: &Problem) -> Option<SsdCase> {
    let Problem::Ssd(s) = *p else { return None };
    let mut case = SsdCase::plain(s.batch, s.seqlen, s.heads, s.head_dim, s.d_state, s.groups);
    case.z = s.z;
    case.d = match s.d {
        SkipKind::None => DKind::None,
        SkipKind::PerHead => DKind::PerHead,
        SkipKind::PerHeadDim => DKind::PerHeadDim,
    };
    case.dt_bias = s.dt_bias;
    case.softplus = s.softplus;
    case.initial_states = s.initial_states;
    case.final_states = s.final_states;
    Some(case)
}

pub fn scan_case(p: &Problem) -> Option<Mamba1Case> {
    let Problem::Mamba1Scan(s) = *p else {
        return None;
    };
    let mut case = Mamba1Case::plain(s.batch, s.d_inner, s.d_state, s.seqlen);
    case.dims = Mamba1Dims::new(s.batch, s.d_inner, s.d_state, s.seqlen);
    case.b_groups = s.groups;
    case.c_groups = s.groups;
    case.z = s.z;
    case.d = s.d;
    case.delta_bias = s.delta_bias;
    case.softplus = s.softplus;
    case.initial_states = s.initial_states;
    case.final_states = s.final_states;
    Some(case)
}

/// The step case: the verifier's steps take their options together (all or none).
pub fn step_case(p: &Problem, indexed: Option<usize>) -> Result<StepCase, String> {
    let (batch, channels, head_dim, d_state, groups, flags, per_hp) = match *p {
        Problem::Mamba1Step(s) => (
            s.batch,
            s.d_inner,
            1,
            s.d_state,
            s.groups,
            [s.z, s.d, s.dt_bias, s.softplus],
            false,
        ),
        Problem::Mamba2Step(s) => (
            s.batch,
            s.heads,
            s.head_dim,
            s.d_state,
            s.groups,
            [s.z, s.d != SkipKind::None, s.dt_bias, s.softplus],
            s.d == SkipKind::PerHeadDim,
        ),
        _ => return Err("not a decode step".into()),
    };
    let all = flags.iter().all(|&f| f);
    if !all && flags.iter().any(|&f| f) {
        return Err(
            "--options: the decode-step verifier takes z, D, bias and softplus together \
             (all, none, or all four with Dp for m2)"
                .into(),
        );
    }
    Ok(StepCase {
        batch,
        channels,
        head_dim,
        d_state,
        groups,
        indexed,
        all_options: all,
        d_per_head_dim: per_hp,
    })
}

macro_rules! by_dtype {
    ($dtype:expr, $f:ident, $($arg:expr),*) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::Bf16 => $f::<bf16>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
        }
    };
}

/// Check the custom problem: the rows, or a usage error. CUDA implementations are
/// dropped (loudly) without a GPU unless `require_gpu`.
pub fn run(cmd: &Custom, gpu: Option<&Gpu>, seed: u64) -> Result<Vec<CheckRow>, String> {
    let problem = cmd.problem()?;
    let c = cmd.common();
    if c.fuzz_case.is_some() {
        return Err("--fuzz-case is handled by replay_fuzz_case".into());
    }
    let keep = |name: &str| {
        if name == "cuda" && gpu.is_none() {
            eprintln!("NO GPU: --impl cuda is NOT verified in this run");
            false
        } else {
            true
        }
    };
    let dtype = c.dtype;
    let err = |e: ssm_core::SsmError| format!("the oracle rejected the problem: {e}");
    match cmd {
        Custom::Ssd(a) => {
            let opts = ssd_cuda_options(a.chunk, &c.kernel_opts)?;
            let mut impls = Vec::new();
            for name in impl_names("ssd", &c.impls, &["cpu", "cuda", "quadratic"])? {
                if keep(name) {
                    impls.push(match name {
                        "cpu" => SsdImpl::CpuChunked { chunk: a.chunk },
                        "cuda" => SsdImpl::CudaWith(opts),
                        _ => SsdImpl::Quadratic,
                    });
                }
            }
            nothing_left(&impls)?;
            let case = ssd_case(&problem).ok_or("not an SSD problem")?;
            let data = SsdData::generate(&case, seed);
            by_dtype!(dtype, check_ssd, &impls, &data, gpu).map_err(err)
        }
        Custom::Scan(a) => {
            let tuning = scan_tuning(&c.kernel_opts)?;
            let mut impls = Vec::new();
            for name in impl_names("scan", &c.impls, &["cpu", "cuda"])? {
                if keep(name) {
                    impls.push(match name {
                        "cpu" => ScanImpl::CpuBlocked {
                            block_len: a.block_len,
                        },
                        _ => ScanImpl::CudaTuned(tuning),
                    });
                }
            }
            nothing_left(&impls)?;
            let case = scan_case(&problem).ok_or("not a scan problem")?;
            let data = Mamba1Data::generate(&case, seed);
            by_dtype!(dtype, check_scan, &impls, &data, gpu).map_err(err)
        }
        Custom::Step(a) => {
            kernel_opts("step", &c.kernel_opts, &[])?;
            let mut impls = Vec::new();
            for name in impl_names("step", &c.impls, &["cpu", "cuda"])? {
                if keep(name) {
                    impls.push(if name == "cpu" {
                        StepImpl::Cpu
                    } else {
                        StepImpl::Cuda
                    });
                }
            }
            nothing_left(&impls)?;
            let case = step_case(&problem, a.indexed)?;
            let family = match a.family {
                StepFamily::M1 => Family::Mamba1,
                StepFamily::M2 => Family::Mamba2,
            };
            let data = StepData::generate(&case, family == Family::Mamba2, seed);
            by_dtype!(dtype, check_step, family, &impls, &data, gpu).map_err(err)
        }
    }
}

/// `--backward`: one row per gradient of each backward. For the SSD a
/// `--impl cuda` is named on stderr as not verified (no CUDA backward in this
/// build); for the scan it runs on `gpu` (dropped loudly without one).
pub fn run_backward(
    cmd: &Custom,
    gpu: Option<&Gpu>,
    seed: u64,
) -> Result<Vec<crate::backward::GradRow>, String> {
    let problem = cmd.problem()?;
    let c = cmd.common();
    let names = impl_names("backward", &c.impls, &["cpu", "cuda", "quadratic"])?;
    crate::backward::check_impls(cmd.backward_op(), &names)?;
    let cuda = names.contains(&"cuda");
    match cmd {
        Custom::Ssd(a) => {
            if cuda {
                eprintln!(
                    "NOT VERIFIED: --impl cuda: {}",
                    crate::backward::NO_CUDA_BACKWARD
                );
            }
            let case = ssd_case(&problem).ok_or("not an SSD problem")?;
            crate::backward::ssd(&case, c.dtype, a.chunk, seed)
        }
        Custom::Scan(a) => {
            if cuda && gpu.is_none() {
                eprintln!("NO GPU: --impl cuda is NOT verified in this run");
            }
            let cpu = names.contains(&"cpu");
            let gpu = if cuda { gpu } else { None };
            if !cpu && gpu.is_none() {
                return Err(
                    "no implementation left to verify (--impl cuda needs a GPU; add cpu)".into(),
                );
            }
            let case = scan_case(&problem).ok_or("not a scan problem")?;
            crate::backward::scan(&case, c.dtype, a.block_len, seed, cpu, gpu)
        }
        Custom::Step(_) => Err("the decode steps have no backward".into()),
    }
}

/// Without a GPU a `--impl cuda` alone leaves nothing to check: say so.
fn nothing_left<I>(impls: &[I]) -> Result<(), String> {
    if impls.is_empty() {
        return Err("no implementation left to verify (--impl cuda needs a GPU; add cpu)".into());
    }
    Ok(())
}

/// The `ssmk verify` command that replays fuzz case `case` (drawn for `target`
/// from `bytes`) on its exact inputs, with its shape, options and dtype spelled
/// out; `None` for the targets that are not one operation's differential check.
pub fn fuzz_replay_command(target: Target, case: u64, bytes: &[u8]) -> Option<String> {
    let (op, shape, options, dtype, extra) = match target {
        Target::Ssd => {
            let p = SsdProblem::decode(&mut Bytes::new(bytes));
            let c = &p.data.case;
            let d = c.dims;
            let mut on = flags(&[(c.z, "z"), (c.dt_bias, "bias"), (c.softplus, "softplus")]);
            match c.d {
                DKind::PerHead => on.push("D"),
                DKind::PerHeadDim => on.push("Dp"),
                DKind::None => {}
            }
            on.extend(flags(&[
                (c.initial_states, "s0"),
                (c.final_states, "final"),
            ]));
            (
                "ssd",
                format!(
                    "b={},L={},H={},P={},N={},G={}",
                    d.batch, d.seqlen, d.heads, d.head_dim, d.d_state, d.groups
                ),
                on,
                p.dtype,
                format!(" --chunk {}", p.chunk),
            )
        }
        Target::Scan => {
            let p = ScanProblem::decode(&mut Bytes::new(bytes));
            let c = &p.data.case;
            let d = c.dims;
            let on = flags(&[
                (c.z, "z"),
                (c.d, "D"),
                (c.delta_bias, "bias"),
                (c.softplus, "softplus"),
                (c.initial_states, "h0"),
                (c.final_states, "final"),
            ]);
            let g = c.b_groups.map_or("const".to_string(), |g| g.to_string());
            (
                "scan",
                format!(
                    "b={},D={},N={},L={},G={g}",
                    d.batch, d.d_inner, d.d_state, d.seqlen
                ),
                on,
                p.dtype,
                format!(" --block-len {}", p.block_len),
            )
        }
        Target::Step => {
            let p = StepProblem::decode(&mut Bytes::new(bytes));
            let mut on = flags(&[
                (p.z.is_some(), "z"),
                (p.dt_bias.is_some(), "bias"),
                (p.softplus, "softplus"),
            ]);
            match (&p.d, p.d_per_head_dim) {
                (Some(_), true) => on.push("Dp"),
                (Some(_), false) => on.push("D"),
                (None, _) => {}
            }
            let (family, shape) = match p.family {
                Family::Mamba1 => (
                    "m1",
                    format!(
                        "b={},D={},N={},G={}",
                        p.batch, p.channels, p.d_state, p.groups
                    ),
                ),
                Family::Mamba2 => (
                    "m2",
                    format!(
                        "b={},H={},P={},N={},G={}",
                        p.batch, p.channels, p.head_dim, p.d_state, p.groups
                    ),
                ),
            };
            ("step", shape, on, p.dtype, format!(" --family {family}"))
        }
        // The backward targets have no `ssmk verify` command yet: replay with `ssmk fuzz --replay`.
        Target::Api | Target::Determinism | Target::SsdBackward | Target::ScanBackward => {
            return None
        }
    };
    let options = if options.is_empty() {
        "none".to_string()
    } else {
        options.join(",")
    };
    Some(format!(
        "ssmk verify {op} --shape {shape} --options {options} --dtype {dtype}{extra} --fuzz-case {case}"
    ))
}

/// The names of the flags that are on, in order.
fn flags(flags: &[(bool, &'static str)]) -> Vec<&'static str> {
    flags.iter().filter(|(f, _)| *f).map(|(_, n)| *n).collect()
}

/// Replay fuzz case `case` through its target (the fuzzers' judge, exact inputs),
/// after checking that it is the problem the command line names. `Ok(true)`: it
/// passes now.
pub fn replay_fuzz_case(cmd: &Custom, case: u64, gpu: Option<&Gpu>) -> Result<bool, String> {
    let (target, bytes) = random_case(case, &Target::ALL);
    let expected = match cmd {
        Custom::Ssd(_) => Target::Ssd,
        Custom::Scan(_) => Target::Scan,
        Custom::Step(_) => Target::Step,
    };
    if target != expected {
        return Err(format!(
            "fuzz case {case} is a {target} case, not {}; replay it with `ssmk fuzz --replay {case}`",
            expected.name()
        ));
    }
    let want = fuzz_replay_command(target, case, &bytes).unwrap_or_default();
    let given = cmd.problem()?;
    let stated = {
        // The command the case prints, parsed the same way, must name the same problem.
        let parts: Vec<&str> = want.split_whitespace().collect();
        let arg = |flag: &str| {
            parts
                .iter()
                .position(|p| *p == flag)
                .and_then(|i| parts.get(i + 1))
                .copied()
                .unwrap_or("")
        };
        let dtype: DType = arg("--dtype").parse()?;
        let chunk = arg("--chunk").parse().unwrap_or(64);
        parse_problem(cmd.op(), arg("--shape"), arg("--options"), dtype, chunk)?
    };
    if stated != given {
        return Err(format!(
            "fuzz case {case} is not the problem on the command line; its command is:\n  {want}"
        ));
    }
    println!(
        "replaying fuzz case {case} ({target}): {}",
        target.describe(&bytes)
    );
    let ctx = Ctx { gpu };
    match target.run(&bytes, &ctx) {
        Ok(_) => {
            println!("PASS: fuzz case {case} passes every check");
            Ok(true)
        }
        Err(f) => {
            println!("FAIL: {f}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_options_map_onto_cuda_options() {
        let raw = [
            "stages=2".to_string(),
            "warps=8".into(),
            "kernel=fused".into(),
            "shared_cb=off".into(),
        ];
        let o = ssd_cuda_options(128, &raw).unwrap();
        assert_eq!(
            (o.chunk_size, o.stages, o.warps, o.kernel, o.shared_cb),
            (128, 2, Some(8), KernelChoice::Fused, Some(false))
        );
        let e = ssd_cuda_options(64, &["stage=2".to_string()]).unwrap_err();
        assert!(
            e.contains("unknown key `stage`") && e.contains("stages, segments"),
            "{e}"
        );
        let e = ssd_cuda_options(64, &["kernel=wgmma".to_string()]).unwrap_err();
        assert!(e.contains("auto, fused or simt"), "{e}");
        let t = scan_tuning(&["lanes=8".to_string(), "slice_major=false".into()]).unwrap();
        assert_eq!((t.lanes_per_channel, t.slice_major), (Some(8), Some(false)));
        let e = scan_tuning(&["warps=8".to_string()]).unwrap_err();
        assert!(
            e.contains("unknown key `warps`") && e.contains("lanes, channels_per_lane"),
            "{e}"
        );
        let e = kernel_opts("step", &["rows=4".to_string()], &[]).unwrap_err();
        assert!(e.contains("no kernel options"), "{e}");
    }

    #[test]
    fn unknown_implementations_are_named() {
        let e = impl_names("ssd", &["cpu".into(), "triton".into()], &["cpu", "cuda"]).unwrap_err();
        assert!(e.contains("`triton`") && e.contains("cpu, cuda"), "{e}");
    }

    #[test]
    fn every_fuzz_case_prints_a_command_that_parses_back_to_it() {
        for case in 0..200u64 {
            let (target, bytes) = random_case(case, &Target::ALL);
            let Some(cmd) = fuzz_replay_command(target, case, &bytes) else {
                continue;
            };
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let arg = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
            let op = match words[2] {
                "ssd" => ShapeOp::Ssd,
                "scan" => ShapeOp::Scan,
                _ if arg("--family") == "m1" => ShapeOp::Mamba1Step,
                _ => ShapeOp::Mamba2Step,
            };
            let dtype: DType = arg("--dtype").parse().unwrap();
            let parsed = parse_problem(op, arg("--shape"), arg("--options"), dtype, 64);
            assert!(parsed.is_ok(), "case {case}: {cmd}: {parsed:?}");
            assert_eq!(arg("--fuzz-case"), case.to_string());
        }
    }
}
