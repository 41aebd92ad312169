//! `ssmk verify ssd|scan|step --shape ...` run as a user runs them (the built
//! binary, CPU implementations): issue 13's P = 64, N = 96 bf16 problem and the
//! other families pass against the f64 oracle; mistyped shapes, options and kernel
//! options are usage errors (exit 2) that list what is valid.

use std::process::{Command, Output};

/// Run `ssmk` with the words of `line` as its arguments.
fn ssmk(line: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssmk"))
        .args(line.split_whitespace())
        // No GPU is needed or used: only CPU implementations are asked for.
        .env("SSM_ALLOW_NO_NVRTC", "1")
        .output()
        .expect("running the ssmk binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a verification that must pass; returns its output.
fn passes(line: &str) -> String {
    let o = ssmk(line);
    let t = text(&o);
    assert!(o.status.success(), "ssmk {line}:\n{t}");
    assert!(t.contains("PASS") && !t.contains("FAIL"), "{t}");
    t
}

/// Run a command that must be a usage error (exit 2) whose output contains
/// every string of `expect`.
fn usage_error(line: &str, expect: &[&str]) {
    let o = ssmk(line);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "ssmk {line}:\n{t}");
    for e in expect {
        assert!(t.contains(e), "ssmk {line}: missing {e:?} in\n{t}");
    }
}

#[test]
fn issue_13_ssd_shape_passes_on_the_cpu() {
    let t = passes("verify ssd --shape b=2,L=4097,H=24,P=64,N=96,G=3 --options all --dtype bf16 --impl cpu --chunk 128 --seed 7");
    assert!(t.contains("ssd cpu chunked/128"), "{t}");
    assert!(t.contains("b2 L4097 H24 P64 N96 G3"), "{t}");
    assert!(t.contains("1 rows, 1 passed, 0 failed"), "{t}");
}

#[test]
fn scan_and_both_steps_pass_on_the_cpu() {
    let t = passes("verify --seed 3 scan --shape b=2,D=48,N=96,L=301,G=2 --dtype f16 --impl cpu --block-len 64");
    assert!(
        t.contains("m1 cpu blocked/64") && t.contains("b2 D48 N96 L301"),
        "{t}"
    );
    passes("verify scan --shape b=1,D=8,N=5,L=40,G=const --options z,softplus --impl cpu");
    let t =
        passes("verify step --family m1 --shape b=3,D=40,N=96 --dtype bf16 --impl cpu --indexed 2");
    assert!(t.contains("m1 step cpu"), "{t}");
    let t = passes("verify step --family m2 --shape b=2,H=6,P=64,N=96,G=3 --options none --dtype f32 --impl cpu");
    assert!(
        t.contains("m2 step cpu") && t.contains("H6 P64 N96 G3"),
        "{t}"
    );
    // The quadratic form joins as a second f64 implementation.
    let t = passes("verify ssd --shape b=1,L=100,H=2,P=3,N=5 --options z,Dp,s0,final --impl cpu,quadratic --chunk 64");
    assert!(
        t.contains("ssd quadratic f64") && t.contains("2 rows, 2 passed"),
        "{t}"
    );
}

#[test]
fn mistakes_are_usage_errors_that_list_the_valid_choices() {
    usage_error(
        "verify ssd --shape b=2,L=9,H=2,P=4,N=8,Q=64 --impl cpu",
        &["unknown key `Q`", "b, L, H, P, N, G (default 1)"],
    );
    usage_error(
        "verify ssd --shape b=2,L=9,H=2,P=4,N=8 --impl cpu --kernel-opt stage=2",
        &[
            "unknown key `stage`",
            "kernel, stages, segments, shared_cb, warps, y_cols",
        ],
    );
    usage_error(
        "verify scan --shape b=1,D=8,N=4,L=9 --options s0 --impl cpu",
        &["unknown option `s0`", "z, D, bias, softplus, h0, final"],
    );
    usage_error(
        "verify step --family m1 --shape b=1,D=8,N=4 --impl cpu,triton",
        &["unknown implementation `triton`", "cpu, cuda"],
    );
    usage_error(
        "verify ssd --shape b=1,L=9,H=2,P=4,N=8 --impl cuda --gpu off",
        &["no implementation left to verify"],
    );
}

/// A fuzz case's command replays it: `--fuzz-case` with another shape is refused
/// with the case's own command, and that command runs the fuzz target's checks on
/// the exact inputs (the command `ssmk fuzz` prints with a finding).
#[test]
fn a_fuzz_case_replays_through_verify() {
    let mut command = None;
    for case in 0..64u64 {
        let o = ssmk(&format!(
            "verify ssd --shape b=1,L=1,H=1,P=1,N=1 --options none --impl cpu --fuzz-case {case}"
        ));
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        if let Some(i) = t.find("its command is:") {
            let line = t[i..].lines().nth(1).unwrap().trim();
            command = Some(line.trim_start_matches("ssmk ").to_string());
            break;
        }
        assert!(t.contains("replay it with `ssmk fuzz --replay"), "{t}");
    }
    let cmd = command.expect("an SSD case among the first 64 case seeds");
    let o = ssmk(&format!("{cmd} --gpu off --impl cpu"));
    let t = text(&o);
    assert!(
        t.contains("replaying fuzz case") && t.contains("PASS"),
        "ssmk {cmd}:\n{t}"
    );
    assert!(o.status.success(), "ssmk {cmd}:\n{t}");
}

/// `ssmk bench --op ... --shape ...` times a shape of the user's through the one
/// harness: checked against the oracle first, then timed, with its floor. Without a
/// GPU it runs the CPU port (and says the CUDA kernels were not run).
#[test]
fn bench_times_a_user_shape_after_verifying_it() {
    let o = ssmk("bench --op ssd --shape b=1,L=70,H=2,P=8,N=96,G=1 --options D,bias,softplus,final --dtype bf16 --min-time-ms 5");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("mamba2-ssd.cpu/custom/bf16"), "{t}");
    assert!(t.contains("verified") && t.contains("of floor"), "{t}");
    let o = ssmk("bench --op scan --shape b=1,D=8,N=4");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("missing L"), "{}", text(&o));
}

