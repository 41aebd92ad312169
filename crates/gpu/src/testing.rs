//! Helpers for tests that need a GPU or NVRTC, so that every such test skips
//! the same loud way on machines without one, and fails when told not to skip.

use crate::{Compiler, Gpu, GpuError};

/// Set to `1` (the device script does) to turn "no GPU" from a skip into a failure.
pub const REQUIRE_GPU_ENV: &str = "SSM_REQUIRE_GPU";
/// Set to `1` to let NVRTC-only tests skip on a machine without NVRTC (CI installs it).
pub const ALLOW_NO_NVRTC_ENV: &str = "SSM_ALLOW_NO_NVRTC";

fn env_flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// The GPU for a test, or `None` after printing `SKIPPED <test>: ...` to stderr
/// when this machine has no usable GPU. Panics (failing the test) when
/// `SSM_REQUIRE_GPU=1` and there is no GPU, or when the GPU stack is present but
/// broken (a driver error is a bug to see, not a reason to skip).
pub fn test_gpu_or_skip(test_name: &str) -> Option<Gpu> {
    decide(
        test_name,
        Gpu::new(0),
        env_flag(REQUIRE_GPU_ENV),
        REQUIRE_GPU_ENV,
    )
}

/// An NVRTC compiler for a test, or `None` after a loud `SKIPPED` line when
/// NVRTC is absent and `SSM_ALLOW_NO_NVRTC=1`. Without that variable a missing
/// NVRTC fails the test: CI installs it (`.ci/install-cuda.sh`).
pub fn test_compiler_or_skip(test_name: &str) -> Option<Compiler> {
    decide(
        test_name,
        Compiler::from_env(),
        !env_flag(ALLOW_NO_NVRTC_ENV),
        ALLOW_NO_NVRTC_ENV,
    )
}

/// Compile `variants` (duplicates by label and defines dropped) on every core,
/// so that a test's launches then load them from the on-disk cache (NVRTC
/// dominates a GPU test's run time otherwise). Panics naming the variant that
/// does not compile.
pub fn precompile(gpu: &Gpu, mut variants: Vec<crate::KernelVariant>) {
    variants.sort_by(|a, b| a.label.cmp(&b.label).then(a.defines.cmp(&b.defines)));
    variants.dedup_by(|a, b| a.label == b.label && a.defines == b.defines);
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let per = variants.len().div_ceil(threads).max(1);
    let compiler = gpu.compiler();
    let arch = gpu.arch();
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for part in variants.chunks(per) {
            s.spawn(move || {
                for v in part {
                    if let Err(e) = compiler.compile(&v.source, &v.defines, arch) {
                        panic!("compiling {}: {e}", v.label);
                    }
                }
            });
        }
    });
    eprintln!(
        "compiled {} modules in {:.1} s",
        variants.len(),
        start.elapsed().as_secs_f64()
    );
}

/// Set to a number to replay a test's random inputs.
pub const TEST_SEED_ENV: &str = "SSM_TEST_SEED";

/// The seed of a test's random inputs: `SSM_TEST_SEED` when set (to replay a
/// run), else fresh from the clock; printed with the test's name, so that a
/// failure can be replayed.
pub fn test_seed(test_name: &str) -> u64 {
    let seed = std::env::var(TEST_SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("{test_name} seed {seed} ({TEST_SEED_ENV}={seed} replays)");
    seed
}

/// Set to `1` (`.ci/run` does) to turn "no host C++ compiler" from a skip into
/// a failure for the kernel-emulation tests.
pub const REQUIRE_CXX_ENV: &str = "SSM_REQUIRE_CXX";

/// The host C++ compiler (`$CXX`, else `g++`) for the tests that run kernels
/// under the warp emulation (kernels/mamba2/ssd_emu.cuh), or `None` after a
/// loud `SKIPPED` line when there is none and `SSM_REQUIRE_CXX` is not `1`.
pub fn test_cxx_or_skip(test_name: &str) -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let works = std::process::Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(cxx);
    }
    if env_flag(REQUIRE_CXX_ENV) {
        panic!("{test_name}: no host C++ compiler (`{cxx}`) and {REQUIRE_CXX_ENV}=1");
    }
    eprintln!(
        "SKIPPED {test_name}: no host C++ compiler (`{cxx} --version` failed); \
         install g++ or set CXX to run the kernel emulation"
    );
    None
}

fn decide<T>(
    test_name: &str,
    found: Result<T, GpuError>,
    must_have: bool,
    variable: &str,
) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(e) if e.is_unavailable() && !must_have => {
            eprintln!("SKIPPED {test_name}: {e} (variable {variable} controls this)");
            None
        }
        Err(e) if e.is_unavailable() => {
            panic!("{test_name}: required but unavailable ({variable}): {e}")
        }
        Err(e) => panic!("{test_name}: GPU stack present but failing: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_only_when_allowed() {
        let missing = || Err::<(), _>(GpuError::NoDevice("none".into()));
        assert_eq!(decide("t", missing(), false, "V"), None);
        assert_eq!(decide("t", Ok(7), true, "V"), Some(7));
        let required = std::panic::catch_unwind(|| decide("t", missing(), true, "V"));
        assert!(required.is_err());
    }

    #[test]
    fn a_broken_stack_fails_even_when_skipping_is_allowed() {
        let broken = std::panic::catch_unwind(|| {
            decide::<()>(
                "t",
                Err(GpuError::Driver("CUDA_ERROR_UNKNOWN".into())),
                false,
                "V",
            )
        });
        assert!(broken.is_err());
    }
}
