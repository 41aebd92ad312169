//! Resource budgets per kernel variant (`kernels/budgets.toml`) and the check
//! of ptxas's report against them.
//!
//! ```toml
//! arch = "sm_90"                       # the target the budgets are stated for
//!
//! [kernels."mamba1.decode.f32.n16"]
//! max_registers = 64
//! max_smem_bytes = 0                  # static __shared__ bytes
//! # max_spill_bytes = 0               # default: no spill stores or loads at all
//! # max_stack_bytes = 0               # default: no stack frame (local arrays)
//! note = "why these numbers"          # optional
//! ```
//!
//! A variant fails the check when it exceeds a limit, compiles with a warning,
//! has no entry, or does not compile. Entries naming no compiled variant are reported as stale (a warning:
//! the variant was renamed or removed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::nvrtc::Arch;
use crate::source::SourceRoot;
use crate::variants::VariantReport;
use crate::GpuError;

/// The budget file's path relative to `kernels/`.
pub const BUDGET_FILE: &str = "budgets.toml";

/// Limits for one kernel variant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most registers per thread the entry point may use.
    pub max_registers: u32,
    /// Most static `__shared__` bytes.
    pub max_smem_bytes: u32,
    #[serde(default)]
    /// Most spill bytes (stores plus loads, entry and its spilling device
    /// functions); default 0.
    pub max_spill_bytes: u32,
    #[serde(default)]
    /// Most stack-frame bytes (a register array indexed at run time lands
    /// there); default 0.
    pub max_stack_bytes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Why the limits are what they are (free text, kept with the entry).
    pub note: Option<String>,
}

/// The whole budget file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    /// The target the budgets are stated for (and the check compiles for).
    #[serde(default = "default_arch")]
    pub arch: Arch,
    #[serde(default)]
    /// Budgets by variant label ([`KernelVariant::label`](crate::KernelVariant::label)).
    pub kernels: BTreeMap<String, Budget>,
}

fn default_arch() -> Arch {
    Arch::Sm90
}

