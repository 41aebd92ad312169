//! The card's ceilings, measured once per run on the card in hand: every floor,
//! "% of floor" and the regression gate's fractions use these, so a result is
//! true on whatever card it ran on (a datasheet table is only the fallback when
//! measurement is switched off, and the result set then says so).
//!
//! - **Copy**: `cuMemcpyDtoD` between two buffers of 256 MiB, 1 GiB and 2 GiB
//!   (far past the L2), bytes read plus bytes written per second; the best
//!   median over the sizes is the ceiling.
//! - **MMA**: cuBLAS `GemmEx` with bf16 operands and f32 accumulation on random
//!   data (zeros run faster and would flatter the card), m = n = k = 8192 and
//!   16384, 2mnk flops per call.
//! - **exp2**: `kernels/bench/ceilings.cu`, independent chains of `ex2.approx`
//!   over every SM.
//!
//! Each probe: 3 warm-up calls, then `REPEATS` calls each between its own pair
//! of CUDA events; the median is recorded.

use half::bf16;
use ssm_gpu::cudarc::driver::sys::CUevent_flags;
use ssm_gpu::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ssm_gpu::probes::{CEILINGS_SOURCE, CEILING_EXP2_CHAINS, CEILING_EXP2_ENTRY};
use ssm_gpu::{Gpu, GpuError};
use ssm_telemetry::roofline::{CeilingMeasurement, Ceilings, Limiter};

use crate::inputs::{fill, Dist};

const WARMUP: usize = 3;
const REPEATS: usize = 15;

