//! criterion: the CUDA kernels (Mamba-1 scan, SSD, both decode steps, and the
//! runtime's streaming self-test kernel) on docs/DESIGN.md §6's workloads and the
//! sweeps, timed on the device with CUDA events through `iter_custom`: criterion
//! asks for `iters` calls and gets back their device time, so host overheads and
//! clocks never enter the numbers. Throughput is the minimum bytes of a call
//! (criterion's bytes/s is then the useful bandwidth); tokens/s, the roofline
//! fraction, SRAM, NVML and ncu's bytes are in `bench_suite`'s JSON.
//!
//! Without a GPU every benchmark here prints SKIPPED and nothing is measured.
//! Trimmed sweeps by default; `SSM_BENCH_FULL=1` for all of them.
//!
//! On the device machine (no cargo): `target/release/deps/gpu_kernels-<hash> --bench`
//! (built by `cargo bench -p ssm-benches --no-run`; see docs/BENCHMARKS.md).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssm_benches::suite::gpu_cases;
use ssm_benches::{events, gpu};
use ssm_gpu::Gpu;
use ssm_telemetry::traffic::cost;

fn full() -> bool {
    std::env::var("SSM_BENCH_FULL").is_ok_and(|v| v == "1")
}

fn gpu_kernels(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            let n = gpu_cases(!full()).len();
            eprintln!("==================================================================");
            eprintln!("SKIPPED gpu_kernels: no usable GPU ({e})");
            eprintln!("SKIPPED gpu_kernels: {n} CUDA benchmarks were NOT run");
            eprintln!("==================================================================");
            return;
        }
    };
    eprintln!("gpu_kernels on {}", gpu.describe());
    for case in gpu_cases(!full()) {
        let mut group = c.benchmark_group(case.implementation());
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::BytesDecimal(cost(&case.problem).bytes()));
        // Prepared on first use: a benchmark that criterion's filter leaves out
        // compiles and uploads nothing.
        let mut work: Option<Box<dyn gpu::GpuWork>> = None;
        let mut skipped = false;
        let id = BenchmarkId::new(case.workload.clone(), case.problem.dtype());
        group.bench_function(id, |b| {
            if work.is_none() && !skipped {
                // Verified against the f64 oracle before it is timed (crate::check).
                match gpu::prepare(&gpu, &case, 1).and_then(|mut w| Ok((w.verify(&gpu)?, w))) {
                    Ok((v, w)) if v.passed => work = Some(w),
                    Ok((v, _)) => {
                        eprintln!(
                            "FAILED {}: does not match the f64 oracle on {}: rel L2 {:.3e} (budget {:.3e}); not timed",
                            case.id(),
                            v.sampled,
                            v.rel_l2,
                            v.budget
                        );
                        skipped = true;
                    }
                    Err(e) => {
                        eprintln!("SKIPPED {}: {e}", case.id());
                        skipped = true;
                    }
                }
            }
            match work.as_mut() {
                Some(w) => b.iter_custom(|iters| {
                    events::time_batch(&gpu, w.as_mut(), iters)
                        .unwrap_or_else(|e| panic!("{}: launch failed: {e}", case.id()))
                }),
                // Nothing to time (skipped): a no-op keeps the rest of the run going.
                None => b.iter(|| ()),
            }
        });
        group.finish();
        if let Some(w) = &work {
            match w.bad_outputs(&gpu) {
                Ok(0) => {}
                Ok(n) => eprintln!(
                    "WRONG {}: {n} non-finite outputs; its time is meaningless",
                    case.id()
                ),
                Err(e) => eprintln!("WRONG {}: reading the output: {e}", case.id()),
            }
        }
    }
}

criterion_group!(benches, gpu_kernels);
criterion_main!(benches);
