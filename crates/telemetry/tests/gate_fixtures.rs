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

#[test]
fn without_a_baseline_argument_the_new_sets_device_picks_it() {
    use ssm_telemetry::cli::{gate_baseline, GateArgs};
    let dir = std::env::temp_dir().join(format!("ssm-gate-baselines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = fixture("baseline.json");
    base.write(&dir.join("nvidia-h100-80gb-hbm3.json")).unwrap();
    let args = GateArgs {
        baseline: None,
        baselines_dir: dir.clone(),
        new: PathBuf::from("unused"),
        noise: 0.05,
        bytes_tolerance: 0.02,
        allow_missing: false,
        allow_device_change: false,
        json: None,
    };
    let (path, picked) = gate_baseline(&args, &fixture("pass.json")).unwrap();
    assert_eq!(path, dir.join("nvidia-h100-80gb-hbm3.json"));
    assert_eq!(picked, base);
    // A card without a baseline is an error naming the card and the file expected.
    let mut h200 = fixture("pass.json");
    h200.device.name = "NVIDIA H200".into();
    let e = gate_baseline(&args, &h200).unwrap_err().to_string();
    assert!(
        e.contains("`NVIDIA H200`") && e.contains("nvidia-h200.json"),
        "{e}"
    );
    // --baseline still wins.
    let explicit = GateArgs {
        baseline: Some(dir.join("nvidia-h100-80gb-hbm3.json")),
        ..args
    };
    assert!(gate_baseline(&explicit, &h200).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_verification_fails_and_peers_only_make_notes() {
    use ssm_telemetry::record::{TimingMethod, Verification};
    let base = fixture("baseline.json");
    let mut new = fixture("baseline.json");
    new.results[0].verification = Some(Verification {
        reference: "f64 oracle".into(),
        sampled: "all".into(),
        rel_l2: 0.1,
        max_abs: 1.0,
        budget: 4e-3,
        state_rel_l2: None,
        state_budget: None,
        passed: false,
    });
    let report = compare(&base, &new, &GateOptions::default());
    assert_eq!(
        report.violations.iter().map(|v| v.kind).collect::<Vec<_>>(),
        [ViolationKind::FailedVerification]
    );
    // A peer twice as slow in the new set, and a peer gone: notes, not regressions.
    let mut base = fixture("baseline.json");
    let mut peer = base.results[0].clone();
    peer.implementation = "mamba_ssm.triton.selective_state_update".into();
    peer.id = "mamba_ssm.triton.selective_state_update/M2-decode/bf16".into();
    peer.timing.method = TimingMethod::TritonDoBench;
    let mut gone = peer.clone();
    gone.id = "fla.x/M2-decode/bf16".into();
    base.results.push(peer.clone());
    base.results.push(gone);
    let mut new = fixture("baseline.json");
    peer.timing.median_ms *= 2.0;
    new.results.push(peer);
    let report = compare(&base, &new, &GateOptions::default());
    assert!(report.passed(), "{}", report.render());
    assert!(report.notes.iter().any(|n| n.contains("peer median")));
    assert!(report
        .notes
        .iter()
        .any(|n| n.starts_with("fla.x/M2-decode/bf16")));
}
