//! The runtime on a real GPU: compile, load, launch, poison, download, time and
//! read attributes of the self-test kernels. Skips loudly without a GPU, fails
//! without one when SSM_REQUIRE_GPU=1 (the device script sets it).

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;
use ssm_gpu::selftest::{selftest_variants, BLOCK_SUM_THREADS};
use ssm_gpu::{test_gpu_or_skip, DeviceElement, GpuError};

#[test]
fn gpu_compiles_launches_times_and_reads_attributes() -> Result<(), GpuError> {
    let Some(gpu) = test_gpu_or_skip("gpu_compiles_launches_times_and_reads_attributes") else {
        return Ok(());
    };
    eprintln!("device: {}", gpu.describe());
    eprintln!("kernels hash: {}", ssm_gpu::KERNELS_HASH);
    let variants = selftest_variants();

    // axpy: out = 2 x + y over a size that is not a multiple of the block.
    let axpy = gpu.kernel_variant(&variants[0])?;
    let n: usize = 1_000_003;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    let y: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i * 104_729) % 97) as f32 / 8.0))
        .collect();
    let x_dev = gpu.upload(&x)?;
    let y_dev = gpu.upload(&y)?;
    let mut out = gpu.alloc_poisoned::<f32>(n)?;
    assert!(gpu
        .download(&out)?
        .iter()
        .all(|v| v.to_bits() == f32::POISON.to_bits()));
    let cfg = LaunchConfig {
        grid_dim: (264, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let n_arg = n as i64;
    let launch_axpy = |out: &mut cudarc::driver::CudaSlice<f32>| -> Result<(), GpuError> {
        // SAFETY: argument types and order match ssm_selftest_axpy; buffers hold n elements.
        unsafe {
            gpu.stream()
                .launch_builder(&axpy.func)
                .arg(out)
                .arg(&x_dev)
                .arg(&y_dev)
                .arg(&n_arg)
                .launch(cfg)
        }?;
        Ok(())
    };
    launch_axpy(&mut out)?;
    let got = gpu.download(&out)?;
    let mismatches = (0..n)
        .filter(|&i| got[i] != 2.0 * x[i] + y[i].to_f32())
        .count();
    assert_eq!(mismatches, 0, "axpy wrong in {mismatches} of {n} elements");

    // block sum through static shared memory.
    let block_sum = gpu.kernel_variant(&variants[1])?;
    let mut total = gpu.alloc_poisoned::<f32>(1)?;
    let ones = gpu.upload(&vec![1.0f32; 4099])?;
    let len = 4099i64;
    // SAFETY: argument types match ssm_selftest_block_sum; one block of its thread count.
    unsafe {
        gpu.stream()
            .launch_builder(&block_sum.func)
            .arg(&mut total)
            .arg(&ones)
            .arg(&len)
            .launch(LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (BLOCK_SUM_THREADS, 1, 1),
                shared_mem_bytes: 0,
            })
    }?;
    assert_eq!(gpu.download(&total)?, [4099.0]);

    // Attributes agree with ptxas's report.
    let r = block_sum.resources;
    let ptxas = block_sum.ptxas.clone().expect("ptxas report of the entry");
    eprintln!("block_sum attributes {r:?}\nblock_sum ptxas {ptxas:?}");
    assert_eq!(r.static_smem_bytes, BLOCK_SUM_THREADS * 4);
    assert_eq!(r.registers, ptxas.registers);
    assert_eq!(r.max_threads_per_block, BLOCK_SUM_THREADS);
    assert_eq!(r.local_bytes, 0);

    // Raising the dynamic shared-memory limit past 48 KiB.
    let mut axpy_big = axpy.clone();
    let optin = gpu.max_smem_per_block_optin()?;
    eprintln!(
        "SMs {}, L2 {} bytes, smem opt-in {optin} bytes",
        gpu.multiprocessor_count()?,
        gpu.l2_cache_bytes()?
    );
    axpy_big.set_max_dynamic_smem(optin)?;
    assert_eq!(axpy_big.resources.max_dynamic_smem_bytes, optin);
    assert!(axpy_big.set_max_dynamic_smem(optin + 1).is_err());

    // A second request for the same kernel reuses the loaded module.
    let again = gpu.kernel_variant(&variants[0])?;
    assert_eq!(again.module_key, axpy.module_key);

    // CUDA-event timing: 4 MB read + 2 MB read + 4 MB written per launch.
    let timing = gpu.time(5, 50, || launch_axpy(&mut out))?;
    let bytes = (n * (4 + 2 + 4)) as f64;
    eprintln!(
        "axpy n={n}: median {:.4} ms (min {:.4}, max {:.4}), {:.0} GB/s",
        timing.median_ms,
        timing.min_ms,
        timing.max_ms,
        bytes / (timing.median_ms * 1e-3) / 1e9
    );
    assert_eq!(timing.samples.len(), 50);
    assert!(timing.min_ms > 0.0 && timing.min_ms <= timing.median_ms);
    assert!(gpu.time(0, 0, || Ok(())).is_err());
    Ok(())
}

#[test]
fn gpu_compile_errors_surface_as_typed_errors() {
    let Some(gpu) = test_gpu_or_skip("gpu_compile_errors_surface_as_typed_errors") else {
        return;
    };
    let mut variant = selftest_variants().remove(0);
    variant.defines.clear(); // selftest.cuh #errors without SELFTEST_SCALE
    match gpu.kernel_variant(&variant) {
        Err(GpuError::Compile { log, .. }) => {
            assert!(log.contains("common/selftest.cuh"), "{log}")
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