/// `--backward` verifies every gradient of the CPU backward against the f64
/// adjoint on the user's shape (final states included, so `d_final_states` is
/// drawn too); a CUDA-only SSD backward is refused by name (none in this build),
/// and a bad shape is the same usage error as the forward's.
#[test]
fn backward_verifies_every_gradient_on_the_cpu() {
    let t = passes("verify ssd --shape b=2,L=70,H=4,P=8,N=12,G=2 --options all --dtype bf16 --impl cpu --chunk 64 --seed 4 --backward");
    assert!(t.contains("ssd cpu chunked-bwd/64"), "{t}");
    for g in ["dx ", "ddt ", "dA ", "dB ", "dC ", "dinitial_states"] {
        assert!(t.contains(g), "missing gradient {g}:\n{t}");
    }
    assert!(t.contains("+fs") && t.contains("0 failed"), "{t}");
    let t = passes(
        "verify scan --shape b=2,D=6,N=8,L=45,G=const --dtype f16 --block-len 16 --backward",
    );
    assert!(
        t.contains("m1 cpu blocked-bwd/16") && t.contains("du "),
        "{t}"
    );
    // The default `--impl cpu,cuda` without a GPU verifies the CPU and says so.
    assert!(t.contains("NO GPU: --impl cuda is NOT verified"), "{t}");
    usage_error(
        "verify ssd --shape b=1,L=9,H=2,P=4,N=8 --impl cuda --backward",
        &["SSD's CUDA backward is not available in this build"],
    );
    usage_error(
        "verify scan --shape b=1,D=4,N=4,L=9 --impl cuda --backward --gpu off",
        &["no implementation left to verify"],
    );
    usage_error(
        "verify ssd --shape b=1,L=9,H=2,N=8 --backward",
        &["missing P"],
    );
    usage_error(
        "verify ssd --shape b=1,L=9,H=2,P=4,N=8 --impl quadratic --backward",
        &["`quadratic` has no backward"],
    );
}

/// `ssmk fuzz --shape` fuzzes data, options, dtype and chunk at one shape (the
/// family's forward and backward targets), and refuses a target that draws its
/// own shapes or a shape of neither family.
#[test]
fn fuzz_at_a_fixed_shape() {
    let o = ssmk("fuzz --shape b=2,L=70,H=4,P=8,N=12,G=2 --cases 8 --seed 9 --gpu off");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("targets ssd_diff,ssd_bwd_diff") && t.contains("no finding in 8 cases"),
        "{t}"
    );
    let o = ssmk("fuzz --shape b=1,D=6,N=4,L=33,G=const --targets scan_diff,scan_bwd_diff --cases 6 --gpu off");
    assert!(o.status.success(), "{}", text(&o));
    usage_error(
        "fuzz --shape b=1,L=9,H=2,P=4,N=8 --targets step_diff --gpu off",
        &["step_diff does not take this --shape"],
    );
    usage_error(
        "fuzz --shape b=1,L=9,H=2 --gpu off",
        &["neither an SSD nor a scan shape"],
    );
}
