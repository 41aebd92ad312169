//! The Mamba-2 decode kernel run on the CPU under the warp emulation of
//! `kernels/mamba2/ssd_emu.cuh` (one fiber per CUDA thread, shuffles through a
//! per-warp mailbox) by `kernels/mamba2/decode_emu_check.cu`, and compared with an
//! f64 step: every tiling the bench compares (`candidates()`), with the exact
//! defines the launcher compiles it with, on shapes that hit partial row tiles,
//! groups, padding rows, an index past the cache and every option. What checks a
//! new tiling's lane layout and index arithmetic without a GPU (the GPU tests'
//! tiling sweep checks them on the device).
//!
//! Needs a host C++20 compiler (`$CXX`, else `g++`). Without one the test skips
//! loudly, unless `SSM_REQUIRE_CXX=1` (set by `.ci/run`), which makes that a
//! failure.

use std::path::PathBuf;
use std::process::Command;

use mamba2_ssd::decode_cuda::{decode_variant, Mamba2Decode};
use ssm_core::DType;
use ssm_gpu::decode::DecodeFamily;

fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../kernels")
        .canonicalize()
        .expect("kernels/")
}

/// `(b, H, P, G, seed, options)` of decode_emu_check: options as its usage says.
const RUNS: [[&str; 6]; 3] = [
    // Every option, D per head-dim index, padding and a bad index, 2 groups,
    // P = 33 (partial row tiles for every tiling).
    ["3", "4", "33", "2", "11", "iezsal"],
    // D per head, no softplus, no bias, no indices.
    ["2", "2", "64", "1", "12", "dz"],
    // One batch row, no options (the b = 1 path), G = H.
    ["1", "3", "16", "3", "13", "-"],
];

fn check(cxx: &str, dtype: DType, emu_dtype: u8, n: usize) {
    let k = kernels_dir();
    let m2 = k.join("mamba2");
    let dir = std::env::temp_dir().join(format!(
        "ssm-decode-emu-{dtype}-n{n}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for tiling in <Mamba2Decode as DecodeFamily>::candidates() {
        let v = decode_variant(dtype, n, tiling).unwrap();
        let exe = dir.join("check");
        let mut cmd = Command::new(cxx);
        cmd.args(["-std=c++20", "-O1", "-w", "-x", "c++"])
            .arg(format!("-I{}", k.display()))
            .arg(format!("-I{}", m2.display()))
            .arg(format!("-DEMU_DTYPE={emu_dtype}"))
            .args(
                v.defines
                    .iter()
                    .map(|(name, value)| format!("-D{name}={value}")),
            )
            .arg(m2.join("decode_emu_check.cu"))
            .arg("-o")
            .arg(&exe);
        let built = cmd.output().unwrap();
        assert!(
            built.status.success(),
            "{}: compiling failed:\n{}",
            v.label,
            String::from_utf8_lossy(&built.stderr)
        );
        for args in RUNS {
            let run = Command::new(&exe).args(args).output().unwrap();
            let stdout = String::from_utf8_lossy(&run.stdout);
            eprintln!("{} ({}): {}", v.label, args.join(" "), stdout.trim());
            assert!(
                run.status.success(),
                "{} ({}): the emulated kernel disagrees with the f64 step:\n{stdout}\n{}",
                v.label,
                args.join(" "),
                String::from_utf8_lossy(&run.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every tiling on each `(dtype, EMU_DTYPE, N)` of `states`; without a host
/// compiler, skips loudly as `test`.
fn emulate(test: &str, states: &[(DType, u8, usize)]) {
    let Some(cxx) = ssm_gpu::test_cxx_or_skip(test) else {
        return;
    };
    for &(dtype, emu_dtype, n) in states {
        check(&cxx, dtype, emu_dtype, n);
    }
}

#[test]
fn every_tiling_matches_f64_bf16_n128() {
    emulate(
        "every_tiling_matches_f64_bf16_n128",
        &[(DType::Bf16, 1, 128)],
    );
}

/// f32 inputs on a state off the fast path (N = 12: 4-float vectors, 1 lane a
/// row, rows capped) and a 64-float row (16 lanes).
#[test]
fn every_tiling_matches_f64_f32_odd_states() {
    emulate(
        "every_tiling_matches_f64_f32_odd_states",
        &[(DType::F32, 0, 12), (DType::F32, 0, 64)],
    );
}

/// f16 inputs on N = 7 (scalar accesses).
#[test]
fn every_tiling_matches_f64_f16_n7() {
    emulate("every_tiling_matches_f64_f16_n7", &[(DType::F16, 2, 7)]);
}
