//! Effective bandwidth of the decode-step kernels of both families (design.md §6:
//! M1-decode, M2-decode), measured against the device's own copy rate in the same
//! run.
//!
//! ```text
//! gpu_decode_bench <results.json> [--commit <sha>] [--quick] [--only <family>-<batch>-<dtype>]
//! ```
//!
//! `--only mamba1-256-bf16` times just that configuration with the default tiling
//! (no copy rate, no candidates): for profilers such as `ncu`.
//!
//! The commit defaults to `$SSM_COMMIT` (the device machine has no git history).
//! For every (family, batch, dtype, tiling):
//! - bytes = state read + state written + every input read once + the output
//!   written once (the floor any implementation must move);
//! - every tensor (state, per-token inputs, parameters, output) rotates over enough
//!   copies that together they are at least 4x the L2 cache, so repeated steps
//!   cannot be served from L2 (A of Mamba-1 is a third of the bytes at b = 1);
//! - time = median of CUDA-event timings of single launches after a warm-up, taken
//!   twice (the two medians show the run-to-run spread); a burst timing (20
//!   back-to-back launches per event pair) shows the per-step cost once launch
//!   gaps are hidden;
//! - GB/s = bytes / median time; fraction = that over the copy rate, where the copy
//!   rate is a 1 GiB device-to-device cuMemcpy counting bytes read plus written,
//!   measured before and after the kernels.
//!
//! Inputs are random (never zeros); the kernels timed here are the ones the GPU
//! tests verify (`tests/gpu_decode.rs` of both crates, `DecodeTiling::candidates`).

use std::process::ExitCode;

use half::bf16;
use mamba1_scan::decode_cuda as m1;
use mamba2_ssd::decode_cuda as m2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use ssm_core::{DType, Element, SsmError};
use ssm_gpu::cudarc::driver::CudaSlice;
use ssm_gpu::{DeviceElement, Gpu, GpuError, Timing, KERNELS_HASH};

/// Rotated buffers must cover at least this many L2 caches.
const L2_COVER: usize = 4;
const WARMUP: usize = 10;
const BURST: usize = 20;

struct Settings {
    out_path: String,
    commit: String,
    quick: bool,
    only: Option<String>,
}

fn parse_args() -> Result<Settings, String> {
    let mut args = std::env::args().skip(1);
    let mut out_path = None;
    let mut commit = std::env::var("SSM_COMMIT").unwrap_or_else(|_| "unknown".into());
    let mut quick = false;
    let mut only = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--commit" => commit = args.next().ok_or("--commit needs a value")?,
            "--quick" => quick = true,
            "--only" => only = Some(args.next().ok_or("--only needs <family>-<batch>-<dtype>")?),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => out_path = Some(s.to_string()),
        }
    }
    Ok(Settings {
        out_path: out_path
            .ok_or("usage: gpu_decode_bench <results.json> [--commit <sha>] [--quick]")?,
        commit,
        quick,
        only,
    })
}

