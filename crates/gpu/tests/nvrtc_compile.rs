//! NVRTC-only tests (no driver, no GPU): compile the self-test kernels, read
//! ptxas's report, hit the cache, hot-reload from disk and report compile
//! errors with file and line. They fail when NVRTC is missing unless
//! SSM_ALLOW_NO_NVRTC=1 (CI installs it with .ci/install-cuda.sh).

use ssm_gpu::cache::ModuleCache;
use ssm_gpu::selftest::{selftest_variants, SELFTEST_SOURCE};
use ssm_gpu::{
    report_variant, test_compiler_or_skip, Arch, Compiler, GpuError, KernelSource, SourceRoot,
};

fn compiler_with(root: SourceRoot, cache: ModuleCache) -> Compiler {
    Compiler::new(root, cache, vec![]).expect("NVRTC present (checked by the caller)")
}

#[test]
fn selftest_variants_compile_for_both_targets_and_report_resources() {
    let Some(_) = test_compiler_or_skip("selftest_variants_compile") else {
        return;
    };
    let cache_dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with(SourceRoot::Embedded, ModuleCache::at(cache_dir.path()));
    eprintln!("{}", compiler.describe());
    for arch in [Arch::Sm90, Arch::Sm80] {
        for variant in selftest_variants() {
            let report = report_variant(&compiler, &variant, arch).unwrap();
            let r = &report.resources;
            assert_eq!(r.arch.as_deref(), Some(arch.name()), "{}", variant.label);
            assert!(r.registers >= 4 && r.registers <= 255, "{r:?}");
            assert_eq!(r.spill_bytes(), 0, "{r:?}");
            assert!(!report.from_cache);
            if variant.entry == "ssm_selftest_block_sum" {
                assert_eq!(r.smem_bytes, 256 * 4, "{r:?}");
                assert!(r.barriers >= 1, "{r:?}");
            } else {
                assert_eq!(r.smem_bytes, 0, "{r:?}");
            }
        }
    }
}

#[test]
fn second_compile_comes_from_the_cache_with_the_same_report() {
    let Some(_) = test_compiler_or_skip("second_compile_comes_from_the_cache") else {
        return;
    };
    let cache_dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with(SourceRoot::Embedded, ModuleCache::at(cache_dir.path()));
    let variant = &selftest_variants()[1];
    let first = report_variant(&compiler, variant, Arch::Sm90).unwrap();
    let second = report_variant(&compiler, variant, Arch::Sm90).unwrap();
    assert!(!first.from_cache && second.from_cache);
    assert_eq!(first.resources, second.resources);
    // A different define is a different module.
    let mut other = variant.clone();
    other.defines[1].1 = "128".into();
    let third = report_variant(&compiler, &other, Arch::Sm90).unwrap();
    assert!(!third.from_cache);
    assert_eq!(third.resources.smem_bytes, 128 * 4);
}

#[test]
fn hot_reload_reads_disk_and_reports_errors_with_file_and_line() {
    let Some(_) = test_compiler_or_skip("hot_reload_reads_disk") else {
        return;
    };
    let kernels = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = kernels.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "common/helper.cuh",
        "#pragma once\n__device__ float twice(float x) { return 2 * x; }\n",
    );
    write(
        "fam/k.cu",
        "#include \"common/helper.cuh\"\nextern \"C\" __global__ void k(float* o) { o[0] = twice(o[0]); }\n",
    );
    let source = KernelSource {
        path: "fam/k.cu",
        embedded: "this text must not be used: hot reload reads the disk",
    };
    let compiler = compiler_with(
        SourceRoot::Disk(kernels.path().into()),
        ModuleCache::disabled(),
    );
    let ok = compiler.compile(&source, &[], Arch::Sm90).unwrap();
    assert_eq!(ok.files, ["fam/k.cu", "common/helper.cuh"]);
    assert!(ssm_gpu::ptxas::find_entry(&ok.functions, "k").is_some());

    // Break the header on line 2: the error must name the header and line 2.
    write(
        "common/helper.cuh",
        "#pragma once\n__device__ float twice(float x) { return 2 * y; }\n",
    );
    match compiler.compile(&source, &[], Arch::Sm90) {
        Err(GpuError::Compile { file, log }) => {
            assert_eq!(file, "fam/k.cu");
            assert!(log.contains("common/helper.cuh(2)"), "log was:\n{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn a_missing_entry_point_is_a_typed_error() {
    let Some(compiler) = test_compiler_or_skip("a_missing_entry_point") else {
        return;
    };
    let mut variant = selftest_variants().remove(0);
    variant.entry = "no_such_kernel";
    match report_variant(&compiler, &variant, Arch::Sm90) {
        Err(GpuError::MissingEntry { entry, .. }) => assert_eq!(entry, "no_such_kernel"),
        other => panic!("expected MissingEntry, got {other:?}"),
    }
    let _ = SELFTEST_SOURCE;
}
