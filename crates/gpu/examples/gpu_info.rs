//! Print, as JSON, what the GPU runtime sees on this machine: the kernel-source
//! hash baked in at build time and that of the sources it would compile now,
//! NVRTC and the CUDA headers it found, and the device (or why there is none).
//!
//! `gpu_info --hash` prints only the build-time `KERNELS_HASH` (used by
//! `ci/device-prepare.sh` for the manifest). Exits 1 when no GPU is usable and
//! `SSM_REQUIRE_GPU=1`.

use serde_json::json;
use ssm_gpu::{Compiler, Gpu, SourceRoot};

fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "--hash") {
        println!("{}", ssm_gpu::KERNELS_HASH);
        return std::process::ExitCode::SUCCESS;
    }
    let root = SourceRoot::from_env();
    let compiler = match Compiler::from_env() {
        Ok(c) => json!({
            "describe": c.describe(),
            "nvrtc": c.nvrtc(),
            "include_dir": c.include_dir(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let (device, have_gpu) = match Gpu::new(0) {
        Ok(gpu) => {
            let attribute = |r: Result<u32, ssm_gpu::GpuError>| r.ok();
            (
                json!({
                    "name": gpu.device_name(),
                    "compute_capability": gpu.compute_capability(),
                    "arch": gpu.arch(),
                    "multiprocessors": attribute(gpu.multiprocessor_count()),
                    "l2_cache_bytes": attribute(gpu.l2_cache_bytes()),
                    "max_smem_per_block_optin": attribute(gpu.max_smem_per_block_optin()),
                }),
                true,
            )
        }
        Err(e) => (json!({ "error": e.to_string() }), false),
    };
    let info = json!({
        "kernels_hash_built": ssm_gpu::KERNELS_HASH,
        "kernel_sources": root.describe(),
        "kernels_hash_sources": root.kernels_hash().unwrap_or_else(|e| format!("error: {e}")),
        "compiler": compiler,
        "device": device,
    });
    println!("{info:#}");
    let required = std::env::var(ssm_gpu::testing::REQUIRE_GPU_ENV).is_ok_and(|v| v == "1");
    if required && !have_gpu {
        eprintln!(
            "gpu_info: {}=1 but no GPU is usable",
            ssm_gpu::testing::REQUIRE_GPU_ENV
        );
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