fn main() -> ExitCode {
    match parse_args().and_then(|s| run(&s).map_err(|e| e.to_string())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_decode_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct BenchError(String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<GpuError> for BenchError {
    fn from(e: GpuError) -> Self {
        BenchError(e.to_string())
    }
}
impl From<SsmError> for BenchError {
    fn from(e: SsmError) -> Self {
        BenchError(e.to_string())
    }
}
impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError(e.to_string())
    }
}
impl From<serde_json::Error> for BenchError {
    fn from(e: serde_json::Error) -> Self {
        BenchError(e.to_string())
    }
}

type BenchResult<T> = Result<T, BenchError>;

fn run(settings: &Settings) -> BenchResult<()> {
    let gpu = Gpu::new(0)?;
    println!("{}", gpu.describe());
    let l2 = gpu.l2_cache_bytes()? as usize;
    let mut rng = StdRng::seed_from_u64(rand::rng().random());
    let iters = if settings.quick { 50 } else { 200 };
    if let Some(only) = &settings.only {
        return run_only(&gpu, l2, iters, &mut rng, only);
    }

    let copy_before = copy_rate(&gpu, iters.min(50))?;
    println!(
        "device copy: {:.0} GB/s (1 GiB D2D, read + write)",
        copy_before.gbps
    );

    let mut records = Vec::new();
    let batches = [1usize, 64, 256];
    let mut bench = Bench {
        gpu: &gpu,
        l2,
        iters,
        copy_gbps: copy_before.gbps,
        rng: &mut rng,
    };
    for &batch in &batches {
        records.push(bench.m2::<f32>(batch, m2::DecodeTiling::default())?);
        records.push(bench.m2::<bf16>(batch, m2::DecodeTiling::default())?);
        records.push(bench.m1::<f32>(batch, m1::DecodeTiling::for_dtype(DType::F32))?);
        records.push(bench.m1::<bf16>(batch, m1::DecodeTiling::for_dtype(DType::Bf16))?);
    }
    for tiling in m2::DecodeTiling::candidates().into_iter().skip(1) {
        records.push(bench.m2::<bf16>(256, tiling)?);
    }
    for tiling in m1::DecodeTiling::candidates().into_iter().skip(1) {
        records.push(bench.m1::<bf16>(256, tiling)?);
        records.push(bench.m1::<f32>(256, tiling)?);
    }

    let copy_after = copy_rate(&gpu, iters.min(50))?;
    println!("device copy after the kernels: {:.0} GB/s", copy_after.gbps);

    print_table(&records);
    let report = json!({
        "bench": "gpu_decode_bench",
        "commit": settings.commit,
        "kernels_hash": KERNELS_HASH,
        "device": gpu.describe(),
        "device_name": gpu.device_name(),
        "l2_bytes": l2,
        "copy": { "before": copy_before.json(), "after": copy_after.json() },
        "method": "bytes = state read + written + inputs read once + output written once; \
                   time = median of single-launch CUDA-event timings after warm-up; \
                   every tensor rotates over copies covering >= 4x L2; \
                   fraction = GB/s over the 1 GiB D2D copy rate (read + write) measured before the kernels",
        "results": records,
    });
    std::fs::write(&settings.out_path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", settings.out_path);
    Ok(())
}

/// One configuration with the default tiling, printed, nothing written.
fn run_only(gpu: &Gpu, l2: usize, iters: usize, rng: &mut StdRng, only: &str) -> BenchResult<()> {
    let parts: Vec<&str> = only.split('-').collect();
    let [family, batch, dtype] = parts[..] else {
        return Err(BenchError(format!(
            "--only {only}: expected <family>-<batch>-<dtype>"
        )));
    };
    let batch: usize = batch
        .parse()
        .map_err(|_| BenchError(format!("--only {only}: bad batch")))?;
    let mut bench = Bench {
        gpu,
        l2,
        iters,
        copy_gbps: f64::NAN,
        rng,
    };
    let record = match (family, dtype) {
        ("mamba2", "f32") => bench.m2::<f32>(batch, m2::DecodeTiling::default())?,
        ("mamba2", "bf16") => bench.m2::<bf16>(batch, m2::DecodeTiling::default())?,
        ("mamba1", "f32") => bench.m1::<f32>(batch, m1::DecodeTiling::for_dtype(DType::F32))?,
        ("mamba1", "bf16") => bench.m1::<bf16>(batch, m1::DecodeTiling::for_dtype(DType::Bf16))?,
        _ => {
            return Err(BenchError(format!(
                "--only {only}: unknown family or dtype"
            )))
        }
    };
    print_table(&[record]);
    Ok(())
}

struct CopyRate {
    bytes: usize,
    timing: Timing,
    gbps: f64,
}

impl CopyRate {
    fn json(&self) -> Value {
        json!({
            "bytes_moved": self.bytes,
            "median_ms": self.timing.median_ms,
            "min_ms": self.timing.min_ms,
            "max_ms": self.timing.max_ms,
            "gbps": self.gbps,
        })
    }
}

/// A 1 GiB device-to-device copy, counting bytes read plus bytes written.
fn copy_rate(gpu: &Gpu, iters: usize) -> BenchResult<CopyRate> {
    let len = 1usize << 28; // f32 elements: 1 GiB
    let mut rng = StdRng::seed_from_u64(7);
    let mut src = gpu.alloc_poisoned::<f32>(len)?;
    fill_random(gpu, &mut src, &mut rng)?;
    let mut dst = gpu.alloc_poisoned::<f32>(len)?;
    let stream = gpu.stream().clone();
    let timing = gpu.time(3, iters, || Ok(stream.memcpy_dtod(&src, &mut dst)?))?;
    let bytes = 2 * len * 4;
    Ok(CopyRate {
        bytes,
        gbps: bytes as f64 / (timing.median_ms * 1e-3) / 1e9,
        timing,
    })
}

/// Random values in a device buffer, uploaded in chunks (no huge host copy).
fn fill_random(gpu: &Gpu, buf: &mut CudaSlice<f32>, rng: &mut StdRng) -> BenchResult<()> {
    const CHUNK: usize = 1 << 22;
    let chunk: Vec<f32> = (0..CHUNK.min(buf.len()))
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    let mut offset = 0;
    while offset < buf.len() {
        let n = CHUNK.min(buf.len() - offset);
        gpu.stream()
            .memcpy_htod(&chunk[..n], &mut buf.slice_mut(offset..offset + n))
            .map_err(GpuError::from)?;
        offset += n;
    }
    Ok(())
}

fn random_vec<T: Element>(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f32(rng.random_range(lo..hi)))
        .collect()
}

/// Copies of per-token tensors and states such that together they cover L2_COVER x L2.
fn rotation_slots(l2: usize, bytes_per_slot: usize) -> usize {
    (L2_COVER * l2)
        .div_ceil(bytes_per_slot.max(1))
        .clamp(1, 4096)
}

/// Bytes one step must move, by kind.
struct Traffic {
    state: usize,
    inputs: usize,
    output: usize,
}

impl Traffic {
    fn total(&self) -> usize {
        2 * self.state + self.inputs + self.output
    }
}

struct Bench<'g, 'r> {
    gpu: &'g Gpu,
    l2: usize,
    iters: usize,
    copy_gbps: f64,
    rng: &'r mut StdRng,
}

impl Bench<'_, '_> {
    /// Time `launch(slot)` over rotating slots: single launches twice, then bursts.
    fn time_rotating(
        &self,
        slots: usize,
        mut launch: impl FnMut(usize) -> Result<(), SsmError>,
    ) -> BenchResult<(Timing, Timing, Timing)> {
        let mut next = 0usize;
        let mut step = || {
            let slot = next % slots;
            next += 1;
            launch(slot).map_err(|e| GpuError::InvalidArgument(e.to_string()))
        };
        let first = self.gpu.time(WARMUP, self.iters, &mut step)?;
        let second = self.gpu.time(WARMUP, self.iters, &mut step)?;
        let burst = self.gpu.time(1, self.iters / 4, || {
            for _ in 0..BURST {
                step()?;
            }
            Ok(())
        })?;
        Ok((first, second, burst))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        family: &str,
        shape: Value,
        dtype: &str,
        tiling: Value,
        kernel: &ssm_gpu::Kernel,
        slots: usize,
        traffic: &Traffic,
        (first, second, burst): (Timing, Timing, Timing),
    ) -> Value {
        let bytes = traffic.total();
        let gbps = bytes as f64 / (first.median_ms * 1e-3) / 1e9;
        let burst_ms = burst.median_ms / BURST as f64;
        json!({
            "family": family,
            "shape": shape,
            "dtype": dtype,
            "tiling": tiling,
            "options": if family == "mamba2" { "z, D per head, dt_bias, softplus" } else { "z, D, dt_bias, softplus" },
            "rotation_slots": slots,
            "bytes": {
                "state_read": traffic.state,
                "state_written": traffic.state,
                "inputs": traffic.inputs,
                "output": traffic.output,
                "total": bytes,
            },
            "floor_ms_at_copy_rate": bytes as f64 / (self.copy_gbps * 1e9) * 1e3,
            "time_ms": { "median": first.median_ms, "min": first.min_ms, "max": first.max_ms, "samples": first.samples.len() },
            "repeat_median_ms": second.median_ms,
            "burst_per_launch_ms": burst_ms,
            "gbps": gbps,
            "burst_gbps": bytes as f64 / (burst_ms * 1e-3) / 1e9,
            "fraction_of_copy": gbps / self.copy_gbps,
            "kernel": kernel.name,
            "resources": kernel.resources,
            "ptxas": kernel.ptxas,
        })
    }

    fn m2<T: DeviceElement>(
        &mut self,
        batch: usize,
        tiling: m2::DecodeTiling,
    ) -> BenchResult<Value> {
        let (heads, head_dim, d_state, groups) = (80, 64, 128, 1);
        let es = std::mem::size_of::<T>();
        let (bhp, bh, bgn) = (
            batch * heads * head_dim,
            batch * heads,
            batch * groups * d_state,
        );
        let state_len = bhp * d_state;
        let traffic = Traffic {
            state: state_len * 4,
            inputs: (2 * bhp + bh + 2 * bgn) * es + 3 * heads * 4,
            output: bhp * es,
        };
        let slots = rotation_slots(self.l2, traffic.total());
        let gpu = self.gpu;
        let rng = &mut *self.rng;
        let x = gpu.upload(&random_vec::<T>(rng, slots * bhp, -2.0, 2.0))?;
        let z = gpu.upload(&random_vec::<T>(rng, slots * bhp, -2.0, 2.0))?;
        // softplus(dt) ~ 0.02 to 0.2: realistic decays, no underflow to 0.
        let dt = gpu.upload(&random_vec::<T>(rng, slots * bh, -4.0, -1.5))?;
        let b = gpu.upload(&random_vec::<T>(rng, slots * bgn, -2.0, 2.0))?;
        let c = gpu.upload(&random_vec::<T>(rng, slots * bgn, -2.0, 2.0))?;
        let a = gpu.upload(&random_vec::<f32>(rng, slots * heads, -8.0, -0.5))?;
        let d = gpu.upload(&random_vec::<f32>(rng, slots * heads, -1.0, 1.0))?;
        let dt_bias = gpu.upload(&random_vec::<f32>(rng, slots * heads, -0.5, 0.5))?;
        let mut state = gpu.alloc_poisoned::<f32>(slots * state_len)?;
        fill_random(gpu, &mut state, rng)?;
        let mut out = gpu.alloc_poisoned::<T>(slots * bhp)?;
        let kernel = m2::DecodeKernel::<T>::new(gpu, d_state, tiling)?;

        let timings = self.time_rotating(slots, |s| {
            let args = m2::DeviceStepArgs {
                batch,
                heads,
                head_dim,
                d_state,
                groups,
                cache_rows: batch,
                x: x.slice(s * bhp..(s + 1) * bhp),
                dt: dt.slice(s * bh..(s + 1) * bh),
                a: a.slice(s * heads..(s + 1) * heads),
                b: b.slice(s * bgn..(s + 1) * bgn),
                c: c.slice(s * bgn..(s + 1) * bgn),
                d: Some(m2::DeviceDSkip::PerHead(
                    d.slice(s * heads..(s + 1) * heads),
                )),
                z: Some(z.slice(s * bhp..(s + 1) * bhp)),
                dt_bias: Some(dt_bias.slice(s * heads..(s + 1) * heads)),
                dt_softplus: true,
                dt_limit: ssm_core::mamba2::NO_DT_LIMIT,
                state_batch_indices: None,
            };
            m2::launch_decode_step(
                gpu,
                &kernel,
                &args,
                &mut state.slice_mut(s * state_len..(s + 1) * state_len),
                &mut out.slice_mut(s * bhp..(s + 1) * bhp),
            )
        })?;
        check_finite(gpu, &out, "mamba2 output")?;
        Ok(self.record(
            "mamba2",
            json!({ "batch": batch, "heads": heads, "head_dim": head_dim, "d_state": d_state, "groups": groups }),
            T::DTYPE.name(),
            json!({
                "variant": m2::decode_variant(T::DTYPE, d_state, tiling)?.label,
                "rows_per_slot": kernel.rows_per_slot(),
                "warps": tiling.warps,
                "streaming_hints": tiling.streaming_hints,
                "min_blocks_per_sm": tiling.min_blocks_per_sm,
            }),
            kernel.kernel(),
            slots,
            &traffic,
            timings,
        ))
    }

    fn m1<T: DeviceElement>(
        &mut self,
        batch: usize,
        tiling: m1::DecodeTiling,
    ) -> BenchResult<Value> {
        let (d_inner, d_state, groups) = (5120, 16, 1);
        let es = std::mem::size_of::<T>();
        let (bd, bgn, dn) = (batch * d_inner, batch * groups * d_state, d_inner * d_state);
        let state_len = bd * d_state;
        let traffic = Traffic {
            state: state_len * 4,
            inputs: (3 * bd + 2 * bgn) * es + (dn + 2 * d_inner) * 4,
            output: bd * es,
        };
        let slots = rotation_slots(self.l2, traffic.total());
        let gpu = self.gpu;
        let rng = &mut *self.rng;
        let x = gpu.upload(&random_vec::<T>(rng, slots * bd, -2.0, 2.0))?;
        let z = gpu.upload(&random_vec::<T>(rng, slots * bd, -2.0, 2.0))?;
        let dt = gpu.upload(&random_vec::<T>(rng, slots * bd, -4.0, -1.5))?;
        let b = gpu.upload(&random_vec::<T>(rng, slots * bgn, -2.0, 2.0))?;
        let c = gpu.upload(&random_vec::<T>(rng, slots * bgn, -2.0, 2.0))?;
        let a = gpu.upload(&random_vec::<f32>(
            rng,
            slots * d_inner * d_state,
            -16.0,
            -0.5,
        ))?;
        let d = gpu.upload(&random_vec::<f32>(rng, slots * d_inner, -1.0, 1.0))?;
        let dt_bias = gpu.upload(&random_vec::<f32>(rng, slots * d_inner, -0.5, 0.5))?;
        let mut state = gpu.alloc_poisoned::<f32>(slots * state_len)?;
        fill_random(gpu, &mut state, rng)?;
        let mut out = gpu.alloc_poisoned::<T>(slots * bd)?;
        let kernel = m1::DecodeKernel::<T>::new(gpu, d_state, tiling)?;

        let timings = self.time_rotating(slots, |s| {
            let args = m1::DeviceStepArgs {
                batch,
                d_inner,
                d_state,
                groups,
                cache_rows: batch,
                x: x.slice(s * bd..(s + 1) * bd),
                dt: dt.slice(s * bd..(s + 1) * bd),
                a: a.slice(s * dn..(s + 1) * dn),
                b: b.slice(s * bgn..(s + 1) * bgn),
                c: c.slice(s * bgn..(s + 1) * bgn),
                d: Some(d.slice(s * d_inner..(s + 1) * d_inner)),
                z: Some(z.slice(s * bd..(s + 1) * bd)),
                dt_bias: Some(dt_bias.slice(s * d_inner..(s + 1) * d_inner)),
                dt_softplus: true,
                state_batch_indices: None,
            };
            m1::launch_decode_step(
                gpu,
                &kernel,
                &args,
                &mut state.slice_mut(s * state_len..(s + 1) * state_len),
                &mut out.slice_mut(s * bd..(s + 1) * bd),
            )
        })?;
        check_finite(gpu, &out, "mamba1 output")?;
        Ok(self.record(
            "mamba1",
            json!({ "batch": batch, "d_inner": d_inner, "d_state": d_state, "groups": groups }),
            T::DTYPE.name(),
            json!({
                // The label names the effective geometry (register cap and B/C
                // prefetch after the per-dtype rules of m1::DecodeTiling).
                "variant": m1::decode_variant(T::DTYPE, d_state, tiling)?.label,
                "batch_rows": kernel.batch_rows(),
                "warps": tiling.warps,
                "streaming_hints": tiling.streaming_hints,
                "min_blocks_per_sm": tiling.min_blocks_per_sm,
                "bc_prefetch": tiling.bc_prefetch,
            }),
            kernel.kernel(),
            slots,
            &traffic,
            timings,
        ))
    }
}

/// Every rotated output slot was written with finite values (the buffer started
/// as NaN poison), so the timed launches did the work.
fn check_finite<T: DeviceElement>(gpu: &Gpu, out: &CudaSlice<T>, what: &str) -> BenchResult<()> {
    let host = gpu.download(out)?;
    let bad = host.iter().filter(|v| !v.to_f64().is_finite()).count();
    if bad > 0 {
        return Err(BenchError(format!(
            "{what}: {bad} of {} elements not finite after timing",
            host.len()
        )));
    }
    Ok(())
}

fn print_table(records: &[Value]) {
    println!(
        "\n{:<8} {:>5} {:<5} {:<34} {:>10} {:>10} {:>10} {:>9} {:>8} {:>6} {:>5}",
        "family",
        "b",
        "dtype",
        "variant",
        "MB moved",
        "median us",
        "repeat us",
        "GB/s",
        "of copy",
        "burst",
        "regs"
    );
    for r in records {
        println!(
            "{:<8} {:>5} {:<5} {:<34} {:>10.1} {:>10.1} {:>10.1} {:>9.0} {:>7.1}% {:>6.0} {:>5}",
            r["family"].as_str().unwrap_or("?"),
            r["shape"]["batch"],
            r["dtype"].as_str().unwrap_or("?"),
            r["tiling"]["variant"].as_str().unwrap_or("?"),
            r["bytes"]["total"].as_f64().unwrap_or(0.0) / 1e6,
            r["time_ms"]["median"].as_f64().unwrap_or(0.0) * 1e3,
            r["repeat_median_ms"].as_f64().unwrap_or(0.0) * 1e3,
            r["gbps"].as_f64().unwrap_or(0.0),
            r["fraction_of_copy"].as_f64().unwrap_or(0.0) * 100.0,
            r["burst_gbps"].as_f64().unwrap_or(0.0),
            r["resources"]["registers"],
        );
    }
}