/// Median device time in ms of `REPEATS` calls of `call`, after `WARMUP` calls.
fn median_ms(gpu: &Gpu, mut call: impl FnMut() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    for _ in 0..WARMUP {
        call()?;
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let events = (0..REPEATS)
        .map(|_| Ok((gpu.ctx().new_event(flags)?, gpu.ctx().new_event(flags)?)))
        .collect::<Result<Vec<_>, GpuError>>()?;
    gpu.synchronize()?;
    for (start, end) in &events {
        start.record(gpu.stream())?;
        call()?;
        end.record(gpu.stream())?;
    }
    gpu.synchronize()?;
    let mut ms = events
        .iter()
        .map(|(s, e)| Ok(f64::from(s.elapsed_ms(e)?)))
        .collect::<Result<Vec<_>, GpuError>>()?;
    ms.sort_by(f64::total_cmp);
    let m = ms[ms.len() / 2];
    if !(m.is_finite() && m > 0.0) {
        return Err(GpuError::InvalidArgument(format!(
            "a ceiling probe timed {m} ms"
        )));
    }
    Ok(m)
}

/// Copy bandwidth (read + write bytes per second) at each buffer size.
pub fn measure_copy(gpu: &Gpu) -> Result<Vec<CeilingMeasurement>, GpuError> {
    let mut out = Vec::new();
    for mib in [256usize, 1024, 2048] {
        let words = mib << 18; // 4-byte words
        let src: CudaSlice<f32> = gpu.upload(&fill::<f32>(words, 11, Dist::Normal))?;
        let mut dst: CudaSlice<f32> = gpu.alloc_poisoned(words)?;
        let ms = median_ms(gpu, || Ok(gpu.stream().memcpy_dtod(&src, &mut dst)?))?;
        let bytes = 2.0 * (words * 4) as f64;
        out.push(CeilingMeasurement {
            unit: Limiter::Bytes,
            method: "cuMemcpyDtoD, CUDA events (read + write bytes)".into(),
            size: format!("{mib} MiB buffers"),
            samples: REPEATS,
            median_per_s: bytes / (ms * 1e-3),
        });
    }
    Ok(out)
}

/// Dense bf16 MMA rate through cuBLAS; `Ok(vec![])` when cuBLAS cannot be loaded.
pub fn measure_mma(gpu: &Gpu) -> Result<Vec<CeilingMeasurement>, GpuError> {
    use ssm_gpu::cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
    // SAFETY: only asks the loader whether libcublas can be opened.
    if !unsafe { ssm_gpu::cudarc::cublas::sys::is_culib_present() } {
        return Ok(Vec::new());
    }
    let blas = CudaBlas::new(gpu.stream().clone())
        .map_err(|e| GpuError::InvalidArgument(format!("cuBLAS: {e:?}")))?;
    let mut out = Vec::new();
    for n in [8192usize, 16384] {
        let a: CudaSlice<bf16> = gpu.upload(&fill::<bf16>(n * n, 21, Dist::Normal))?;
        let b: CudaSlice<bf16> = gpu.upload(&fill::<bf16>(n * n, 22, Dist::Normal))?;
        let mut c: CudaSlice<bf16> = gpu.alloc_poisoned(n * n)?;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: n as i32,
            k: n as i32,
            alpha: bf16::ONE,
            lda: n as i32,
            ldb: n as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        let ms = median_ms(gpu, || {
            // SAFETY: a, b and c each hold n*n elements, the sizes cfg describes.
            unsafe { blas.gemm(cfg, &a, &b, &mut c) }
                .map_err(|e| GpuError::InvalidArgument(format!("cublasGemmEx: {e:?}")))
        })?;
        out.push(CeilingMeasurement {
            unit: Limiter::Mma,
            method: "cublasGemmEx bf16 x bf16 -> bf16, f32 accumulation, random data".into(),
            size: format!("m = n = k = {n}"),
            samples: REPEATS,
            median_per_s: 2.0 * (n as f64).powi(3) / (ms * 1e-3),
        });
    }
    Ok(out)
}

/// MUFU ex2 rate over every SM.
pub fn measure_exp2(gpu: &Gpu) -> Result<Vec<CeilingMeasurement>, GpuError> {
    const THREADS: u32 = 256;
    let chains = CEILING_EXP2_CHAINS;
    let kernel = gpu.kernel(
        &CEILINGS_SOURCE,
        CEILING_EXP2_ENTRY,
        &[("CEILING_CHAINS", chains.to_string())],
    )?;
    let blocks = gpu.multiprocessor_count()? * 8;
    let iters: i64 = 4096;
    let mut sink: CudaSlice<f32> = gpu.alloc_poisoned((blocks * THREADS) as usize)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let seed = 0.0f32;
    let ms = median_ms(gpu, || {
        // SAFETY: `ssm_ceiling_exp2(float* out, float seed, long long iters)` writes
        // one float per thread of the grid, which `sink` holds.
        unsafe {
            gpu.stream()
                .launch_builder(&kernel.func)
                .arg(&mut sink)
                .arg(&seed)
                .arg(&iters)
                .launch(cfg)
        }?;
        Ok(())
    })?;
    let host = gpu.download(&sink)?;
    if host.iter().any(|v| !v.is_finite()) {
        return Err(GpuError::InvalidArgument(
            "the exp2 probe left non-finite values".into(),
        ));
    }
    let exps = f64::from(blocks * THREADS) * iters as f64 * f64::from(chains);
    Ok(vec![CeilingMeasurement {
        unit: Limiter::Exp,
        method: "ex2.approx.ftz.f32 chains (kernels/bench/ceilings.cu)".into(),
        size: format!("{blocks} blocks x {THREADS} threads x {iters} x {chains}"),
        samples: REPEATS,
        median_per_s: exps / (ms * 1e-3),
    }])
}

/// One ceiling probe: its measurements, or none when its library is missing.
type Probe = fn(&Gpu) -> Result<Vec<CeilingMeasurement>, GpuError>;

/// Measure every ceiling on `gpu`. A probe that fails (cuBLAS missing, say)
/// leaves its unit to the datasheet table, and the set's `source` says which.
pub fn measure(gpu: &Gpu) -> (Ceilings, Vec<String>) {
    let mut measurements = Vec::new();
    let mut notes = Vec::new();
    let probes: [(&str, Probe); 3] = [
        ("copy", measure_copy),
        ("bf16 MMA", measure_mma),
        ("exp2", measure_exp2),
    ];
    for (name, probe) in probes {
        match probe(gpu) {
            Ok(m) if m.is_empty() => notes.push(format!(
                "ceiling {name}: not measured (library not loadable); datasheet value used"
            )),
            Ok(m) => measurements.extend(m),
            Err(e) => notes.push(format!(
                "ceiling {name}: measurement failed ({e}); datasheet value used"
            )),
        }
    }
    (Ceilings::measured(gpu.device_name(), measurements), notes)
}