impl BudgetFile {
    /// Parse `text`; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, GpuError> {
        toml::from_str(text).map_err(|e| GpuError::Config {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Read and parse the budget file at `path` ([`GpuError::Io`] or
    /// [`GpuError::Config`] on failure).
    pub fn load(path: &Path) -> Result<Self, GpuError> {
        let text = std::fs::read_to_string(path).map_err(|source| GpuError::Io {
            what: "reading budget file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// `budgets.toml` of a source root: the embedded copy, or the one in
    /// `SSM_KERNEL_DIR` when hot-reloading.
    pub fn from_root(root: &SourceRoot) -> Result<Self, GpuError> {
        let origin = format!("kernels/{BUDGET_FILE} ({})", root.describe());
        let text = root.read(BUDGET_FILE)?.ok_or_else(|| GpuError::Config {
            path: origin.clone(),
            message: "no budget file".into(),
        })?;
        Self::parse(&text, &origin)
    }
}

/// Every limit `report` breaks, in words; empty when within budget.
pub fn violations(report: &VariantReport, budget: &Budget) -> Vec<String> {
    let r = &report.resources;
    let mut broken = Vec::new();
    if r.registers > budget.max_registers {
        broken.push(format!(
            "{} registers > {} allowed",
            r.registers, budget.max_registers
        ));
    }
    if r.smem_bytes > budget.max_smem_bytes {
        broken.push(format!(
            "{} bytes static shared memory > {} allowed",
            r.smem_bytes, budget.max_smem_bytes
        ));
    }
    let spills = module_spill_bytes(report);
    if spills > budget.max_spill_bytes {
        let mut what = format!(
            "{spills} bytes of spills (stores {} + loads {}",
            r.spill_store_bytes, r.spill_load_bytes
        );
        for f in &report.spilling_device_functions {
            let _ = write!(what, ", device function {} {}", f.name, f.spill_bytes());
        }
        let _ = write!(what, ") > {} allowed", budget.max_spill_bytes);
        broken.push(what);
    }
    if r.stack_frame_bytes > budget.max_stack_bytes {
        broken.push(format!(
            "{} bytes stack frame > {} allowed (a register array indexed at run time?)",
            r.stack_frame_bytes, budget.max_stack_bytes
        ));
    }
    // A warning (an unused variable, a narrowing, a `#pragma unroll` ptxas could not
    // honour) is a change nobody looked at; no budget allows one.
    if !report.warnings.is_empty() {
        broken.push(format!(
            "compiler warnings: {}",
            report.warnings.join(" | ")
        ));
    }
    broken
}

/// Spill bytes of the entry plus those of non-inlined device functions in its
/// module (conservative: a device function used only by another entry of the
/// same module is charged too).
fn module_spill_bytes(report: &VariantReport) -> u32 {
    report.resources.spill_bytes()
        + report
            .spilling_device_functions
            .iter()
            .map(|f| f.spill_bytes())
            .sum::<u32>()
}

/// The outcome for one variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every limit held and ptxas printed no warning.
    Within,
    /// The limits broken (and compiler warnings), one line each.
    Exceeded(Vec<String>),
    /// The variant compiled but the file has no entry for its label.
    NoBudget,
    /// It did not compile (or had no such entry point).
    Failed(String),
}

#[derive(Clone, Debug)]
/// One variant's line of a [`BudgetCheck`].
pub struct BudgetRow {
    /// The variant's label.
    pub label: String,
    /// ptxas's report, when the variant compiled.
    pub report: Option<VariantReport>,
    /// Its entry in the file, if any.
    pub budget: Option<Budget>,
    /// The outcome.
    pub verdict: Verdict,
}

/// The check of every variant against the file.
#[derive(Clone, Debug)]
pub struct BudgetCheck {
    /// The target every variant was compiled for.
    pub arch: Arch,
    /// One row per variant.
    pub rows: Vec<BudgetRow>,
    /// Budget entries that no variant uses.
    pub stale: Vec<String>,
    /// Labels used by more than one variant.
    pub duplicates: Vec<String>,
}

/// Check compile results (from [`crate::report_variants`]) against `file`.
pub fn check(
    results: Vec<(String, Result<VariantReport, GpuError>)>,
    file: &BudgetFile,
    duplicates: Vec<String>,
) -> BudgetCheck {
    let mut used = std::collections::HashSet::new();
    let rows = results
        .into_iter()
        .map(|(label, result)| {
            used.insert(label.clone());
            let budget = file.kernels.get(&label).cloned();
            let (report, verdict) = match (result, &budget) {
                (Err(e), _) => (None, Verdict::Failed(e.to_string())),
                (Ok(report), None) => (Some(report), Verdict::NoBudget),
                (Ok(report), Some(budget)) => {
                    let broken = violations(&report, budget);
                    let verdict = if broken.is_empty() {
                        Verdict::Within
                    } else {
                        Verdict::Exceeded(broken)
                    };
                    (Some(report), verdict)
                }
            };
            BudgetRow {
                label,
                report,
                budget,
                verdict,
            }
        })
        .collect();
    let stale = file
        .kernels
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    BudgetCheck {
        arch: file.arch,
        rows,
        stale,
        duplicates,
    }
}

impl BudgetCheck {
    /// True when every variant compiled and is within an entry of its own.
    pub fn passed(&self) -> bool {
        self.duplicates.is_empty() && self.rows.iter().all(|r| r.verdict == Verdict::Within)
    }

    /// One line per problem, for a failing test or exit message.
    pub fn failures(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .duplicates
            .iter()
            .map(|label| format!("{label}: label used by more than one variant"))
            .collect();
        for row in &self.rows {
            match &row.verdict {
                Verdict::Within => {}
                Verdict::Exceeded(broken) => {
                    lines.push(format!("{}: over budget: {}", row.label, broken.join("; ")))
                }
                Verdict::NoBudget => lines.push(format!(
                    "{}: no entry in kernels/{BUDGET_FILE}; add [kernels.\"{}\"] with its limits",
                    row.label, row.label
                )),
                Verdict::Failed(why) => {
                    lines.push(format!("{}: does not compile:\n{why}", row.label))
                }
            }
        }
        lines
    }

    /// A fixed-width table of every variant: use / limit per resource.
    pub fn render_table(&self) -> String {
        let mut rows = vec![[
            "variant".to_string(),
            "regs".to_string(),
            "smem B".to_string(),
            "spill B".to_string(),
            "stack B".to_string(),
            "barriers".to_string(),
            "verdict".to_string(),
        ]];
        for row in &self.rows {
            let limit = |f: fn(&Budget) -> u32| {
                row.budget
                    .as_ref()
                    .map_or("/-".to_string(), |b| format!("/{}", f(b)))
            };
            let cells = match &row.report {
                Some(report) => {
                    let r = &report.resources;
                    [
                        format!("{}{}", r.registers, limit(|b| b.max_registers)),
                        format!("{}{}", r.smem_bytes, limit(|b| b.max_smem_bytes)),
                        format!(
                            "{}{}",
                            module_spill_bytes(report),
                            limit(|b| b.max_spill_bytes)
                        ),
                        format!("{}{}", r.stack_frame_bytes, limit(|b| b.max_stack_bytes)),
                        r.barriers.to_string(),
                    ]
                }
                None => Default::default(),
            };
            let verdict = match &row.verdict {
                Verdict::Within => "ok",
                Verdict::Exceeded(_) => "OVER BUDGET",
                Verdict::NoBudget => "NO BUDGET",
                Verdict::Failed(_) => "COMPILE FAILED",
            };
            let [a, b, c, d, e] = cells;
            rows.push([row.label.clone(), a, b, c, d, e, verdict.to_string()]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0))
            .collect();
        let mut out = format!("kernel resources for {} (use/limit)\n", self.arch);
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(col, (cell, width))| {
                    if col == 0 || col == 6 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        for label in &self.stale {
            let _ = writeln!(out, "warning: budget entry {label} names no kernel variant");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptxas::PtxasFunction;

    const FILE: &str = r#"
        arch = "sm_90"
        [kernels."a"]
        max_registers = 64
        max_smem_bytes = 1024
        [kernels."b"]
        max_registers = 32
        max_smem_bytes = 0
        max_stack_bytes = 16
        note = "tight on purpose"
        [kernels."unused"]
        max_registers = 1
        max_smem_bytes = 0
    "#;

    fn report(
        label: &str,
        registers: u32,
        smem: u32,
        spill_stores: u32,
        stack: u32,
    ) -> VariantReport {
        VariantReport {
            label: label.into(),
            source: "x.cu".into(),
            entry: "k".into(),
            arch: Arch::Sm90,
            defines: vec![],
            resources: PtxasFunction {
                name: "k".into(),
                entry: true,
                arch: Some("sm_90".into()),
                registers,
                smem_bytes: smem,
                spill_store_bytes: spill_stores,
                stack_frame_bytes: stack,
                ..Default::default()
            },
            spilling_device_functions: vec![],
            warnings: vec![],
            from_cache: false,
        }
    }

    /// The fixture's budgets checked against kernels `a` and `b` (ptxas's
    /// registers, static shared memory, spill stores and stack frame of each).
    fn check_fixture(a: (u32, u32, u32, u32), b: (u32, u32, u32, u32)) -> BudgetCheck {
        let file = BudgetFile::parse(FILE, "fixture").unwrap();
        let results = [("a", a), ("b", b)]
            .into_iter()
            .map(|(label, (regs, smem, spills, stack))| {
                (
                    label.to_string(),
                    Ok(report(label, regs, smem, spills, stack)),
                )
            })
            .collect();
        check(results, &file, vec![])
    }

    #[test]
    fn parses_defaults_and_rejects_unknown_keys() {
        let file = BudgetFile::parse(FILE, "fixture").unwrap();
        assert_eq!(file.arch, Arch::Sm90);
        let b = &file.kernels["b"];
        assert_eq!(
            (b.max_registers, b.max_spill_bytes, b.max_stack_bytes),
            (32, 0, 16)
        );
        assert_eq!(file.kernels["a"].max_stack_bytes, 0);
        let typo = "[kernels.\"a\"]\nmax_registers = 1\nmax_smem_bytes = 0\nmax_regs = 3\n";
        let err = BudgetFile::parse(typo, "typo.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("typo.toml") && err.contains("max_regs"),
            "{err}"
        );
        let missing = "[kernels.\"a\"]\nmax_registers = 1\n";
        assert!(BudgetFile::parse(missing, "m").is_err());
    }

    #[test]
    fn within_budget_passes() {
        let check = check_fixture((64, 1024, 0, 0), (10, 0, 0, 16));
        assert!(check.passed(), "{:?}", check.failures());
        assert_eq!(check.stale, ["unused"]);
        let table = check.render_table();
        assert!(
            table.contains("64/64") && table.contains("1024/1024"),
            "{table}"
        );
        assert!(table.contains("warning: budget entry unused"), "{table}");
    }

    #[test]
    fn every_kind_of_overrun_fails_and_is_named() {
        let check = check_fixture((65, 2048, 4, 8), (32, 0, 0, 17));
        assert!(!check.passed());
        let failures = check.failures().join("\n");
        for expected in [
            "65 registers > 64",
            "2048 bytes static shared memory > 1024",
            "4 bytes of spills",
            "8 bytes stack frame > 0",
            "17 bytes stack frame > 16",
        ] {
            assert!(
                failures.contains(expected),
                "missing {expected:?} in\n{failures}"
            );
        }
        assert!(check.render_table().contains("OVER BUDGET"));
    }

    #[test]
    fn spills_in_device_functions_count() {
        let file = BudgetFile::parse(FILE, "fixture").unwrap();
        let mut with_callee = report("a", 10, 0, 0, 0);
        with_callee.spilling_device_functions.push(PtxasFunction {
            name: "_Z6helperf".into(),
            spill_load_bytes: 8,
            ..Default::default()
        });
        let check = check(vec![("a".into(), Ok(with_callee))], &file, vec![]);
        assert!(check
            .failures()
            .join("\n")
            .contains("device function _Z6helperf 8"));
    }

    #[test]
    fn compiler_warnings_fail_within_budget() {
        let file = BudgetFile::parse(FILE, "fixture").unwrap();
        let mut warned = report("a", 10, 0, 0, 0);
        warned.warnings.push(
            "x.cu(7): warning #177-D: variable \"t\" was declared but never referenced".into(),
        );
        let check = check(vec![("a".into(), Ok(warned))], &file, vec![]);
        assert!(!check.passed());
        let failures = check.failures().join("\n");
        assert!(
            failures.contains("compiler warnings: x.cu(7)"),
            "{failures}"
        );
    }

    #[test]
    fn missing_entries_compile_failures_and_duplicates_fail() {
        let file = BudgetFile::parse(FILE, "fixture").unwrap();
        let results = vec![
            (
                "new_kernel".to_string(),
                Ok(report("new_kernel", 1, 0, 0, 0)),
            ),
            (
                "a".to_string(),
                Err(GpuError::Compile {
                    file: "x.cu".into(),
                    log: "x.cu(3): error: identifier \"y\" is undefined".into(),
                }),
            ),
        ];
        let check = check(results, &file, vec!["a".into()]);
        assert!(!check.passed());
        let failures = check.failures().join("\n");
        assert!(failures.contains("new_kernel: no entry"), "{failures}");
        assert!(failures.contains("a: does not compile") && failures.contains("x.cu(3)"));
        assert!(failures.contains("a: label used by more than one variant"));
        let table = check.render_table();
        assert!(
            table.contains("NO BUDGET") && table.contains("COMPILE FAILED"),
            "{table}"
        );
    }
}
