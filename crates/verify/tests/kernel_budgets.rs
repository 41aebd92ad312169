//! Every CUDA kernel variant of every kernel crate compiles with NVRTC (no GPU
//! needed) and stays within its entry in `kernels/budgets.toml`: registers,
//! static shared memory, spills (default: none) and stack frame (default: none).
//!
//! Fails when a variant exceeds its budget, has no entry, or stops compiling.
//! Without NVRTC it fails too (CI installs it with `.ci/install-cuda.sh`), unless
//! `SSM_ALLOW_NO_NVRTC=1`, which makes it skip loudly.

use std::path::PathBuf;

use ssm_gpu::budget::{check, BudgetFile, BUDGET_FILE};
use ssm_gpu::cache::ModuleCache;
use ssm_gpu::variants::duplicate_labels;
use ssm_gpu::{report_variants, test_compiler_or_skip, Compiler, KernelVariant, SourceRoot};

/// The kernels directory of this checkout (not the embedded copies: the test
/// must see the files as they are now).
fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

/// Every variant of every kernel crate, plus the runtime's self-test kernels.
fn all_variants() -> Vec<KernelVariant> {
    let mut variants = ssm_gpu::selftest::selftest_variants();
    variants.extend(mamba1_scan::kernel_variants());
    variants.extend(mamba2_ssd::kernel_variants());
    variants
}

#[test]
fn every_kernel_variant_compiles_within_its_budget() {
    let Some(from_env) = test_compiler_or_skip("every_kernel_variant_compiles_within_its_budget")
    else {
        return;
    };
    let budgets = BudgetFile::load(&kernels_dir().join(BUDGET_FILE)).unwrap();
    let compiler = Compiler::new(
        SourceRoot::Disk(kernels_dir()),
        from_env.cache().clone(),
        from_env.extra_flags().to_vec(),
    )
    .unwrap();
    let variants = all_variants();
    let results = report_variants(&compiler, &variants, budgets.arch);
    let outcome = check(results, &budgets, duplicate_labels(&variants));
    eprintln!("{}\n{}", compiler.describe(), outcome.render_table());
    assert!(
        outcome.passed(),
        "kernel budget check failed:\n{}",
        outcome.failures().join("\n")
    );
}

/// The check can fail: the same self-test kernels against a budget of one
/// register must be reported over budget, and an unknown label as unbudgeted.
#[test]
fn an_impossible_budget_is_reported_over_budget() {
    let Some(_) = test_compiler_or_skip("an_impossible_budget_is_reported_over_budget") else {
        return;
    };
    let compiler = Compiler::new(SourceRoot::Embedded, ModuleCache::disabled(), vec![]).unwrap();
    let tight = BudgetFile::parse(
        r#"
        [kernels."common.selftest_axpy"]
        max_registers = 1
        max_smem_bytes = 0
        "#,
        "tight fixture",
    )
    .unwrap();
    let variants = ssm_gpu::selftest::selftest_variants();
    let results = report_variants(&compiler, &variants, tight.arch);
    let outcome = check(results, &tight, vec![]);
    assert!(!outcome.passed());
    let failures = outcome.failures().join("\n");
    assert!(
        failures.contains("common.selftest_axpy: over budget"),
        "{failures}"
    );
    assert!(
        failures.contains("common.selftest_block_sum: no entry"),
        "{failures}"
    );
}
