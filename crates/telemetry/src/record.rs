//! The result schema: one versioned JSON document per benchmark run.
//!
//! ```text
//! ResultSet { schema: "ssm-bench-results", version: 2, run, device, ceilings, results: [BenchResult] }
//! BenchResult { id, implementation, workload, problem, timing, model, roofline,
//!               throughput, kernels: [KernelRecord { sram, dram }], hbm, nvml,
//!               energy_per_token_j, throttled }
//! ```
//!
//! `id` is the stable key the regression gate pairs results by
//! (`implementation/workload/dtype`). Everything derived (throughput, roofline,
//! measured/minimum) is computed by [`BenchResult::new`] from the measurement and
//! the model, never typed in by hand, so every producer agrees.
//!
//! Version history: 1 — first version; 2 — ceilings are owned and say whether
//! they were measured in the run (`measured`, `measurements`). A reader accepts
//! versions [`OLDEST_READABLE_VERSION`] to [`SCHEMA_VERSION`]; fields added later
//! must be `#[serde(default)]`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TelemetryError};
use crate::ncu::DramBytes;
use crate::nvml::RunTelemetry;
pub use crate::problem::Pass;
use crate::problem::Problem;
use crate::roofline::{Ceilings, Floor, Limiter};
use crate::sram::SramUse;
use crate::traffic::{cost_of, Cost};

/// The schema name every result file declares.
pub const SCHEMA: &str = "ssm-bench-results";
/// The version this build writes (version 1 is read and upgraded).
pub const SCHEMA_VERSION: u32 = 2;
/// The oldest version [`ResultSet::from_json`] still reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// Where and from what code a run was taken.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `git rev-parse HEAD` of the tree the binaries were built from.
    pub commit: Option<String>,
    /// The tree had uncommitted changes.
    #[serde(default)]
    pub dirty: bool,
    /// `ssm_gpu::KERNELS_HASH` of the binaries.
    pub kernels_hash: String,
    /// Seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// The program and version that wrote the file.
    pub tool: String,
    /// Anything a reader should know (skipped cases, throttling, converted input).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The machine the results were measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `"cpu"` for CPU-only runs, else the GPU's name.
    pub name: String,
    /// `major.minor` of the GPU.
    pub compute_capability: Option<String>,
    /// Streaming multiprocessors.
    pub sm_count: Option<u32>,
    /// The driver version.
    pub driver_version: Option<String>,
    /// Enforced power limit, watts.
    pub power_limit_w: Option<f64>,
    /// Maximum SM clock, MHz.
    pub max_sm_clock_mhz: Option<u32>,
    /// Maximum memory clock, MHz.
    pub max_mem_clock_mhz: Option<u32>,
    /// Host CPU threads used by CPU implementations.
    pub cpu_threads: Option<usize>,
}

/// How times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingMethod {
    /// CUDA events around each launch (device time).
    CudaEvents,
    /// A host clock around a synchronous call (CPU implementations).
    WallClock,
    /// Copied from another tool's output (see the run's notes).
    Imported,
    /// A peer timed by `triton.testing.do_bench` (median of its samples).
    TritonDoBench,
    /// A peer timed with `torch.cuda.Event` pairs around each call.
    TorchCudaEvents,
}

impl TimingMethod {
    /// Timings of a peer implementation (mamba_ssm, fla) from the peer harness:
    /// context for our results, not ours to gate.
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            TimingMethod::TritonDoBench | TimingMethod::TorchCudaEvents
        )
    }

    /// Device-side timings (CUDA events, ours or a peer's).
    pub fn is_device(self) -> bool {
        matches!(
            self,
            TimingMethod::CudaEvents | TimingMethod::TritonDoBench | TimingMethod::TorchCudaEvents
        )
    }
}

/// How a timed case was checked against a reference before it was timed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// What it was compared with: `f64 oracle`, a known answer.
    pub reference: String,
    /// Which part of the output was compared: `all`, `batch 0, heads 0 and 79`.
    pub sampled: String,
    /// Relative L2 error of the output over the sampled part.
    pub rel_l2: f64,
    /// Largest elementwise absolute error over the sampled part.
    pub max_abs: f64,
    /// The relative L2 budget it was held to (docs/TOLERANCES.md).
    pub budget: f64,
    /// Relative L2 error of returned final states, when there are any.
    pub state_rel_l2: Option<f64>,
    /// The relative L2 budget of the final states.
    pub state_budget: Option<f64>,
    /// Within every budget and no non-finite element.
    pub passed: bool,
}

