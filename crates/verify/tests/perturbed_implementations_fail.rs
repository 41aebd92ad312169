//! The checks can fail: deliberately perturbed implementations are rejected by
//! the same comparisons, budgets and conditioning allowance the property tests use.
//!
//! Each mutant runs the real CPU port on a subtly wrong problem (an option dropped,
//! a step shifted) or perturbs its output slightly; every one must fail on every
//! seed tried. The in-kernel planted bugs of the fuzzing issue build on this.

mod common;

use common::Oracle;
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::mamba2::SsdParams;
use ssm_core::tolerance::{max_window_log_decay, rel_l2_budget, state_budget};
use ssm_core::{DType, ScanOutput};
use ssm_verify::gen::{Mamba1Case, Mamba1Data, SsdCase, SsdData};

type ScanMutant = fn(SelectiveScanParams<'_, f32>, &mut Vec<f32>) -> ScanOutput<f64, f64>;

fn run_scan(p: &SelectiveScanParams<'_, f32>) -> ScanOutput<f64, f64> {
    mamba1_scan::selective_scan(p, mamba1_scan::Backend::Cpu(Default::default()))
        .unwrap()
        .to_f64()
}

fn run_ssd(p: &SsdParams<'_, f32>) -> ScanOutput<f64, f64> {
    mamba2_ssd::ssd_forward(p, mamba2_ssd::Backend::Cpu(Default::default()))
        .unwrap()
        .to_f64()
}

fn scale_out(mut o: ScanOutput<f64, f64>, by: f64) -> ScanOutput<f64, f64> {
    o.out.iter_mut().for_each(|v| *v *= by);
    o
}

const SCAN_MUTANTS: &[(&str, ScanMutant)] = &[
    ("initial state ignored", |p, _| {
        run_scan(&SelectiveScanParams {
            initial_states: None,
            ..p
        })
    }),
    ("D term dropped", |p, _| {
        run_scan(&SelectiveScanParams { d: None, ..p })
    }),
    ("z gate skipped", |p, _| {
        run_scan(&SelectiveScanParams { z: None, ..p })
    }),
    ("softplus skipped", |p, _| {
        run_scan(&SelectiveScanParams {
            delta_softplus: false,
            ..p
        })
    }),
    ("delta bias ignored", |p, _| {
        run_scan(&SelectiveScanParams {
            delta_bias: None,
            ..p
        })
    }),
    ("one step late", |p, scratch| {
        // delta shifted by one step along L (channel-major rows).
        let len = p.dims.seqlen;
        *scratch = p
            .delta
            .chunks(len)
            .flat_map(|row| std::iter::once(row[0]).chain(row[..len - 1].iter().copied()))
            .collect();
        run_scan(&SelectiveScanParams {
            delta: scratch,
            ..p
        })
    }),
    ("output off by 1e-4 relative", |p, _| {
        scale_out(run_scan(&p), 1.0 + 1e-4)
    }),
];

type SsdMutant = fn(SsdParams<'_, f32>) -> ScanOutput<f64, f64>;

const SSD_MUTANTS: &[(&str, SsdMutant)] = &[
    ("initial state ignored", |p| {
        run_ssd(&SsdParams {
            initial_states: None,
            ..p
        })
    }),
    ("D term dropped", |p| run_ssd(&SsdParams { d: None, ..p })),
    ("z gate skipped", |p| run_ssd(&SsdParams { z: None, ..p })),
    ("softplus skipped", |p| {
        run_ssd(&SsdParams {
            dt_softplus: false,
            ..p
        })
    }),
    ("dt bias ignored", |p| {
        run_ssd(&SsdParams { dt_bias: None, ..p })
    }),
    ("dt limit ignored", |p| {
        run_ssd(&SsdParams {
            dt_limit: (0.0, f32::INFINITY),
            ..p
        })
    }),
    ("output off by 1e-4 relative", |p| {
        scale_out(run_ssd(&p), 1.0 + 1e-4)
    }),
];

#[test]
fn every_scan_mutant_fails_and_the_real_port_passes() {
    for seed in 0..8 {
        let mut case = Mamba1Case::plain(2, 8, 6, 48).all_options();
        // Step sizes near the top of the dt_limit clamp used by the SSD mutants.
        case.dt = ssm_verify::gen::DtRegime::Large;
        let data = Mamba1Data::generate(&case, seed);
        let inputs = data.inputs::<f32>();
        let oracle = Oracle::scan(inputs.params());
        let (out_budget, st_budget) = (rel_l2_budget(DType::F32, 0.0), state_budget(0.0));
        let fails = |got: &ScanOutput<f64, f64>| {
            (oracle.assert_matches("scan", got, out_budget, st_budget)).is_err()
        };
        assert!(
            !fails(&run_scan(&inputs.params())),
            "the unmodified port must pass"
        );
        for (name, mutant) in SCAN_MUTANTS {
            let got = mutant(inputs.params(), &mut Vec::new());
            assert!(fails(&got), "scan mutant `{name}` passed on seed {seed}");
        }
    }
}

#[test]
fn every_ssd_mutant_fails_and_the_real_port_passes() {
    for seed in 0..8 {
        let mut case = SsdCase::plain(2, 40, 4, 4, 6, 2).all_options();
        // Typical step sizes keep K small, so the f32 budget stays near 1e-5; a low
        // dt_max makes the clamp active so that ignoring it shows.
        case.dt_limit = Some((0.001, 0.05));
        let data = SsdData::generate(&case, seed);
        let inputs = data.inputs::<f32>();
        let k = max_window_log_decay(&data.log_decays(&inputs), 40, 256);
        let oracle = Oracle::ssd(inputs.params(), k);
        let (out_budget, st_budget) = (rel_l2_budget(DType::F32, k), state_budget(k));
        let fails = |got: &ScanOutput<f64, f64>| {
            (oracle.assert_matches("ssd", got, out_budget, st_budget)).is_err()
        };
        assert!(
            !fails(&run_ssd(&inputs.params())),
            "the unmodified port must pass"
        );
        for (name, mutant) in SSD_MUTANTS {
            assert!(
                fails(&mutant(inputs.params())),
                "ssd mutant `{name}` passed on seed {seed}"
            );
        }
    }
}
