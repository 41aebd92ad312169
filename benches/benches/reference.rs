//! criterion: the f64 oracle (Mamba-1 scan, SSD recurrence and quadratic form,
//! decode steps) on small shapes only; it is the correctness reference, timed so
//! that its cost in the test suites is known.
//!
//! `cargo bench -p ssm-benches --bench reference` (add `-- --quick` for a fast pass).

mod common;

use common::{bench_checked, cpu_group};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ssm_benches::suite::reference_cases;

fn reference(c: &mut Criterion) {
    for case in reference_cases() {
        let name = format!("{}/{}", case.implementation(), case.problem.op_name());
        let mut group = cpu_group(c, name, &case);
        let id = BenchmarkId::new(&case.workload, case.problem.dtype());
        bench_checked(&mut group, id, &case, "the oracle ran once during prepare");
        group.finish();
    }
}

criterion_group!(benches, reference);
criterion_main!(benches);