/// Summary of the per-run times, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimingStats {
    /// How the times were taken.
    pub method: TimingMethod,
    /// Timed runs.
    pub samples: usize,
    /// Median run.
    pub median_ms: f64,
    /// Mean run.
    pub mean_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
    /// 10th percentile.
    pub p10_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// `(p90 - p10) / median`: the noise band the gate allows on top of its threshold.
    pub spread: f64,
}

impl TimingStats {
    /// Summarise per-run times. `None` when empty or any time is not finite and positive.
    pub fn from_samples(method: TimingMethod, samples: &[f64]) -> Option<TimingStats> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            // Linear interpolation between closest ranks.
            let x = p * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        let median = q(0.5);
        Some(TimingStats {
            method,
            samples: v.len(),
            median_ms: median,
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            min_ms: v[0],
            max_ms: v[v.len() - 1],
            p10_ms: q(0.1),
            p90_ms: q(0.9),
            spread: (q(0.9) - q(0.1)) / median,
        })
    }
}

/// The minimum cost of the problem (from [`crate::traffic`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Minimum bytes read from HBM.
    pub read_bytes: u64,
    /// Minimum bytes written to HBM.
    pub write_bytes: u64,
    /// Tensor-core (MMA) flops of the chunked algorithm.
    pub mma_flops: f64,
    /// CUDA-core flops (not a floor term).
    pub simt_flops: f64,
    /// Exponentials.
    pub exps: f64,
}

impl From<&Cost> for ModelRecord {
    fn from(c: &Cost) -> Self {
        ModelRecord {
            read_bytes: c.read_bytes,
            write_bytes: c.write_bytes,
            mma_flops: c.mma_flops,
            simt_flops: c.simt_flops,
            exps: c.exps,
        }
    }
}

impl ModelRecord {
    /// Read plus written.
    pub fn bytes(&self) -> u64 {
        self.read_bytes + self.write_bytes
    }
}

/// The floor on the run's card and how close the median came.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RooflineRecord {
    /// The floor: the largest of the three unit times, ms.
    pub floor_ms: f64,
    /// Minimum bytes at the HBM ceiling, ms.
    pub bytes_ms: f64,
    /// MMA flops at the tensor-core ceiling, ms.
    pub mma_ms: f64,
    /// Exponentials at the exp ceiling, ms.
    pub exp_ms: f64,
    /// Which unit sets the floor.
    pub limiter: Limiter,
    /// `floor_ms / median_ms` (1.0 = at the floor). Meaningful for GPU timings only.
    pub fraction_of_floor: f64,
}

/// Rates at the median time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Tokens (`b * L`, or `b` for a decode step) per second.
    pub tokens_per_s: f64,
    /// Minimum bytes (model) per second: the "useful" bandwidth.
    pub model_gb_per_s: f64,
    /// Measured DRAM bytes per second, when ncu measured them.
    pub measured_gb_per_s: Option<f64>,
    /// MMA plus ordinary flops per second, in TFLOP/s.
    pub tflop_per_s: f64,
}

/// One kernel of a result: its on-chip memory and, when measured, its DRAM bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// The kernel's entry name.
    pub name: String,
    /// Registers, shared memory and occupancy of its launch, when known.
    pub sram: Option<SramUse>,
    /// DRAM bytes of one launch (ncu), when measured.
    pub dram: Option<DramBytes>,
    /// ncu's duration of that launch, for cross-checking the event timing.
    pub ncu_duration_ms: Option<f64>,
}

impl KernelRecord {
    /// A kernel known by its entry name alone: nothing read or measured yet.
    pub fn named(name: impl Into<String>) -> Self {
        KernelRecord {
            name: name.into(),
            sram: None,
            dram: None,
            ncu_duration_ms: None,
        }
    }
}

