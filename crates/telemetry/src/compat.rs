//! Reading result files of other producers, converted into [`ResultSet`]s.
//!
//! Accepted:
//! - this crate's schema (`"schema": "ssm-bench-results"`);
//! - `gpu_decode_bench` reports (`"bench": "gpu_decode_bench"`, written by
//!   `crates/mamba2-ssd/examples/gpu_decode_bench.rs` under
//!   `benches/results/decode/`): one record per (family, batch, dtype, tiling)
//!   with median/min/max of CUDA-event timings, the kernel's resources and
//!   ptxas report. Differences from this schema, filled in on conversion:
//!   no p10/p90 (the spread is taken as `(max - min) / median`, which is wider,
//!   so the gate is more lenient, never stricter), no NVML, and the tiling is
//!   part of the implementation name (`mamba2-ssd.decode.cuda[rows8,w4]`);
//! - `gpu_scan_bench` reports (`"benchmark": "mamba1 selective scan forward
//!   (CUDA)"`, from `crates/mamba1-scan/examples/gpu_scan_bench.rs`): rows per
//!   (docs/DESIGN.md workload, dtype, work split) with registers, dynamic shared
//!   memory, local bytes and median/min/max. Differences: the spread is again
//!   `(max - min) / median`; threads per block are read from the config label
//!   (`...w256...`); static shared memory is not reported (taken as 0); the
//!   problem is the docs/DESIGN.md workload with the row's dtype; the work split is
//!   part of the implementation name;
//! - `gpu_ssd_bench` reports (`"bench": "mamba2-ssd forward (gpu_ssd_bench)"`,
//!   from `crates/mamba2-ssd/examples/gpu_ssd_bench.rs`): `records` per
//!   (workload, dtype, variant) with registers, shared memory and
//!   median/min/max. Differences: the chunk length and threads per block are
//!   read from the kernel description (`...q64... 128 threads)`); the options
//!   string sets z and initial/final states on the docs/DESIGN.md workload; the
//!   prepass kernel (when the record names its registers) is recorded as
//!   `<entry>#prepass` with unknown shared memory (no SRAM record).
//!
//! Records that convert to the same id (a producer listing one configuration
//! twice) get `#2`, `#3`, ... appended to the implementation in file order.

use std::path::Path;

use serde_json::Value;
use ssm_core::DType;
use ssm_gpu::{KernelResources, PtxasFunction};

use crate::error::{Result, TelemetryError};
use crate::problem::{Mamba1StepShape, Mamba2StepShape, Problem, SkipKind};
use crate::record::{
    BenchResult, DeviceInfo, KernelRecord, Measurement, Pass, ResultSet, RunInfo, TimingMethod,
    TimingStats, SCHEMA,
};
use crate::roofline::Ceilings;
use crate::sram::{LaunchShape, SmLimits, SramUse};

/// Read a result file of any accepted producer.
pub fn read_any(path: &Path) -> Result<ResultSet> {
    let text = std::fs::read_to_string(path).map_err(|e| TelemetryError::io(path, e))?;
    parse_any(&text, &path.display().to_string())
}

/// Parse a result document of any accepted producer.
pub fn parse_any(text: &str, source_name: &str) -> Result<ResultSet> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| TelemetryError::parse(source_name, format!("not JSON: {e}")))?;
    if value.get("schema").and_then(Value::as_str) == Some(SCHEMA) {
        return ResultSet::from_json(text, source_name);
    }
    if value.get("benchmark").and_then(Value::as_str) == Some(SCAN_BENCH) {
        return convert_scan_bench(&value, source_name);
    }
    match value.get("bench").and_then(Value::as_str) {
        Some("gpu_decode_bench") => convert_decode_bench(&value, source_name),
        Some(SSD_BENCH) => convert_ssd_bench(&value, source_name),
        _ => {
            let keys: Vec<&String> = value
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            Err(TelemetryError::parse(
                source_name,
                format!("unknown result format (top-level keys {keys:?}); expected \"schema\": \"{SCHEMA}\", \"bench\": \"gpu_decode_bench\" / \"{SSD_BENCH}\" or \"benchmark\": \"{SCAN_BENCH}\""),
            ))
        }
    }
}

