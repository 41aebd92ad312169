//! Every CUDA kernel variant of every kernel crate compiles with NVRTC (no GPU
//! needed) and stays within its entry in `kernels/budgets.toml`: registers,
//! static shared memory, spills (default: none) and stack frame (default: none).
//!
//! Fails when a variant exceeds its budget, has no entry, or stops compiling.
//! Without NVRTC it fails too (CI installs it with `.ci/install-cuda.sh`), unless
//! `SSM_ALLOW_NO_NVRTC=1`, which makes it skip loudly.

mod checkout_kernels;

use std::path::PathBuf;

use checkout_kernels::{checkout_compiler_or_skip, kernels_dir};
use ssm_gpu::budget::{check, BudgetFile, BUDGET_FILE};
use ssm_gpu::cache::ModuleCache;
use ssm_gpu::variants::duplicate_labels;
use ssm_gpu::{report_variants, test_compiler_or_skip, Compiler, KernelVariant, SourceRoot};

/// Every variant of every kernel crate, plus the runtime's self-test kernels.
fn all_variants() -> Vec<KernelVariant> {
    let mut variants = ssm_gpu::selftest::selftest_variants();
    variants.extend(mamba1_scan::kernel_variants());
    variants.extend(mamba2_ssd::kernel_variants());
    variants
}

#[test]
fn every_kernel_variant_compiles_within_its_budget() {
    let Some(compiler) =
        checkout_compiler_or_skip("every_kernel_variant_compiles_within_its_budget")
    else {
        return;
    };
    let budgets = BudgetFile::load(&kernels_dir().join(BUDGET_FILE)).unwrap();
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

/// The experiment switches of the SSD kernel (the table under "Experiment
/// switches" in docs/kernels/mamba2-ssd.md), as `(define, documented default)`.
fn documented_ssd_switches() -> Vec<(String, String)> {
    let notes = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/kernels/mamba2-ssd.md"),
    )
    .unwrap();
    let section = notes
        .split("## Experiment switches")
        .nth(1)
        .expect("docs/kernels/mamba2-ssd.md has an \"Experiment switches\" section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | `SSD_X` | default | what |
            let name = cells.get(1)?.strip_prefix("`SSD_")?.strip_suffix('`')?;
            let default = cells.get(2)?.trim_matches('`').to_string();
            Some((format!("SSD_{name}"), default))
        })
        .collect()
}

/// `#ifndef X` / `#define X default` pairs of a kernel source: the defines a
/// compile may leave out.
fn defaulted_defines(source: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter_map(|w| {
            let name = w[0].strip_prefix("#ifndef ")?.trim();
            let rest = w[1].strip_prefix("#define ")?.strip_prefix(name)?;
            let value = rest.trim();
            (!value.is_empty()).then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

/// The ladder as code: every experiment switch of the SSD kernel is documented,
/// and compiles away from its default on the reference workloads' fused kernel
/// (one stage, C B^T precomputed, every option; with and without final states)
/// without warnings, to different code than the default (a switch that no longer
/// changes anything has been lost). Their run-time correctness is checked under
/// the emulation (crates/mamba2-ssd/tests/emulated_kernels.rs).
#[test]
fn every_ssd_experiment_switch_compiles() {
    let Some(compiler) = checkout_compiler_or_skip("every_ssd_experiment_switch_compiles") else {
        return;
    };
    let documented = documented_ssd_switches();
    assert!(
        documented.len() >= 5,
        "switch table not found: {documented:?}"
    );

    let variants = mamba2_ssd::kernel_variants();
    let is_base = |v: &&KernelVariant, final_states: bool| {
        let has = |k: &str, value: &str| v.defines.iter().any(|(n, x)| *n == k && x == value);
        v.label.starts_with("mamba2.ssd_fused.")
            && has("SSD_STATE_ONLY", "0")
            && has("SSD_STAGES", "1")
            && has("SSD_CB_GLOBAL", "1")
            && has("SSD_HAS_Z", "1")
            && has("SSD_FINAL", if final_states { "1" } else { "0" })
    };
    let bases: Vec<&KernelVariant> = [true, false]
        .into_iter()
        .map(|fin| {
            variants
                .iter()
                .find(|v| is_base(v, fin))
                .unwrap_or_else(|| panic!("no fused variant with final states = {fin}"))
        })
        .collect();

    // The documented switches are exactly the defaulted defines of the kernel that
    // the launcher does not set.
    let mut in_source = Vec::new();
    for file in ["mamba2/ssd_fused.cu", "mamba2/ssd_common.cuh"] {
        let text = std::fs::read_to_string(kernels_dir().join(file)).unwrap();
        in_source.extend(defaulted_defines(&text));
    }
    in_source.retain(|(name, _)| {
        name.starts_with("SSD_") && !bases[0].defines.iter().any(|(n, _)| n == name)
    });
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    in_source.sort();
    assert_eq!(
        documented_sorted, in_source,
        "docs/kernels/mamba2-ssd.md's switch table (left) and the kernel's defaulted \
         defines (right) disagree"
    );

    let mut failures = Vec::new();
    for base in &bases {
        let final_states = base
            .defines
            .iter()
            .any(|(n, v)| *n == "SSD_FINAL" && v == "1");
        let default_cubin = compiler
            .compile(&base.source, &base.defines, budgets_arch())
            .unwrap_or_else(|e| panic!("{}: {e}", base.label))
            .module
            .cubin;
        for (name, default) in &documented {
            let default_on = match default.as_str() {
                "SSD_FINAL" => final_states,
                "1" => true,
                "0" => false,
                other => panic!("{name}: default {other:?} is not 0, 1 or SSD_FINAL"),
            };
            let flipped = if default_on { "0" } else { "1" };
            let mut variant = (*base).clone();
            variant.label = format!("{}+{name}={flipped}", base.label);
            let key: &'static str = Box::leak(name.clone().into_boxed_str());
            variant.defines.push((key, flipped.to_string()));
            match ssm_gpu::report_variant(&compiler, &variant, budgets_arch()) {
                Err(e) => failures.push(format!("{}: does not compile: {e}", variant.label)),
                Ok(report) => {
                    let r = &report.resources;
                    eprintln!(
                        "{:<72} {:>3} registers, {:>3} B spills, {:>3} B stack",
                        variant.label,
                        r.registers,
                        r.spill_bytes(),
                        r.stack_frame_bytes
                    );
                    if !report.warnings.is_empty() {
                        failures.push(format!("{}: warnings {:?}", variant.label, report.warnings));
                    }
                    let cubin = compiler
                        .compile(&variant.source, &variant.defines, budgets_arch())
                        .unwrap()
                        .module
                        .cubin;
                    if cubin == default_cubin {
                        failures.push(format!(
                            "{}: compiles to the same code as the default (the switch is dead)",
                            variant.label
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn budgets_arch() -> ssm_gpu::Arch {
    BudgetFile::load(&kernels_dir().join(BUDGET_FILE))
        .unwrap()
        .arch
}

#[test]
fn defaulted_defines_are_found() {
    let src = "#ifndef SSD_A\n#define SSD_A 1\n#endif\n#ifndef GUARD\n#define GUARD\n#endif\n\
               #ifndef SSD_B\n  #define SSD_B SSD_FINAL\n#endif\n";
    assert_eq!(
        defaulted_defines(src),
        [
            ("SSD_A".to_string(), "1".to_string()),
            ("SSD_B".to_string(), "SSD_FINAL".to_string())
        ]
    );
}