/// HBM traffic: the model's minimum and what ncu measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HbmRecord {
    /// The model's minimum bytes (read plus written).
    pub model_bytes: u64,
    /// ncu's DRAM bytes read, summed over the call's kernels.
    pub measured_read_bytes: Option<u64>,
    /// ncu's DRAM bytes written, summed over the call's kernels.
    pub measured_write_bytes: Option<u64>,
    /// `measured / model` (1.0 = the minimum; above 1 = re-reads or spills).
    pub measured_over_model: Option<f64>,
}

/// What a producer measured; [`BenchResult::new`] derives the rest.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// As [`BenchResult::implementation`].
    pub implementation: String,
    /// As [`BenchResult::workload`].
    pub workload: String,
    /// The shape, element type and options timed.
    pub problem: Problem,
    /// The pass timed (the floor is that pass's: [`crate::traffic::cost_of`]).
    pub pass: Pass,
    /// The check against the reference made before timing (`None`: not verified).
    pub verification: Option<Verification>,
    /// The per-run times.
    pub timing: TimingStats,
    /// Each kernel the call launches.
    pub kernels: Vec<KernelRecord>,
    /// The card's clocks, power and throttling over the timed runs.
    pub nvml: Option<RunTelemetry>,
    /// Calls made while NVML integrated the energy in `nvml`.
    pub runs_in_nvml_window: u64,
}

impl Measurement {
    /// A forward pass timed without NVML and not verified (peer results, test
    /// fixtures); set the other fields by struct update where they differ.
    pub fn forward(
        implementation: impl Into<String>,
        workload: impl Into<String>,
        problem: Problem,
        timing: TimingStats,
        kernels: Vec<KernelRecord>,
    ) -> Self {
        Measurement {
            implementation: implementation.into(),
            workload: workload.into(),
            problem,
            pass: Pass::Forward,
            verification: None,
            timing,
            kernels,
            nvml: None,
            runs_in_nvml_window: 0,
        }
    }
}

/// One benchmark result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// `implementation/workload/dtype`, plus `/bwd` or `/fwd+bwd` for those
    /// passes: the gate's key.
    pub id: String,
    /// e.g. `mamba1-scan.cuda`, `mamba2-ssd.cpu`, `reference`.
    pub implementation: String,
    /// A docs/DESIGN.md §6 name (`M1-2.8B`) or a sweep point (`L-sweep/L=4096`).
    pub workload: String,
    /// The shape, element type and options timed.
    pub problem: Problem,
    /// The pass timed; absent in version 1 (always the forward then).
    #[serde(default)]
    pub pass: Pass,
    /// The check against the reference made before timing.
    #[serde(default)]
    pub verification: Option<Verification>,
    /// A peer's configuration as its harness reported it (`chunk_size`,
    /// `deterministic`, ...); empty for ours.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
    /// What the result computes where it differs from its problem (a peer
    /// without D, z or groups, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The per-run times.
    pub timing: TimingStats,
    /// The minimum cost of the problem.
    pub model: ModelRecord,
    /// The floor at the set's ceilings and the fraction of it reached.
    pub roofline: RooflineRecord,
    /// Rates at the median.
    pub throughput: Throughput,
    #[serde(default)]
    /// Each kernel the call launches.
    pub kernels: Vec<KernelRecord>,
    /// Model and measured HBM bytes.
    pub hbm: HbmRecord,
    /// The card's clocks, power and throttling over the timed runs.
    pub nvml: Option<RunTelemetry>,
    /// Joules per token of one call, from the energy over the measured runs.
    pub energy_per_token_j: Option<f64>,
    /// NVML saw a throttle reason other than idle / applications clocks.
    pub throttled: bool,
}

/// The stable key of a forward result: `implementation/workload/dtype`.
pub fn result_id(implementation: &str, workload: &str, problem: &Problem) -> String {
    result_id_for(implementation, workload, problem, Pass::Forward)
}

/// The stable key of a result of `pass`: the forward's id, plus `/bwd` or
/// `/fwd+bwd` for the other passes (forward ids are those of version 1).
pub fn result_id_for(
    implementation: &str,
    workload: &str,
    problem: &Problem,
    pass: Pass,
) -> String {
    let base = format!("{implementation}/{workload}/{}", problem.dtype());
    match pass.id_suffix() {
        Some(suffix) => format!("{base}/{suffix}"),
        None => base,
    }
}

