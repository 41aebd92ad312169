//! criterion: the f32 CPU ports of the kernels (Mamba-1 L-blocked scan, SSD
//! chunked, both decode steps) over the L / N / chunk / dtype sweeps on narrow
//! layers. Trimmed sweeps by default (quick on 2 cores); `SSM_BENCH_FULL=1`
//! runs L from 512 to 65536.
//!
//! `cargo bench -p ssm-benches --bench cpu_ports [-- --quick | --profile-time 5 <filter>]`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssm_benches::cpu;
use ssm_benches::suite::cpu_cases;

fn full() -> bool {
    std::env::var("SSM_BENCH_FULL").is_ok_and(|v| v == "1")
}

fn cpu_ports(c: &mut Criterion) {
    for case in cpu_cases(!full()) {
        let group_name = format!(
            "{}/{}",
            case.implementation(),
            case.workload.split('/').next().unwrap_or("")
        );
        let mut group = c.benchmark_group(group_name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(case.problem.tokens()));
        // Verified against the f64 oracle before it is timed (crate::check).
        match cpu::prepare_checked(&case, 1) {
            Ok(mut run) => {
                let id = BenchmarkId::new(case.problem.label(), case.problem.dtype());
                group.bench_function(id, |b| {
                    b.iter(|| run().expect("the CPU port rejected a valid benchmark input"))
                });
            }
            Err(why) => eprintln!("{why}"),
        }
        group.finish();
    }
}

criterion_group!(benches, cpu_ports);
criterion_main!(benches);
