//! Fuzzing regressions: every input the fuzzers found failing, as a named test,
//! plus a replay of the committed seed corpora (`fuzz/corpus/<target>/`).
//!
//! A finding in code outside the fuzzing work is kept here as an ignored test
//! with the reason, until its owner fixes it (docs/FUZZING.md lists them);
//! `cargo test -p ssm-verify --test regressions -- --ignored` runs those.
//!
//! More random cases: `SSM_FUZZ_CASES=100000 cargo test --release -p ssm-verify
//! --test regressions random_cases`.

use std::path::PathBuf;

use ssm_verify::fuzz::{case_seed, random_case, replay_corpus, Class, Ctx, Outcome, Target};

fn corpus_dir(target: Target) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target.name())
}

/// Run one target on one input, panicking with the finding.
fn replay(target: Target, bytes: &[u8]) {
    if let Err(f) = target.run(bytes, &Ctx::CPU) {
        panic!("{f}");
    }
}

#[test]
fn seed_corpora_replay_clean() {
    let mut files = 0;
    for target in Target::ALL {
        let dir = corpus_dir(target);
        let (outcome, findings) = replay_corpus(target, &dir, &Ctx::CPU).unwrap();
        let n = ssm_verify::fuzz::corpus_files(&dir).len();
        assert!(n > 0, "no seed corpus in {}", dir.display());
        files += n;
        let report: Vec<String> = findings
            .iter()
            .map(|(path, f)| format!("{}: {f}", path.display()))
            .collect();
        assert!(report.is_empty(), "{}", report.join("\n"));
        eprintln!("{target}: {n} inputs, {outcome:?}");
    }
    eprintln!("{files} corpus inputs replayed");
}