impl BenchResult {
    /// Build a result; every derived number comes from `timing`, the model of
    /// `problem` on `ceilings`, and the optional measurements.
    pub fn new(m: Measurement, ceilings: &Ceilings) -> BenchResult {
        let Measurement {
            implementation,
            workload,
            problem,
            pass,
            verification,
            timing,
            kernels,
            nvml,
            runs_in_nvml_window,
        } = m;
        let c = cost_of(&problem, pass);
        let floor = Floor::of(&c, ceilings);
        let seconds = timing.median_ms * 1e-3;
        let per_s = |x: f64| x / seconds;
        // A window too short for the counter to tick reads 0 J: no number then.
        let energy_per_token_j = nvml.as_ref().and_then(|t| {
            (runs_in_nvml_window > 0 && problem.tokens() > 0 && t.energy_j > 0.0)
                .then(|| t.energy_j / runs_in_nvml_window as f64 / problem.tokens() as f64)
        });
        let throttled = nvml.as_ref().is_some_and(|t| t.throttled);
        let mut result = BenchResult {
            id: result_id_for(&implementation, &workload, &problem, pass),
            implementation,
            workload,
            problem,
            pass,
            verification,
            config: BTreeMap::new(),
            note: None,
            model: ModelRecord::from(&c),
            roofline: RooflineRecord {
                floor_ms: floor.floor_ms,
                bytes_ms: floor.bytes_ms,
                mma_ms: floor.mma_ms,
                exp_ms: floor.exp_ms,
                limiter: floor.limiter,
                fraction_of_floor: floor.fraction_of(timing.median_ms).unwrap_or(0.0),
            },
            throughput: Throughput {
                tokens_per_s: per_s(problem.tokens() as f64),
                model_gb_per_s: per_s(c.bytes() as f64) / 1e9,
                measured_gb_per_s: None,
                tflop_per_s: per_s(c.flops()) / 1e12,
            },
            hbm: HbmRecord {
                model_bytes: c.bytes(),
                measured_read_bytes: None,
                measured_write_bytes: None,
                measured_over_model: None,
            },
            timing,
            kernels,
            nvml,
            energy_per_token_j,
            throttled,
        };
        result.refresh_measured_bytes();
        result
    }

    /// Recompute the HBM summary from the kernels' measured DRAM bytes (call after
    /// attaching ncu measurements). Measured totals need every kernel measured.
    pub fn refresh_measured_bytes(&mut self) {
        let all: Option<Vec<DramBytes>> = if self.kernels.is_empty() {
            None
        } else {
            self.kernels.iter().map(|k| k.dram).collect()
        };
        let (read, write) = match all {
            Some(d) => (
                Some(d.iter().map(|b| b.read).sum::<u64>()),
                Some(d.iter().map(|b| b.write).sum::<u64>()),
            ),
            None => (None, None),
        };
        self.hbm.measured_read_bytes = read;
        self.hbm.measured_write_bytes = write;
        let measured = read.zip(write).map(|(r, w)| r + w);
        self.hbm.measured_over_model = measured
            .filter(|_| self.hbm.model_bytes > 0)
            .map(|m| m as f64 / self.hbm.model_bytes as f64);
        self.throughput.measured_gb_per_s =
            measured.map(|m| m as f64 / (self.timing.median_ms * 1e-3) / 1e9);
    }

    /// Measured DRAM bytes of one call, when every kernel was measured.
    pub fn measured_bytes(&self) -> Option<u64> {
        self.hbm
            .measured_read_bytes
            .zip(self.hbm.measured_write_bytes)
            .map(|(r, w)| r + w)
    }
}

/// One benchmark run: every result plus where it was taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultSet {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// [`SCHEMA_VERSION`] once read.
    pub version: u32,
    /// Where and from what code the run was taken.
    pub run: RunInfo,
    /// The machine it ran on.
    pub device: DeviceInfo,
    /// The ceilings every floor of this set was computed at (measured in the run, or
    /// the datasheet fallback: see `ceilings.measured`).
    pub ceilings: Ceilings,
    /// Every result; ids are unique.
    pub results: Vec<BenchResult>,
}

impl ResultSet {
    /// An empty set of this schema and version.
    pub fn new(run: RunInfo, device: DeviceInfo, ceilings: &Ceilings) -> ResultSet {
        ResultSet {
            schema: SCHEMA.to_string(),
            version: SCHEMA_VERSION,
            run,
            device,
            ceilings: ceilings.clone(),
            results: Vec::new(),
        }
    }

