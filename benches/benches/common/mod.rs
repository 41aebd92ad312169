//! What the CPU criterion benches (`reference`, `cpu_ports`) share: the group
//! settings and "verify, then time" for one case.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use ssm_benches::cpu;
use ssm_benches::suite::Case;

/// A group named `name` with the CPU benches' settings (10 samples, 1 s) and
/// the case's tokens as its throughput.
pub fn cpu_group<'c>(
    c: &'c mut Criterion,
    name: String,
    case: &Case,
) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(case.problem.tokens()));
    group
}

/// Time `case` as `id` in `group`, once it is verified against the f64 oracle
/// (crate::check); a case that cannot run or fails the check is reported, not
/// timed. `invalid` is the panic message should a timed call fail.
pub fn bench_checked(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    case: &Case,
    invalid: &str,
) {
    match cpu::prepare_checked(case, 1) {
        Ok(mut run) => {
            group.bench_function(id, |b| b.iter(|| run().expect(invalid)));
        }
        Err(why) => eprintln!("{why}"),
    }
}
