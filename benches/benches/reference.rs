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
        match cpu::prepare(&case, 1) {
            Ok(work) => {
                // Verified against the f64 oracle before it is timed (crate::check).
                match (work.check)() {
                    Ok(Some(v)) if !v.passed => {
                        eprintln!(
                            "FAILED {}: does not match the f64 oracle on {}: rel L2 {:.3e} (budget {:.3e}); not timed",
                            case.id(),
                            v.sampled,
                            v.rel_l2,
                            v.budget
                        );
                        group.finish();
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("FAILED {}: verification: {e}", case.id());
                        group.finish();
                        continue;
                    }
                }
                let mut run = work.run;
                group.bench_function(
                    BenchmarkId::new(&case.workload, case.problem.dtype()),
                    |b| b.iter(|| run().expect("the oracle ran once during prepare")),
                );
            }
            Err(e) => eprintln!("SKIPPED {}: {e}", case.id()),
        }
        group.finish();
    }
}

criterion_group!(benches, reference);
criterion_main!(benches);