    /// Parse a result set of this schema, version 1 or 2 (version 1 is upgraded
    /// in memory: see [`SCHEMA_VERSION`]). `source_name` names the input in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<ResultSet> {
        #[derive(Deserialize)]
        struct Header {
            schema: Option<String>,
            version: Option<u32>,
        }
        let header: Header = serde_json::from_str(text)
            .map_err(|e| TelemetryError::parse(source_name, format!("not JSON: {e}")))?;
        let schema = header.schema.unwrap_or_default();
        let version = header.version.unwrap_or(0);
        if schema != SCHEMA || !(OLDEST_READABLE_VERSION..=SCHEMA_VERSION).contains(&version) {
            return Err(TelemetryError::Schema {
                source_name: source_name.to_string(),
                schema,
                version,
                expected: SCHEMA,
                max_version: SCHEMA_VERSION,
            });
        }
        let mut set: ResultSet = serde_json::from_str(text)
            .map_err(|e| TelemetryError::parse(source_name, e.to_string()))?;
        if version == 1 {
            // Version 1 is version 2 without the fields that have defaults: ceilings
            // `measured` (false: they were docs/DESIGN.md's H100 figures) and their
            // probes, and each result's `pass` (forward), `verification`, `config`
            // and `note`. Reading it is upgrading it.
            set.version = SCHEMA_VERSION;
            set.run.notes.push(format!(
                "read from schema version 1 ({source_name}): ceilings not measured in that run"
            ));
        }
        set.check_unique_ids(source_name)?;
        Ok(set)
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("result sets hold only finite numbers and strings")
    }

    /// Read and parse the set at `path` ([`ResultSet::from_json`]).
    pub fn read(path: &Path) -> Result<ResultSet> {
        let text = std::fs::read_to_string(path).map_err(|e| TelemetryError::io(path, e))?;
        ResultSet::from_json(&text, &path.display().to_string())
    }

    /// Write the set to `path` as JSON, creating the directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| TelemetryError::io(dir, e))?;
        }
        std::fs::write(path, self.to_json() + "\n").map_err(|e| TelemetryError::io(path, e))
    }

    /// The result with id `id`.
    pub fn get(&self, id: &str) -> Option<&BenchResult> {
        self.results.iter().find(|r| r.id == id)
    }

    fn check_unique_ids(&self, source_name: &str) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for r in &self.results {
            if !seen.insert(r.id.as_str()) {
                return Err(TelemetryError::parse(
                    source_name,
                    format!("result id `{}` appears twice", r.id),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::reference_workload;

    fn sample_result() -> BenchResult {
        let w = reference_workload("M2-decode").unwrap();
        let timing =
            TimingStats::from_samples(TimingMethod::CudaEvents, &[0.6, 0.5, 0.55]).unwrap();
        let kernels = vec![KernelRecord::named("mamba2_decode_bf16")];
        BenchResult::new(
            Measurement::forward("mamba2-ssd.decode.cuda", w.name, w.problem, timing, kernels),
            &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
        )
    }

    #[test]
    fn passes_other_than_the_forward_extend_the_id_and_cost_their_own() {
        let w = reference_workload("M2-2.7B").unwrap();
        let timing = TimingStats::from_samples(TimingMethod::TritonDoBench, &[4.05]).unwrap();
        let measure = |pass| {
            let implementation = "mamba_ssm.triton.mamba_chunk_scan_combined";
            let m = Measurement::forward(implementation, w.name, w.problem, timing.clone(), vec![]);
            BenchResult::new(
                Measurement { pass, ..m },
                &Ceilings::datasheet("NVIDIA H200"),
            )
        };
        let fwd = measure(Pass::Forward);
        let fb = measure(Pass::ForwardBackward);
        assert_eq!(
            fwd.id,
            "mamba_ssm.triton.mamba_chunk_scan_combined/M2-2.7B/bf16"
        );
        assert_eq!(fb.id, format!("{}/fwd+bwd", fwd.id));
        assert_eq!(measure(Pass::Backward).id, format!("{}/bwd", fwd.id));
        assert!(fb.roofline.floor_ms > fwd.roofline.floor_ms);
        assert_eq!(
            fb.model.mma_flops,
            cost_of(&w.problem, Pass::ForwardBackward).mma_flops
        );
        // The pass, verification, config and note default when absent (version 1).
        let mut v: serde_json::Value = serde_json::to_value(&fwd).unwrap();
        let o = v.as_object_mut().unwrap();
        for key in ["pass", "verification", "config", "note"] {
            o.remove(key);
        }
        let back: BenchResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, fwd);
        let json = serde_json::to_string(&fb).unwrap();
        assert!(json.contains("\"pass\":\"forward_backward\""), "{json}");
    }

    #[test]
    fn quantiles_and_spread() {
        let t =
            TimingStats::from_samples(TimingMethod::WallClock, &[5.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(
            (t.median_ms, t.min_ms, t.max_ms, t.mean_ms),
            (3.0, 1.0, 5.0, 3.0)
        );
        assert!((t.p10_ms - 1.4).abs() < 1e-12 && (t.p90_ms - 4.6).abs() < 1e-12);
        assert!((t.spread - 3.2 / 3.0).abs() < 1e-12);
        assert!(TimingStats::from_samples(TimingMethod::WallClock, &[]).is_none());
        assert!(TimingStats::from_samples(TimingMethod::WallClock, &[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn derived_numbers_follow_the_model() {
        let r = sample_result();
        assert_eq!(r.id, "mamba2-ssd.decode.cuda/M2-decode/bf16");
        let bytes = r.model.bytes() as f64;
        assert!((r.throughput.model_gb_per_s - bytes / 0.55e-3 / 1e9).abs() < 1e-6);
        assert!((r.roofline.fraction_of_floor - r.roofline.floor_ms / 0.55).abs() < 1e-12);
        assert_eq!(r.hbm.measured_over_model, None);
    }

    #[test]
    fn attaching_dram_bytes_fills_the_hbm_summary() {
        let mut r = sample_result();
        let model = r.hbm.model_bytes;
        r.kernels[0].dram = Some(DramBytes {
            read: model / 2,
            write: model / 2 + model / 10,
        });
        r.refresh_measured_bytes();
        let ratio = r.hbm.measured_over_model.unwrap();
        assert!((ratio - 1.1).abs() < 1e-3, "{ratio}");
        assert!(r.throughput.measured_gb_per_s.unwrap() > r.throughput.model_gb_per_s);
    }

    #[test]
    fn round_trip_and_version_check() {
        let mut set = ResultSet::new(
            RunInfo {
                kernels_hash: "abc".into(),
                tool: "test".into(),
                ..Default::default()
            },
            DeviceInfo {
                name: "cpu".into(),
                ..Default::default()
            },
            &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
        );
        set.results.push(sample_result());
        let text = set.to_json();
        assert_eq!(ResultSet::from_json(&text, "t").unwrap(), set);
        let future = text.replace("\"version\": 2", "\"version\": 99");
        assert!(matches!(
            ResultSet::from_json(&future, "t"),
            Err(TelemetryError::Schema { version: 99, .. })
        ));
        set.results.push(sample_result());
        assert!(
            ResultSet::from_json(&set.to_json(), "t").is_err(),
            "duplicate ids"
        );
    }

    #[test]
    fn version_1_files_read_as_unmeasured_version_2() {
        let mut set = ResultSet::new(
            RunInfo::default(),
            DeviceInfo {
                name: "NVIDIA H100 80GB HBM3".into(),
                ..Default::default()
            },
            &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
        );
        set.results.push(sample_result());
        // A version-1 document: no `measured` / `measurements` in the ceilings.
        let mut v1: serde_json::Value = serde_json::from_str(&set.to_json()).unwrap();
        v1["version"] = 1.into();
        let ceilings = v1["ceilings"].as_object_mut().unwrap();
        ceilings.remove("measured");
        ceilings.remove("measurements");
        let back = ResultSet::from_json(&v1.to_string(), "old.json").unwrap();
        assert_eq!(back.version, SCHEMA_VERSION);
        assert!(!back.ceilings.measured);
        assert_eq!(back.results, set.results);
        assert!(back.run.notes[0].contains("schema version 1 (old.json)"));
        v1["version"] = 0.into();
        assert!(ResultSet::from_json(&v1.to_string(), "t").is_err());
    }
}
