//! criterion: the f32 CPU ports of the kernels (Mamba-1 L-blocked scan, SSD
//! chunked, both decode steps) over the L / N / chunk / dtype sweeps on narrow
//! layers. Trimmed sweeps by default (quick on 2 cores); `SSM_BENCH_FULL=1`
//! runs L from 512 to 65536.
//!
//! `cargo bench -p ssm-benches --bench cpu_ports [-- --quick | --profile-time 5 <filter>]`

mod common;

use common::{bench_checked, cpu_group};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
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
        let mut group = cpu_group(c, group_name, &case);
        let id = BenchmarkId::new(case.problem.label(), case.problem.dtype());
        bench_checked(
            &mut group,
            id,
            &case,
            "the CPU port rejected a valid benchmark input",
        );
        group.finish();
    }
}

criterion_group!(benches, cpu_ports);
criterion_main!(benches);