const SCAN_BENCH: &str = "mamba1 selective scan forward (CUDA)";
const SSD_BENCH: &str = "mamba2-ssd forward (gpu_ssd_bench)";

fn field<'v>(v: &'v Value, key: &str, source_name: &str) -> Result<&'v Value> {
    v.get(key)
        .ok_or_else(|| TelemetryError::parse(source_name, format!("missing field `{key}`")))
}

fn number(v: &Value, key: &str, source_name: &str) -> Result<f64> {
    field(v, key, source_name)?
        .as_f64()
        .ok_or_else(|| TelemetryError::parse(source_name, format!("`{key}` is not a number")))
}

fn count(v: &Value, key: &str, source_name: &str) -> Result<usize> {
    field(v, key, source_name)?
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| TelemetryError::parse(source_name, format!("`{key}` is not a count")))
}

fn run_info(doc: &Value, tool: &str, source_name: &str) -> RunInfo {
    RunInfo {
        commit: doc
            .get("commit")
            .and_then(Value::as_str)
            .filter(|c| *c != "unknown")
            .map(str::to_string),
        dirty: false,
        kernels_hash: doc
            .get("kernels_hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        created_unix_s: 0,
        tool: format!("{tool} (converted by ssm-telemetry)"),
        notes: vec![format!(
            "converted from {source_name}: spread = (max - min) / median (no quantiles in the source); no NVML"
        )],
    }
}

/// A device name from a `Gpu::describe()` line (`NAME (cc 9.0, ...); ...`).
fn device_from_description(doc: &Value) -> String {
    doc.get("device_name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            doc.get("device")
                .and_then(Value::as_str)
                .map(|d| d.split(" (").next().unwrap_or(d).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Timing from median / min / max only.
fn timing_from_range(
    median: f64,
    min: f64,
    max: f64,
    samples: usize,
    source_name: &str,
) -> Result<TimingStats> {
    if !(median > 0.0 && min > 0.0 && max >= median && median >= min) {
        return Err(TelemetryError::parse(
            source_name,
            format!("implausible times median {median} min {min} max {max}"),
        ));
    }
    Ok(TimingStats {
        method: TimingMethod::CudaEvents,
        samples,
        median_ms: median,
        mean_ms: median,
        min_ms: min,
        max_ms: max,
        p10_ms: min,
        p90_ms: max,
        spread: (max - min) / median,
    })
}

/// Make ids unique: a repeated id gets `#2`, `#3`, ... on its implementation.
fn check_unique(set: &mut ResultSet, _source_name: &str) -> Result<()> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &mut set.results {
        let n = seen.entry(r.id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            r.implementation = format!("{}#{n}", r.implementation);
            r.id = crate::record::result_id(&r.implementation, &r.workload, &r.problem);
        }
    }
    Ok(())
}

/// The number before `suffix` in `text` (`"... 128 threads)"`, `" threads"` -> 128).
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let end = text.find(suffix)?;
    let digits: String = text[..end]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

fn convert_ssd_bench(doc: &Value, source_name: &str) -> Result<ResultSet> {
    let device = DeviceInfo {
        name: device_from_description(doc),
        ..Default::default()
    };
    let ceilings = Ceilings::datasheet(&device.name);
    let mut set = ResultSet::new(
        run_info(doc, "gpu_ssd_bench", source_name),
        device,
        &ceilings,
    );
    let records = field(doc, "records", source_name)?
        .as_array()
        .ok_or_else(|| TelemetryError::parse(source_name, "`records` is not an array"))?;
    for (i, rec) in records.iter().enumerate() {
        let where_ = format!("{source_name}: records[{i}]");
        let workload = field(rec, "workload", &where_)?
            .as_str()
            .unwrap_or_default();
        let reference = crate::workloads::reference_workload(workload).ok_or_else(|| {
            TelemetryError::parse(&where_, format!("unknown workload `{workload}`"))
        })?;
        let dtype: DType = field(rec, "dtype", &where_)?
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| TelemetryError::parse(&where_, e))?;
        let kernel = rec.get("kernel").and_then(Value::as_str).unwrap_or("");
        let options = rec.get("options").and_then(Value::as_str).unwrap_or("");
        let label = kernel.split(' ').next().unwrap_or("");
        let chunk = label
            .split('.')
            .find_map(|p| p.strip_prefix('q').and_then(|q| q.parse::<usize>().ok()));
        let problem = match reference.problem.with_dtype(dtype) {
            Problem::Ssd(mut s) => {
                if let Some(q) = chunk {
                    s.chunk_size = q;
                }
                s.z = options.split(',').any(|o| o.trim() == "z");
                let states = options.contains("initial+final states");
                s.initial_states = states;
                s.final_states = states;
                Problem::Ssd(s)
            }
            _ => {
                return Err(TelemetryError::parse(
                    &where_,
                    format!("`{workload}` is not an SSD workload"),
                ))
            }
        };
        let entry = if label.contains("ssd_simt") {
            "ssd_simt_fwd"
        } else {
            "ssd_fused_fwd"
        };
        let smem = count(rec, "smem_bytes", &where_)? as u32;
        let resources = KernelResources {
            registers: count(rec, "registers", &where_)? as u32,
            static_smem_bytes: 0,
            local_bytes: count(rec, "local_bytes", &where_)? as u32,
            max_threads_per_block: 0,
            max_dynamic_smem_bytes: smem,
        };
        let sram = number_before(kernel, " threads").map(|t| {
            SramUse::new(
                &resources,
                None,
                LaunchShape {
                    threads_per_block: t as u32,
                    dynamic_smem_bytes: smem,
                },
                &SmLimits::SM90,
            )
        });
        let mut kernels = Vec::new();
        if rec
            .get("prepass_registers")
            .and_then(Value::as_u64)
            .is_some()
        {
            kernels.push(KernelRecord {
                name: format!("{entry}#prepass"),
                sram: None,
                dram: None,
                ncu_duration_ms: None,
            });
        }
        kernels.push(KernelRecord {
            name: entry.to_string(),
            sram,
            dram: None,
            ncu_duration_ms: None,
        });
        let timing = timing_from_range(
            number(rec, "median_ms", &where_)?,
            number(rec, "min_ms", &where_)?,
            number(rec, "max_ms", &where_)?,
            rec.get("iters").and_then(Value::as_u64).unwrap_or(0) as usize,
            &where_,
        )?;
        let variant = rec
            .get("variant")
            .and_then(Value::as_str)
            .unwrap_or("default");
        set.results.push(BenchResult::new(
            Measurement {
                implementation: format!("mamba2-ssd.cuda[{variant}]"),
                workload: workload.to_string(),
                problem,
                timing,
                kernels,
                nvml: None,
                runs_in_nvml_window: 0,
                pass: Pass::Forward,
                verification: None,
            },
            &ceilings,
        ));
    }
    check_unique(&mut set, source_name)?;
    Ok(set)
}

fn convert_scan_bench(doc: &Value, source_name: &str) -> Result<ResultSet> {
    let device = DeviceInfo {
        name: device_from_description(doc),
        ..Default::default()
    };
    let ceilings = Ceilings::datasheet(&device.name);
    let mut set = ResultSet::new(
        run_info(doc, "gpu_scan_bench", source_name),
        device,
        &ceilings,
    );
    let rows = field(doc, "rows", source_name)?
        .as_array()
        .ok_or_else(|| TelemetryError::parse(source_name, "`rows` is not an array"))?;
    for (i, row) in rows.iter().enumerate() {
        let where_ = format!("{source_name}: rows[{i}]");
        let workload = field(row, "workload", &where_)?
            .as_str()
            .unwrap_or_default();
        let reference = crate::workloads::reference_workload(workload).ok_or_else(|| {
            TelemetryError::parse(&where_, format!("unknown workload `{workload}`"))
        })?;
        let dtype: DType = field(row, "dtype", &where_)?
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| TelemetryError::parse(&where_, e))?;
        let label = row.get("label").and_then(Value::as_str).unwrap_or("");
        let threads = label
            .split('.')
            .find_map(|part| part.strip_prefix('w').and_then(|t| t.parse::<u32>().ok()));
        let resources = KernelResources {
            registers: count(row, "registers", &where_)? as u32,
            static_smem_bytes: 0,
            local_bytes: count(row, "local_bytes", &where_)? as u32,
            max_threads_per_block: 0,
            max_dynamic_smem_bytes: 0,
        };
        let sram = threads.map(|t| {
            SramUse::new(
                &resources,
                None,
                LaunchShape {
                    threads_per_block: t,
                    dynamic_smem_bytes: row
                        .get("dynamic_smem_bytes")
                        .and_then(Value::as_u64)
                        .unwrap_or(0) as u32,
                },
                &SmLimits::SM90,
            )
        });
        let timing = timing_from_range(
            number(row, "median_ms", &where_)?,
            number(row, "min_ms", &where_)?,
            number(row, "max_ms", &where_)?,
            0,
            &where_,
        )?;
        let variant = row
            .get("variant")
            .and_then(Value::as_str)
            .unwrap_or("default");
        set.results.push(BenchResult::new(
            Measurement {
                implementation: format!("mamba1-scan.cuda[{variant}]"),
                workload: workload.to_string(),
                problem: reference.problem.with_dtype(dtype),
                timing,
                kernels: vec![KernelRecord {
                    name: "mamba1_scan_fwd".into(),
                    sram,
                    dram: None,
                    ncu_duration_ms: None,
                }],
                nvml: None,
                runs_in_nvml_window: 0,
                pass: Pass::Forward,
                verification: None,
            },
            &ceilings,
        ));
    }
    check_unique(&mut set, source_name)?;
    Ok(set)
}

fn convert_decode_bench(doc: &Value, source_name: &str) -> Result<ResultSet> {
    let run = run_info(doc, "gpu_decode_bench", source_name);
    let device = DeviceInfo {
        name: device_from_description(doc),
        ..Default::default()
    };
    let ceilings = Ceilings::datasheet(&device.name);
    let mut set = ResultSet::new(run, device, &ceilings);
    let records = field(doc, "results", source_name)?
        .as_array()
        .ok_or_else(|| TelemetryError::parse(source_name, "`results` is not an array"))?;
    for (i, rec) in records.iter().enumerate() {
        let where_ = format!("{source_name}: results[{i}]");
        set.results
            .push(convert_decode_record(rec, &where_, &ceilings)?);
    }
    check_unique(&mut set, source_name)?;
    Ok(set)
}

fn convert_decode_record(
    rec: &Value,
    source_name: &str,
    ceilings: &Ceilings,
) -> Result<BenchResult> {
    let family = field(rec, "family", source_name)?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dtype: DType = field(rec, "dtype", source_name)?
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| TelemetryError::parse(source_name, e))?;
    let options = rec.get("options").and_then(Value::as_str).unwrap_or("");
    let has = |name: &str| options.split(',').any(|o| o.trim().starts_with(name));
    let shape = field(rec, "shape", source_name)?;
    let batch = count(shape, "batch", source_name)?;
    let groups = count(shape, "groups", source_name)?;
    let d_state = count(shape, "d_state", source_name)?;
    let (problem, implementation) = match family.as_str() {
        "mamba2" => (
            Problem::Mamba2Step(Mamba2StepShape {
                batch,
                heads: count(shape, "heads", source_name)?,
                head_dim: count(shape, "head_dim", source_name)?,
                d_state,
                groups,
                dtype,
                z: has("z"),
                d: if options.contains("D per head dim") {
                    SkipKind::PerHeadDim
                } else if has("D") {
                    SkipKind::PerHead
                } else {
                    SkipKind::None
                },
                dt_bias: has("dt_bias"),
                softplus: has("softplus"),
            }),
            "mamba2-ssd.decode.cuda",
        ),
        "mamba1" => (
            Problem::Mamba1Step(Mamba1StepShape {
                batch,
                d_inner: count(shape, "d_inner", source_name)?,
                d_state,
                groups,
                dtype,
                z: has("z"),
                d: has("D"),
                dt_bias: has("dt_bias"),
                softplus: has("softplus"),
            }),
            "mamba1-scan.decode.cuda",
        ),
        other => {
            return Err(TelemetryError::parse(
                source_name,
                format!("unknown family `{other}`"),
            ))
        }
    };
    let tiling = rec.get("tiling");
    let warps = tiling
        .and_then(|t| t.get("warps"))
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let tiling_label = tiling
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let time = field(rec, "time_ms", source_name)?;
    let (median, min, max) = (
        number(time, "median", source_name)?,
        number(time, "min", source_name)?,
        number(time, "max", source_name)?,
    );
    let samples = time.get("samples").and_then(Value::as_u64).unwrap_or(0) as usize;
    let timing = timing_from_range(median, min, max, samples, source_name)?;
    let resources: Option<KernelResources> = rec
        .get("resources")
        .and_then(|r| serde_json::from_value(r.clone()).ok());
    let ptxas: Option<PtxasFunction> = rec
        .get("ptxas")
        .and_then(|p| serde_json::from_value(p.clone()).ok());
    let kernel_name = rec
        .get("kernel")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let sram = resources.filter(|_| warps > 0).map(|r| {
        SramUse::new(
            &r,
            ptxas.as_ref(),
            LaunchShape {
                threads_per_block: 32 * warps,
                dynamic_smem_bytes: 0,
            },
            &SmLimits::SM90,
        )
    });
    let implementation = if tiling_label.is_empty() {
        implementation.to_string()
    } else {
        format!("{implementation}[{tiling_label}]")
    };
    Ok(BenchResult::new(
        Measurement {
            implementation,
            workload: format!("decode-b{batch}"),
            problem,
            timing,
            kernels: vec![KernelRecord {
                name: kernel_name,
                sram,
                dram: None,
                ncu_duration_ms: None,
            }],
            nvml: None,
            runs_in_nvml_window: 0,
            pass: Pass::Forward,
            verification: None,
        },
        ceilings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECODE_REPORT: &str = r#"{
      "bench": "gpu_decode_bench", "commit": "abc123", "kernels_hash": "k1",
      "device_name": "NVIDIA H100 80GB HBM3",
      "results": [
        {"family": "mamba2",
         "shape": {"batch": 256, "heads": 80, "head_dim": 64, "d_state": 128, "groups": 1},
         "dtype": "bf16", "tiling": {"rows_per_slot": 8, "warps": 4, "streaming_hints": false},
         "options": "z, D per head, dt_bias, softplus",
         "time_ms": {"median": 0.5, "min": 0.49, "max": 0.55, "samples": 200},
         "kernel": "mamba2_decode_bf16",
         "resources": {"registers": 64, "static_smem_bytes": 0, "local_bytes": 0,
                       "max_threads_per_block": 128, "max_dynamic_smem_bytes": 0},
         "ptxas": null},
        {"family": "mamba1",
         "shape": {"batch": 1, "d_inner": 5120, "d_state": 16, "groups": 1},
         "dtype": "f32", "tiling": {"batch_rows": 4, "warps": 8, "streaming_hints": false},
         "options": "z, D, dt_bias, softplus",
         "time_ms": {"median": 0.01, "min": 0.009, "max": 0.02, "samples": 200},
         "kernel": "mamba1_decode_f32"}
      ]}"#;

    #[test]
    fn decode_bench_reports_convert() {
        let set = parse_any(DECODE_REPORT, "fixture").unwrap();
        assert_eq!(set.run.commit.as_deref(), Some("abc123"));
        assert_eq!(set.results.len(), 2);
        let m2 = &set.results[0];
        assert!(
            m2.id.starts_with("mamba2-ssd.decode.cuda[") && m2.id.ends_with("/decode-b256/bf16")
        );
        let Problem::Mamba2Step(s) = m2.problem else {
            panic!("wrong op")
        };
        assert!(s.z && s.dt_bias && s.softplus && s.d == SkipKind::PerHead);
        let sram = m2.kernels[0].sram.as_ref().unwrap();
        assert_eq!(
            (sram.registers_per_thread, sram.threads_per_block),
            (64, 128)
        );
        assert!((m2.timing.spread - 0.12).abs() < 1e-9);
        assert!(m2.kernels[0].sram.is_some());
        assert!(
            set.results[1].kernels[0].sram.is_none(),
            "no resources in the record"
        );
    }

    const SCAN_REPORT: &str = r#"{
      "benchmark": "mamba1 selective scan forward (CUDA)", "commit": "unknown", "kernels_hash": "k2",
      "device": "NVIDIA H100 80GB HBM3 (cc 9.0, compiling for sm_90); NVRTC 13.0",
      "rows": [
        {"workload": "M1-2.8B", "dtype": "bf16", "variant": "tpc4", "label": "bf16.n16.tpc4.t32.w256.p0.zDbs.vec",
         "registers": 96, "dynamic_smem_bytes": 40960, "local_bytes": 0, "blocks": 5120,
         "median_ms": 0.71, "min_ms": 0.70, "max_ms": 0.74, "ok": true}
      ]}"#;

    #[test]
    fn scan_bench_reports_convert() {
        let set = parse_any(SCAN_REPORT, "fixture").unwrap();
        assert_eq!(set.device.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(set.run.commit, None, "\"unknown\" is no commit");
        let r = &set.results[0];
        assert_eq!(r.id, "mamba1-scan.cuda[tpc4]/M1-2.8B/bf16");
        let sram = r.kernels[0].sram.as_ref().unwrap();
        assert_eq!(
            (sram.threads_per_block, sram.registers_per_thread),
            (256, 96)
        );
        assert_eq!(sram.dynamic_smem_bytes, 40960);
        // The docs/DESIGN.md workload's floor: exp-bound at 0.323 ms.
        assert!(
            (r.roofline.floor_ms - 0.3234).abs() < 1e-3,
            "{}",
            r.roofline.floor_ms
        );
    }

    const SSD_REPORT: &str = r#"{
      "bench": "mamba2-ssd forward (gpu_ssd_bench)", "commit": "a6a13ab", "kernels_hash": "k3",
      "device": "NVIDIA H100 80GB HBM3 (cc 9.0, compiling for sm_90)",
      "records": [
        {"workload": "M2-long", "dtype": "bf16", "variant": "z", "options": "dt_bias, dt_softplus, D(H), z",
         "kernel": "mamba2.ssd_fused.s1.bf16.q64.n128.p64 (168 regs, 64512 B smem, 12 items + 96 prepass, 128 threads)",
         "registers": 168, "smem_bytes": 64512, "local_bytes": 0, "prepass_registers": 168,
         "median_ms": 1.57, "min_ms": 1.55, "max_ms": 1.60, "iters": 50},
        {"workload": "M2-long", "dtype": "bf16", "variant": "z", "options": "dt_bias, dt_softplus, D(H), z",
         "kernel": "mamba2.ssd_fused.s1.bf16.q64.n128.p64 (168 regs, 64512 B smem, 12 items, 128 threads)",
         "registers": 168, "smem_bytes": 64512, "local_bytes": 0,
         "median_ms": 1.58, "min_ms": 1.55, "max_ms": 1.60}
      ]}"#;

    #[test]
    fn ssd_bench_reports_convert_and_repeats_get_an_ordinal() {
        let set = parse_any(SSD_REPORT, "fixture").unwrap();
        let r = &set.results[0];
        assert_eq!(r.id, "mamba2-ssd.cuda[z]/M2-long/bf16");
        let Problem::Ssd(s) = r.problem else {
            panic!("wrong op")
        };
        assert!(s.z && !s.final_states && s.chunk_size == 64);
        assert_eq!(r.kernels.len(), 2);
        assert_eq!(r.kernels[0].name, "ssd_fused_fwd#prepass");
        let sram = r.kernels[1].sram.as_ref().unwrap();
        assert_eq!(
            (sram.threads_per_block, sram.dynamic_smem_bytes),
            (128, 64512)
        );
        assert_eq!(set.results[1].id, "mamba2-ssd.cuda[z]#2/M2-long/bf16");
        assert_eq!(
            number_before("(1 items, 256 threads)", " threads"),
            Some(256)
        );
    }

    #[test]
    fn unknown_formats_name_their_keys() {
        let err = parse_any(r#"{"foo": 1}"#, "x").unwrap_err().to_string();
        assert!(err.contains("foo"), "{err}");
    }
}
