//! The ncu CSV parser on fixtures written in ncu's documented `--csv` layouts
//! (details page with base and auto-scaled units, raw page with a units row),
//! and the attachment of measured bytes to results through a manifest.

use std::path::PathBuf;

use ssm_telemetry::ncu::{self, DramBytes, ManifestEntry, NcuLaunch};
use ssm_telemetry::problem::{Problem, StreamShape};
use ssm_telemetry::record::{
    DeviceInfo, KernelRecord, Measurement, ResultSet, RunInfo, TimingMethod, TimingStats,
};
use ssm_telemetry::workloads::reference_workload;
use ssm_telemetry::{BenchResult, Ceilings};

fn read(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ncu")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first launch of a details page has entry name `entry` and reads and
/// writes these DRAM bytes.
fn assert_first_launch(launches: &[NcuLaunch], entry: &str, read: u64, write: u64) {
    assert_eq!(launches[0].entry_name(), entry);
    assert_eq!(launches[0].dram(), Some(DramBytes { read, write }));
}

#[test]
fn details_page_with_base_units() {
    let launches = ncu::parse_csv(&read("details_base_units.csv"), "fixture").unwrap();
    assert_eq!(launches.len(), 3);
    assert_first_launch(&launches, "ssm_selftest_axpy", 402_667_520, 268_439_552);
    let ms = launches[0].duration_ms().unwrap();
    assert!((ms - 0.236416).abs() < 1e-12, "{ms}");
    assert_eq!(
        launches[1].dram().unwrap().total(),
        676_412_160 + 673_710_080
    );
    // A metric ncu could not collect ("n/a") leaves the launch without DRAM bytes.
    assert_eq!(launches[2].dram(), None);
}

#[test]
fn details_page_with_scaled_units_and_a_cpp_kernel_name() {
    let launches = ncu::parse_csv(&read("details_auto_units.csv"), "fixture").unwrap();
    assert_eq!(launches.len(), 1);
    let entry = "ssd_chunk_fwd<__nv_bfloat16, 64>";
    assert_first_launch(&launches, entry, 352_310_000, 168_490_000);
    assert!((launches[0].duration_ms().unwrap() - 0.23162).abs() < 1e-12);
}

#[test]
fn raw_page_with_a_units_row() {
    let launches = ncu::parse_csv(&read("raw_page.csv"), "fixture").unwrap();
    assert_eq!(launches.len(), 2);
    assert_eq!(launches[1].id, 1);
    assert_eq!(launches[1].dram().unwrap().read, 402_665_472);
    assert!((launches[1].duration_ms().unwrap() - 0.235008).abs() < 1e-12);
}

const H100: &str = "NVIDIA H100 80GB HBM3";

fn result(implementation: &str, workload: &str, problem: Problem, kernel: &str) -> BenchResult {
    let timing = TimingStats::from_samples(TimingMethod::CudaEvents, &[0.25, 0.24, 0.26]).unwrap();
    let kernels = vec![KernelRecord::named(kernel)];
    BenchResult::new(
        Measurement::forward(implementation, workload, problem, timing, kernels),
        &Ceilings::datasheet(H100),
    )
}

/// A result of the self-test's axpy (6 bytes read and 4 written per element
/// of 2^26) that launches `kernel`.
fn axpy_result(workload: &str, kernel: &str) -> BenchResult {
    let axpy = Problem::Stream(StreamShape {
        elements: 1 << 26,
        read_bytes_per_element: 6,
        write_bytes_per_element: 4,
        flops_per_element: 2,
    });
    result("selftest.cuda", workload, axpy, kernel)
}

fn empty_set() -> ResultSet {
    ResultSet::new(
        RunInfo::default(),
        DeviceInfo::default(),
        &Ceilings::datasheet(H100),
    )
}

fn manifest(entries: &[(&str, &[&str])]) -> Vec<ManifestEntry> {
    entries
        .iter()
        .map(|(id, kernels)| ManifestEntry {
            result_id: id.to_string(),
            kernels: kernels.iter().map(|k| k.to_string()).collect(),
        })
        .collect()
}

#[test]
fn measured_bytes_are_attached_beside_the_model() {
    let m2 = reference_workload("M2-decode").unwrap();
    let m1 = reference_workload("M1-decode").unwrap();
    let mut set = empty_set();
    set.results.push(axpy_result("stream", "ssm_selftest_axpy"));
    set.results.push(result(
        "mamba2-ssd.decode.cuda",
        m2.name,
        m2.problem,
        "mamba2_decode_bf16",
    ));
    set.results.push(result(
        "mamba1-scan.decode.cuda",
        m1.name,
        m1.problem,
        "mamba1_decode_bf16",
    ));
    let ids: Vec<String> = set.results.iter().map(|r| r.id.clone()).collect();
    let launches = ncu::parse_csv(&read("details_base_units.csv"), "fixture").unwrap();
    let m = manifest(&[
        (&ids[0], &["ssm_selftest_axpy"]),
        (&ids[1], &["mamba2_decode_bf16"]),
        (&ids[2], &["mamba1_decode_bf16"]),
    ]);
    assert_eq!(ncu::attach(&mut set, &launches, &m).unwrap(), 3);
    let ratio = set.results[0].hbm.measured_over_model.unwrap();
    // 402.7 MB read + 268.4 MB written against 6 + 4 bytes per element of 2^26.
    assert!((ratio - (402_667_520.0 + 268_439_552.0) / (10.0 * (1u64 << 26) as f64)).abs() < 1e-12);
    assert!(set.results[1].hbm.measured_over_model.unwrap() > 1.0);
    assert_eq!(
        set.results[2].measured_bytes(),
        None,
        "n/a read bytes: no total"
    );

    // A manifest that does not describe the profiled run attaches nothing.
    let wrong_order = manifest(&[
        (&ids[1], &["mamba2_decode_bf16"]),
        (&ids[0], &["ssm_selftest_axpy"]),
        (&ids[2], &["mamba1_decode_bf16"]),
    ]);
    assert!(ncu::attach(&mut set.clone(), &launches, &wrong_order).is_err());
    let too_short = manifest(&[(&ids[0], &["ssm_selftest_axpy"])]);
    assert!(ncu::attach(&mut set.clone(), &launches, &too_short).is_err());
}

#[test]
fn repeated_launches_of_one_kernel_add_up() {
    let launches = ncu::parse_csv(&read("raw_page.csv"), "fixture").unwrap();
    let mut set = empty_set();
    set.results
        .push(axpy_result("two-launches", "ssm_selftest_axpy"));
    let id = set.results[0].id.clone();
    let m = manifest(&[(&id, &["ssm_selftest_axpy", "ssm_selftest_axpy"])]);
    ncu::attach(&mut set, &launches, &m).unwrap();
    assert_eq!(
        set.results[0].measured_bytes(),
        Some(402_667_520 + 268_439_552 + 402_665_472 + 268_437_504)
    );
}

#[test]
fn one_entry_point_in_two_roles_pairs_by_launch_order() {
    // SSD launches `ssd_fused_fwd` twice per call (state-only prepass, then the
    // main pass); the runner records them as `ssd_fused_fwd#prepass` and
    // `ssd_fused_fwd`, and each gets its own launch's bytes.
    let launches = ncu::parse_csv(&read("raw_page.csv"), "fixture").unwrap();
    let mut set = empty_set();
    let mut r = axpy_result("two-roles", "ssm_selftest_axpy#prepass");
    r.kernels.push(KernelRecord::named("ssm_selftest_axpy"));
    set.results.push(r);
    let id = set.results[0].id.clone();
    let m = manifest(&[(&id, &["ssm_selftest_axpy", "ssm_selftest_axpy"])]);
    ncu::attach(&mut set, &launches, &m).unwrap();
    let k = &set.results[0].kernels;
    assert_eq!(k[0].dram.unwrap().read, 402_667_520);
    assert_eq!(k[1].dram.unwrap().read, 402_665_472);
    assert_eq!(
        set.results[0].measured_bytes(),
        Some(402_667_520 + 268_439_552 + 402_665_472 + 268_437_504)
    );
}
