//! Measure cases into a [`ResultSet`]: GPU cases with CUDA events (and NVML
//! sampling around the timed launches), CPU cases with a wall clock.
//!
//! GPU method: compile and upload; run the first call and check it against the
//! f64 oracle on the case's own inputs ([`crate::check`]: a case that fails is
//! reported as failed and not timed); 3 warm-up calls (and 3 more to estimate one
//! call's time), then `iters` back-to-back calls each between its own pair of
//! CUDA events (created beforehand), with `iters` chosen so the timed window
//! lasts at least `min_time` (NVML's energy counter needs about 100 ms to mean
//! anything) and at most `max_iters`. NVML samples during that window only.
//! Afterwards the output is checked again for non-finite elements (a kernel
//! that only goes wrong on later calls shows there).
//!
//! [`profile_once`] launches each GPU case exactly once, for ncu, and returns
//! the manifest that pairs ncu's launches with result ids.

use std::time::{Duration, Instant};

use ssm_gpu::{Gpu, GpuError};
use ssm_telemetry::ncu::ManifestEntry;
use ssm_telemetry::nvml::NvmlMonitor;
use ssm_telemetry::record::{
    BenchResult, DeviceInfo, KernelRecord, Measurement, ResultSet, RunInfo, TimingMethod,
    TimingStats, Verification,
};
use ssm_telemetry::sram::{SmLimits, SramUse};
use ssm_telemetry::Ceilings;

use crate::suite::{Backend, Case};
use crate::{cpu, events, gpu};

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Least time of the timed window per case.
    pub min_time: Duration,
    /// Most timed calls per GPU case.
    pub max_iters: usize,
    /// Most timed calls per CPU case.
    pub max_cpu_samples: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            min_time: Duration::from_millis(300),
            max_iters: 20_000,
            max_cpu_samples: 30,
        }
    }
}

/// What happened to one case.
#[derive(Debug)]
pub enum CaseOutcome {
    Measured(Box<BenchResult>),
    /// The implementation does not handle this shape (or no GPU): not an error.
    Skipped(String),
    Failed(String),
}

/// NVML sampling interval during a timed window.
const NVML_INTERVAL: Duration = Duration::from_millis(20);

fn to_gpu_error(e: ssm_core::SsmError) -> GpuError {
    GpuError::InvalidArgument(e.to_string())
}

fn kernel_records(work: &dyn gpu::GpuWork, limits: &SmLimits) -> Vec<KernelRecord> {
    work.kernels()
        .into_iter()
        .map(|k| KernelRecord {
            sram: Some(SramUse::new(
                &k.resources,
                k.ptxas.as_ref(),
                k.launch,
                limits,
            )),
            name: k.name,
            dram: None,
            ncu_duration_ms: None,
        })
        .collect()
}

/// The outcome of a case whose `prepare` failed: skipped where the
/// implementation does not support the shape (not an error), else failed.
fn not_prepared(e: ssm_core::SsmError) -> CaseOutcome {
    match e {
        ssm_core::SsmError::Unsupported {
            implementation,
            what,
        } => CaseOutcome::Skipped(format!("{implementation} does not support {what}")),
        e => CaseOutcome::Failed(format!("prepare: {e}")),
    }
}

/// The measurement of `case` timed as `timing`: what is the case's own
/// (implementation, workload, problem, pass), with no kernel records and no
/// NVML window (a GPU case fills those in).
fn measurement(
    case: &Case,
    timing: TimingStats,
    verification: Option<Verification>,
) -> Measurement {
    Measurement {
        implementation: case.implementation().into(),
        workload: case.workload.clone(),
        problem: case.problem,
        timing,
        kernels: Vec::new(),
        nvml: None,
        runs_in_nvml_window: 0,
        pass: case.pass,
        verification,
    }
}