#[test]
fn random_cases_pass_every_target() {
    let cases: u64 = std::env::var("SSM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed = std::env::var("SSM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut outcomes = std::collections::BTreeMap::<Target, Outcome>::new();
    for index in 0..cases {
        let case = case_seed(seed, index);
        let (target, bytes) = random_case(case, &Target::ALL);
        match target.run(&bytes, &Ctx::CPU) {
            Ok(o) => outcomes.entry(target).or_default().absorb(&o),
            Err(f) => panic!("case seed {case} (ssmk fuzz --replay {case}): {f}"),
        }
    }
    for (target, o) in &outcomes {
        eprintln!("{target}: {o:?}");
        if *target != Target::Api {
            assert!(
                o.checked.get(&Class::InModel).copied().unwrap_or(0) > 0,
                "{target}: {o:?}"
            );
        }
    }
}

/// A finding's input: the problem it must still decode to, and the check.
fn regression(target: Target, bytes: &[u8], problem: &str) {
    assert_eq!(
        target.describe(bytes),
        problem,
        "the decoding changed: re-record this input (docs/FUZZING.md)"
    );
    replay(target, bytes);
}

// ---------------------------------------------------------------- the rule itself
//
// Inputs on which the first version of the rule (docs/FUZZING.md) blamed a
// correct implementation: f32 cannot do better there, and the rule now says so.

/// A decay that underflows in f32 (`exp(-150)`, 0 in the port, 7e-66 in f64)
/// multiplies a huge state: the absolute error is the underflow times the state,
/// which the floor must cover (the state bound is an amplification factor).
#[test]
fn step_underflowed_decay_of_a_huge_state_is_within_the_floor() {
    regression(
        Target::Step,
        &[
            0x9e, 0x34, 0x14, 0x96, 0x14, 0x9e, 0xff, 0xff, 0xff, 0xff, 0x9e, 0x0b, 0x25, 0x35,
            0xd0, 0x14, 0xff, 0xff, 0xff, 0x0a, 0x2f, 0x10, 0x87, 0x9e, 0x9e, 0x9e,
        ],
        "m1 step D21 b1 N4 G3 rows1 f16 +z +bias x:Tiny dt:Huge A:VeryNegative C:Tiny state:Huge",
    );
}

/// softplus(-89) = 2e-39 is subnormal in f32 (about 6 significant bits fewer);
/// times A = -1e19 the decay exponent is off by 1e-6 relative, 4e-5 on the state.
/// The rates are an amplification factor of the floor.
#[test]
fn step_subnormal_step_size_times_a_huge_rate_is_within_the_floor() {
    regression(
        Target::Step,
        &[
            0x2c, 0x00, 0x00, 0x00, 0x00, 0xa0, 0xa0, 0xc6, 0x03, 0x9b, 0x69, 0x24, 0x82, 0xef,
            0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef,
            0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef,
            0xef, 0xef, 0xef, 0xef, 0xef, 0xff, 0xff, 0xa0, 0xa0, 0xa0, 0xa0, 0x8e, 0xff, 0xff,
            0xff, 0xff, 0x08,
        ],
        "m1 step D1 b1 N1 G1 rows1 f16 +D +z +bias +softplus x:Tiny dt:Tiny A:VeryNegative B:Tiny C:Tiny state:Tiny state[0]=-2e1 state[0]=-2e1 state[0]=-2e1 state[0]=-2e1 state[0]=-2e1 state[0]=-2e1",
    );
}

/// One step with `dt A = -34.5` on a state of 0.6 and an input of 3e-13: the
/// decayed state (6e-16) and the new input term (5e-16) are the whole output.
/// The port rounds `dt`, `A log2 e` and their product to a few eps32 each, an
/// absolute error of ~1e-5 in the exponent, so the output is off by 1.2e-5
/// relative with every operation correctly rounded. The rule now allows the
/// oracle's own sensitivity to a 4 eps32 shift of the rates (verdict docs).
/// The CI run of 2026-11-23 found the Mamba-2 form of the same thing (`dt'`
/// clamped to 0.1 with a very negative A: final states off by 2.1e-5).
#[test]
fn step_a_decay_of_exp_minus_34_is_judged_by_its_conditioning() {
    regression(
        Target::Step,
        &[
            0x0e, 0x52, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0xc8, 0xc8, 0xc8, 0xff, 0x00,
            0xd1, 0xce, 0x2f, 0x2f, 0x2f, 0x27, 0x2f,
        ],
        "m1 step D1 b3 N1 G1 rows3 f32 +z +bias +softplus x:Tiny A:VeryNegative",
    );
}

/// One chunk of 62 steps with large step sizes (`K = 185`) whose final state
/// nearly cancels: 4.6e-3 from terms whose absolute values add up to 0.43. Each
/// term's decay comes from f32 cumulative sums (relative error up to 4 eps32 K
/// = 8.8e-5 of the *term*), so the state was off by 5.3e-4 relative to itself
/// (5.7e-6 of the terms). The cancellation allowance now carries the K term too.
#[test]
fn ssd_cancelling_state_with_large_log_decays_is_judged_against_its_terms() {
    regression(
        Target::Ssd,
        &[
            0xd4, 0x3d, 0x00, 0x00, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x01, 0x14, 0x4a, 0xff, 0xff,
            0x50, 0x2b, 0x00, 0x27, 0x00, 0x3e, 0x00, 0x00, 0x00, 0x00,
        ],
        "b1 L62 H1 P1 N1 G1 +softplus +D(H,P) +z +s0 varlen1 bigdt f32 chunk 63 cu [0, 62]",
    );
}

/// One step of `dt = 1e20`: the chunk's f32 cumulative log-decay jumps to -1e20
/// and every later step's decay is lost in its rounding, so the chunked port's
/// states are off by 1e19 (the f64 recurrence decays them to ~0). The tolerance
/// budget `4 eps K` is 1e14 here: it bounds nothing, and the problem is out of
/// range for chunked implementations (`Class::bounded_by`).
#[test]
fn ssd_cumulative_log_decay_beyond_f32_is_out_of_range() {
    regression(
        Target::Ssd,
        &[
            0x3b, 0x12, 0xe8, 0xe9, 0xe0, 0xe8, 0xe8, 0x40, 0x00, 0xff, 0x00, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0x0a, 0x9c, 0xb6, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01, 0x1b, 0xe8, 0xe8, 0xff, 0xbf, 0x86, 0x8b, 0x00, 0xff, 0x00, 0x00, 0x14,
            0xff,
        ],
        "b1 L19 H6 P1 N5 G2 +softplus +z +s0 bigdt f32 chunk 20 dt[27]=1e20 s0[0]=0e0 x[20]=0e0 x[0]=0e0 x[0]=0e0",
    );
}

/// B = -3e38 with x tiny: the oracle's `(dt x) B` is finite, but the port forms
/// `B (decay dt)` first, which overflows to -inf (legitimately: any order is
/// fine in exact arithmetic). The envelope bounds every partial product.
#[test]
fn ssd_overflow_that_depends_on_the_evaluation_order_is_out_of_range() {
    regression(
        Target::Ssd,
        &[
            0x0a, 0x01, 0x1b, 0xff, 0x56, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x05, 0xff, 0xff,
            0xff, 0xff, 0x01, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x2b, 0xff, 0xff,
            0xff, 0x23, 0xb2, 0xff, 0xff, 0xff, 0xff, 0x0d, 0x07, 0x0b, 0x00, 0xff, 0x3a, 0x7a,
            0xfb, 0xfb,
        ],
        "b2 L2 H2 P8 N3 G2 +bias +softplus +D(H) +z +s0 bigdt f32 chunk 3 x:Tiny B:Tiny C:Tiny s0:Tiny B[15]=-1e0 C[7]=NaN B[10]=-3e38 s0[0]=0e0 x[0]=0e0",
    );
}

// ---------------------------------------------------------------- fixed findings
//
// Found in ssm-core validation by the API target and fixed there (final states
// are checked with `shape::check_allocatable`; the decode steps' `check_finite`
// covers D and dt_bias). The API target still skips valid problems above 2^20
// output elements, to keep fuzzing fast.

/// With L = 0 no input tensor has a length tied to the batch (Mamba-1) or to
/// P and N (SSD), so validation accepts any size, and the final states
/// `(b, D_in, N)` / `(b, H, P, N)` cannot be allocated: the oracle panicked
/// ("capacity overflow"), the CPU ports tried to allocate (the scan's task list
/// alone has b entries) and got the process killed for memory. Now a typed
/// error from validation (`SsmError::Dimension`).
#[test]
fn huge_dims_with_empty_sequence_are_a_typed_error() {
    use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
    use ssm_core::mamba2::{SsdDims, SsdParams};
    let none: [f32; 0] = [];
    let a = [-1.0f32; 8];
    let scan = SelectiveScanParams::new(
        Mamba1Dims::new(1 << 40, 1, 8, 0),
        &none,
        &none,
        &a,
        BcInput::Constant(&a),
        BcInput::Constant(&a),
    )
    .with_final_states(true);
    assert!(
        scan.validate().is_err(),
        "validate accepts b = 2^40 with L = 0"
    );
    let ssd = SsdParams::new(
        SsdDims::new(1, 0, 1, 1 << 20, 1 << 20, 1),
        &none,
        &none,
        &a[..1],
        &none,
        &none,
    )
    .with_final_states(true);
    assert!(
        ssd.validate().is_err(),
        "validate accepts P = N = 2^20 with L = 0"
    );
}

/// `check_finite` on a decode step checked x, dt, A, B, C and z but not D and
/// dt_bias (the scan and SSD check every input): a NaN there passed validation
/// and reached the output.
#[test]
fn step_check_finite_rejects_nan_in_d_and_dt_bias() {
    use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
    use ssm_core::mamba2::DSkip;
    let v = [0.5f32; 4];
    let nan = [0.5, f32::NAN, 0.5, 0.5];
    let m1 = Mamba1StepParams::new(1, 4, 1, 1, &v, &v, &v, &v[..1], &v[..1]);
    let state = 4;
    for p in [
        Mamba1StepParams {
            d: Some(&nan),
            check_finite: true,
            ..m1
        },
        Mamba1StepParams {
            dt_bias: Some(&nan),
            check_finite: true,
            ..m1
        },
    ] {
        assert!(p.validate(state).is_err(), "{p:?}");
    }
    let m2 = Mamba2StepParams::new(1, 4, 1, 1, 1, &v, &v, &v, &v[..1], &v[..1]);
    for p in [
        Mamba2StepParams {
            d: Some(DSkip::PerHead(&nan)),
            check_finite: true,
            ..m2
        },
        Mamba2StepParams {
            dt_bias: Some(&nan),
            check_finite: true,
            ..m2
        },
    ] {
        assert!(p.validate(state).is_err(), "{p:?}");
    }
}

/// Replay one input file: `SSM_FUZZ_TARGET=step_diff SSM_FUZZ_INPUT=path cargo test
/// -p ssm-verify --test regressions replay_input -- --ignored --nocapture`.
#[test]
#[ignore = "a tool: replays the file named by SSM_FUZZ_INPUT"]
fn replay_input() {
    let path = std::env::var("SSM_FUZZ_INPUT").expect("SSM_FUZZ_INPUT=<file>");
    let name = std::env::var("SSM_FUZZ_TARGET").expect("SSM_FUZZ_TARGET=<target>");
    let target = Target::from_name(&name).expect("a target name");
    let bytes = std::fs::read(&path).expect("a readable input");
    replay(target, &bytes);
}
