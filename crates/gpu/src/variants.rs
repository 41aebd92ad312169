//! Kernel variants and their resource report without a GPU.
//!
//! Each kernel crate lists the (source, entry point, defines) combinations it
//! launches as [`KernelVariant`]s (`pub fn kernel_variants() -> Vec<KernelVariant>`);
//! [`report_variants`] compiles every one to SASS with NVRTC alone and reads
//! ptxas's report: registers, spills, stack and static shared memory. The budget
//! check ([`crate::budget`]) and `ssmk resources` are built on it.

use crate::compile::Compiler;
use crate::nvrtc::Arch;
use crate::ptxas::{find_entry, PtxasFunction};
use crate::{GpuError, KernelSource};

/// One compiled form of a kernel: a source, an entry point and its defines.
#[derive(Clone, Debug)]
pub struct KernelVariant {
    /// Unique, stable name: the key of the variant's budget entry
    /// (e.g. `"mamba1.scan_fwd.bf16.n16"`).
    pub label: String,
    /// The kernel file, embedded or hot-reloaded.
    pub source: KernelSource,
    /// The `extern "C"` entry point.
    pub entry: &'static str,
    /// `-D NAME=value` defines the source is specialised with.
    pub defines: Vec<(&'static str, String)>,
}

impl KernelVariant {
    /// A variant from its parts.
    pub fn new(
        label: impl Into<String>,
        source: KernelSource,
        entry: &'static str,
        defines: Vec<(&'static str, String)>,
    ) -> Self {
        KernelVariant {
            label: label.into(),
            source,
            entry,
            defines,
        }
    }
}

/// What ptxas said about one variant's entry point.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VariantReport {
    /// The variant's label.
    pub label: String,
    /// The kernel file, relative to `kernels/`.
    pub source: String,
    /// The entry point reported.
    pub entry: String,
    /// The target compiled for.
    pub arch: Arch,
    /// The defines, as strings.
    pub defines: Vec<(String, String)>,
    /// ptxas's report of the entry point.
    pub resources: PtxasFunction,
    /// Every device function in the module that spills (their cost lands in the entry).
    pub spilling_device_functions: Vec<PtxasFunction>,
    /// Non-resource lines of the compile log (warnings), if any.
    pub warnings: Vec<String>,
    /// The module came from the compile cache (or the pack), not a fresh NVRTC run.
    pub from_cache: bool,
}

/// Compile `variant` for `arch` and report its entry point's resources.
pub fn report_variant(
    compiler: &Compiler,
    variant: &KernelVariant,
    arch: Arch,
) -> Result<VariantReport, GpuError> {
    let output = compiler.compile(&variant.source, &variant.defines, arch)?;
    let resources = find_entry(&output.functions, variant.entry)
        .cloned()
        .ok_or_else(|| GpuError::MissingEntry {
            file: variant.source.path.to_string(),
            entry: variant.entry.to_string(),
        })?;
    let spilling_device_functions = output
        .functions
        .iter()
        .filter(|f| !f.entry && f.spill_bytes() > 0)
        .cloned()
        .collect();
    Ok(VariantReport {
        label: variant.label.clone(),
        source: variant.source.path.to_string(),
        entry: variant.entry.to_string(),
        arch,
        defines: variant
            .defines
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        resources,
        spilling_device_functions,
        warnings: warnings(&output.module.log),
        from_cache: output.from_cache,
    })
}

/// Report every variant; one failure does not hide the others' results.
pub fn report_variants(
    compiler: &Compiler,
    variants: &[KernelVariant],
    arch: Arch,
) -> Vec<(String, Result<VariantReport, GpuError>)> {
    variants
        .iter()
        .map(|v| (v.label.clone(), report_variant(compiler, v, arch)))
        .collect()
}

/// Labels that occur more than once (each must name one budget entry).
pub fn duplicate_labels(variants: &[KernelVariant]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut duplicates: Vec<String> = variants
        .iter()
        .filter(|v| !seen.insert(v.label.as_str()))
        .map(|v| v.label.clone())
        .collect();
    duplicates.sort();
    duplicates.dedup();
    duplicates
}

/// Log lines that are not ptxas's routine `info` report: warnings worth showing.
fn warnings(log: &str) -> Vec<String> {
    log.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("ptxas info") && !l.starts_with("ptxas         ."))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_duplicate_labels() {
        let src = KernelSource {
            path: "x.cu",
            embedded: "",
        };
        let variants = vec![
            KernelVariant::new("a", src, "k", vec![]),
            KernelVariant::new("b", src, "k", vec![]),
            KernelVariant::new("a", src, "k", vec![("N", "2".into())]),
        ];
        assert_eq!(duplicate_labels(&variants), ["a"]);
    }

    #[test]
    fn keeps_only_warning_lines() {
        let log = "ptxas info    : Used 8 registers\nptxas         .     0 bytes stack frame\n\
                   k.cu(3): warning #177-D: variable \"x\" was declared but never referenced\n\n";
        assert_eq!(
            warnings(log),
            ["k.cu(3): warning #177-D: variable \"x\" was declared but never referenced"]
        );
    }
}
