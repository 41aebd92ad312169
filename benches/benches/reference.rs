//! criterion: the f64 oracle (Mamba-1 scan, SSD recurrence and quadratic form,
//! decode steps) on small shapes only; it is the correctness reference, timed so
//! that its cost in the test suites is known.
//!
//! `cargo bench -p ssm-benches --bench reference` (add `-- --quick` for a fast pass).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssm_benches::cpu;
use ssm_benches::suite::reference_cases;

fn reference(c: &mut Criterion) {
    for case in reference_cases() {
        let mut group = c.benchmark_group(format!(
            "{}/{}",
            case.implementation(),
            case.problem.op_name()
        ));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(case.problem.tokens()));
        // Verified against the f64 oracle before it is timed (crate::check).
        match cpu::prepare_checked(&case, 1) {
            Ok(mut run) => {
                group.bench_function(
                    BenchmarkId::new(&case.workload, case.problem.dtype()),
                    |b| b.iter(|| run().expect("the oracle ran once during prepare")),
                );
            }
            Err(why) => eprintln!("{why}"),
        }
        group.finish();
    }
}

criterion_group!(benches, reference);
criterion_main!(benches);
