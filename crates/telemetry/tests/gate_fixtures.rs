//! The regression gate on committed fixture result sets
//! (`tests/fixtures/gate/`, written by `examples/make_gate_fixtures.rs`):
//! the passing set passes, and each planted regression fails on its own kind.

use std::path::PathBuf;

use ssm_telemetry::gate::{compare, GateOptions, ViolationKind};
use ssm_telemetry::ResultSet;

fn fixture(name: &str) -> ResultSet {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gate")
        .join(name);
    ResultSet::read(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn kinds(name: &str, opts: &GateOptions) -> Vec<ViolationKind> {
    let report = compare(&fixture("baseline.json"), &fixture(name), opts);
    eprintln!("{name}:\n{}", report.render());
    report.violations.iter().map(|v| v.kind).collect()
}

#[test]
fn the_baseline_passes_against_itself() {
    assert_eq!(kinds("baseline.json", &GateOptions::default()), []);
}

#[test]
fn noise_inside_the_band_passes() {
    assert_eq!(kinds("pass.json", &GateOptions::default()), []);
}

#[test]
fn each_planted_regression_fails_on_its_kind_alone() {
    for (name, kind) in [
        ("slower.json", ViolationKind::Slower),
        ("more_registers.json", ViolationKind::MoreRegisters),
        ("more_smem.json", ViolationKind::MoreSharedMemory),
        ("spills.json", ViolationKind::Spills),
        ("more_bytes.json", ViolationKind::MoreBytes),
        ("missing.json", ViolationKind::Missing),
    ] {
        assert_eq!(kinds(name, &GateOptions::default()), [kind], "{name}");
    }
}

#[test]
fn thresholds_are_the_stated_ones() {
    // The passing set's decode kernel is 4% slower: a 3% threshold (plus ~1.6%
    // spread) still passes it, a 1% threshold does not.
    let tight = GateOptions {
        time_noise: 0.01,
        ..GateOptions::default()
    };
    assert_eq!(kinds("pass.json", &tight), [ViolationKind::Slower]);
    // Missing results can be allowed explicitly.
    let lenient = GateOptions {
        allow_missing: true,
        ..GateOptions::default()
    };
    assert_eq!(kinds("missing.json", &lenient), []);
}

#[test]
fn a_changed_device_is_not_compared_silently() {
    let base = fixture("baseline.json");
    let mut other = fixture("baseline.json");
    other.device.name = "NVIDIA H200".into();
    let report = compare(&base, &other, &GateOptions::default());
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].kind, ViolationKind::Incomparable);
    let allowed = GateOptions {
        allow_device_change: true,
        ..GateOptions::default()
    };
    assert!(compare(&base, &other, &allowed).passed());
}

#[test]
fn a_changed_problem_under_the_same_id_is_incomparable() {
    let base = fixture("baseline.json");
    let mut other = fixture("baseline.json");
    other.results[0].problem = other.results[0].problem.with_dtype(ssm_core::DType::F32);
    let report = compare(&base, &other, &GateOptions::default());
    assert_eq!(
        report.violations.iter().map(|v| v.kind).collect::<Vec<_>>(),
        [ViolationKind::Incomparable]
    );
}