/// Measure one GPU case: verify its first call against the oracle, then time it.
/// `limits` are the card's per-SM resources, for the occupancy in the SRAM record.
#[allow(clippy::too_many_arguments)]
pub fn measure_gpu(
    gpu: &Gpu,
    nvml: Option<&NvmlMonitor>,
    case: &Case,
    timing: &Timing,
    seed: u64,
    ceilings: &Ceilings,
    limits: &SmLimits,
) -> CaseOutcome {
    let mut work = match gpu::prepare(gpu, case, seed) {
        Ok(w) => w,
        Err(e) => return not_prepared(e),
    };
    // Check before timing: the first call against the f64 oracle on the case's
    // own inputs (sampled rows, crate::check); a wrong kernel is never timed.
    let verification = match work.verify(gpu) {
        Ok(v) if v.passed => v,
        Ok(v) => {
            return CaseOutcome::Failed(format!(
                "does not match the f64 oracle on {}: rel L2 {:.3e} (budget {:.3e}){}",
                v.sampled,
                v.rel_l2,
                v.budget,
                v.state_rel_l2
                    .zip(v.state_budget)
                    .map(|(e, b)| format!(", final states {e:.3e} (budget {b:.3e})"))
                    .unwrap_or_default()
            ))
        }
        Err(e) => return CaseOutcome::Failed(format!("verification: {e}")),
    };
    let estimate = match gpu.time(3, 3, || work.launch(gpu).map_err(to_gpu_error)) {
        Ok(t) => t.median_ms.max(1e-4),
        Err(e) => return CaseOutcome::Failed(format!("warm-up: {e}")),
    };
    let iters = ((timing.min_time.as_secs_f64() * 1e3 / estimate).ceil() as usize)
        .clamp(10, timing.max_iters.max(10));
    let events = match events::EventPairs::new(gpu, iters) {
        Ok(e) => e,
        Err(e) => return CaseOutcome::Failed(format!("creating events: {e}")),
    };
    // The NVML window holds the timed launches and nothing else (events are made
    // before it), so its energy over `iters` is the energy of one call.
    let mut timed = || events.time(gpu, work.as_mut());
    let (times, telemetry) = match nvml {
        Some(monitor) => {
            let (t, tel) = monitor.measure(NVML_INTERVAL, &mut timed);
            (t, tel.ok())
        }
        None => (timed(), None),
    };
    let samples = match times {
        Ok(t) => t,
        Err(e) => return CaseOutcome::Failed(format!("timing: {e}")),
    };
    match work.bad_outputs(gpu) {
        Ok(0) => {}
        Ok(n) => {
            return CaseOutcome::Failed(format!(
                "{n} non-finite output elements (unwritten or overflowed)"
            ))
        }
        Err(e) => return CaseOutcome::Failed(format!("reading the output: {e}")),
    }
    let Some(stats) = TimingStats::from_samples(TimingMethod::CudaEvents, &samples) else {
        return CaseOutcome::Failed("a CUDA-event time was not positive".into());
    };
    let measurement = Measurement {
        kernels: kernel_records(work.as_ref(), limits),
        nvml: telemetry,
        runs_in_nvml_window: iters as u64,
        ..measurement(case, stats, Some(verification))
    };
    CaseOutcome::Measured(Box::new(BenchResult::new(measurement, ceilings)))
}

/// Measure one CPU case (reference or port) with the wall clock.
pub fn measure_cpu(case: &Case, timing: &Timing, seed: u64, ceilings: &Ceilings) -> CaseOutcome {
    let cpu::CpuWork { check, mut run } = match cpu::prepare(case, seed) {
        Ok(w) => w,
        Err(e) => return not_prepared(e),
    };
    let verification = match check() {
        Ok(Some(v)) if !v.passed => {
            return CaseOutcome::Failed(format!(
                "does not match the f64 oracle on {}: rel L2 {:.3e} (budget {:.3e})",
                v.sampled, v.rel_l2, v.budget
            ))
        }
        Ok(v) => v,
        Err(e) => return CaseOutcome::Failed(format!("verification: {e}")),
    };
    if let Err(e) = run() {
        return CaseOutcome::Failed(format!("warm-up call: {e}"));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 3
        || (started.elapsed() < timing.min_time && samples.len() < timing.max_cpu_samples)
    {
        let t = Instant::now();
        if let Err(e) = run() {
            return CaseOutcome::Failed(format!("call: {e}"));
        }
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let Some(stats) = TimingStats::from_samples(TimingMethod::WallClock, &samples) else {
        return CaseOutcome::Failed("a wall-clock time was not positive".into());
    };
    let measurement = measurement(case, stats, verification);
    CaseOutcome::Measured(Box::new(BenchResult::new(measurement, ceilings)))
}

/// Launch each GPU case once (ncu profiles these launches) and return the
/// manifest of the kernels launched, with the cases that could not run.
pub fn profile_once(
    gpu: &Gpu,
    cases: &[Case],
    seed: u64,
) -> (Vec<ManifestEntry>, Vec<(String, String)>) {
    let mut manifest = Vec::new();
    let mut skipped = Vec::new();
    for case in cases.iter().filter(|c| c.backend == Backend::Cuda) {
        let outcome = gpu::prepare(gpu, case, seed).and_then(|mut work| {
            work.launch(gpu)?;
            gpu.synchronize()?;
            Ok(work.kernels())
        });
        match outcome {
            Ok(kernels) => manifest.push(ManifestEntry {
                result_id: case.id(),
                kernels: kernels.into_iter().map(|k| k.entry).collect(),
            }),
            Err(e) => skipped.push((case.id(), e.to_string())),
        }
    }
    (manifest, skipped)
}

/// The commit the binaries were built from: `SSM_COMMIT` (the device machine has
/// no repository), else `git rev-parse HEAD`.
pub fn current_commit() -> (Option<String>, bool) {
    if let Ok(c) = std::env::var("SSM_COMMIT") {
        if !c.is_empty() {
            let dirty = std::env::var("SSM_COMMIT_DIRTY").is_ok_and(|v| v == "1" || v == "true");
            return (Some(c), dirty);
        }
    }
    let git = |args: &[&str]| std::process::Command::new("git").args(args).output().ok();
    let commit = git(&["rev-parse", "HEAD"])
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = git(&["diff", "--quiet", "HEAD", "--"]).is_some_and(|o| !o.status.success());
    let dirty = dirty && commit.is_some();
    (commit, dirty)
}

/// The hash of the kernel sources in use (hot-reloaded ones when `SSM_KERNEL_DIR` is set).
pub fn kernels_hash() -> String {
    ssm_gpu::SourceRoot::from_env()
        .kernels_hash()
        .unwrap_or_else(|_| ssm_gpu::KERNELS_HASH.to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Device facts for the result set.
pub fn device_info(gpu: Option<&Gpu>, nvml: Option<&NvmlMonitor>) -> DeviceInfo {
    let threads = Some(rayon::current_num_threads());
    let Some(gpu) = gpu else {
        return DeviceInfo {
            name: format!("cpu: {}", cpu_model()),
            cpu_threads: threads,
            ..Default::default()
        };
    };
    let (cc_major, cc_minor) = gpu.compute_capability();
    let nvml_info = nvml.and_then(|m| m.device_info().ok());
    DeviceInfo {
        name: gpu.device_name().to_string(),
        compute_capability: Some(format!("{cc_major}.{cc_minor}")),
        sm_count: gpu.multiprocessor_count().ok(),
        driver_version: nvml_info.as_ref().map(|i| i.driver_version.clone()),
        power_limit_w: nvml_info.as_ref().and_then(|i| i.power_limit_w),
        max_sm_clock_mhz: nvml_info.as_ref().and_then(|i| i.max_sm_clock_mhz),
        max_mem_clock_mhz: nvml_info.as_ref().and_then(|i| i.max_mem_clock_mhz),
        cpu_threads: threads,
    }
}

/// A fresh result set stamped with the commit, kernel hash and device.
/// Its ceilings are the device's datasheet figures until the runner measures them.
pub fn new_result_set(gpu: Option<&Gpu>, nvml: Option<&NvmlMonitor>, tool: &str) -> ResultSet {
    let (commit, dirty) = current_commit();
    let device = device_info(gpu, nvml);
    let ceilings = Ceilings::datasheet(&device.name);
    ResultSet::new(
        RunInfo {
            commit,
            dirty,
            kernels_hash: kernels_hash(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            tool: tool.to_string(),
            notes: Vec::new(),
        },
        device,
        &ceilings,
    )
}
