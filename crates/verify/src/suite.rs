//! The main verification run: every available implementation against the oracle
//! on a suite of shapes (docs/DESIGN.md §6 workloads scaled to CPU size, plus option
//! and edge cases), printed as one table.

use half::bf16;
use ssm_core::Result;
use ssm_gpu::Gpu;

use crate::check::{check_scan, check_ssd, check_step, CheckRow};
use crate::gen::{DKind, Mamba1Case, Mamba1Data, SsdCase, SsdData, StepCase, StepData};
use crate::impls::{Family, ScanImpl, SsdImpl, StepImpl};

/// What to run.
pub struct SuiteOptions<'g> {
    /// CUDA implementations run when a device is given.
    pub gpu: Option<&'g Gpu>,
    /// Add the full-size docs/DESIGN.md §6 workloads (for the GPU; slow on a CPU).
    pub full: bool,
    /// Seed of every generated problem.
    pub seed: u64,
}

fn scan_cases(full: bool) -> Vec<Mamba1Case> {
    let mut grouped = Mamba1Case::plain(1, 64, 12, 300).all_options();
    grouped.b_groups = None;
    grouped.c_groups = Some(2);
    let mut varlen = Mamba1Case::plain(1, 64, 16, 700).all_options();
    varlen.varlen = Some(4);
    let mut big_dt = Mamba1Case::plain(2, 32, 5, 257).all_options();
    big_dt.dt = crate::gen::DtRegime::Large;
    let mut cases = vec![
        // M1-2.8B with D_in / 16 and L / 4.
        Mamba1Case::plain(1, 320, 16, 1024).all_options(),
        // M1-small with b / 4, D_in / 16, L / 4.
        Mamba1Case::plain(2, 128, 16, 512).all_options(),
        Mamba1Case::plain(1, 8, 256, 64).all_options(),
        Mamba1Case::plain(3, 16, 16, 1),
        grouped,
        varlen,
        big_dt,
    ];
    if full {
        cases.push(Mamba1Case::plain(4, 5120, 16, 4096).all_options());
        cases.push(Mamba1Case::plain(8, 2048, 16, 2048).all_options());
    }
    cases
}

fn ssd_cases(full: bool) -> Vec<SsdCase> {
    let mut varlen = SsdCase::plain(1, 600, 4, 32, 64, 2).all_options();
    varlen.varlen = Some(5);
    varlen.d = DKind::PerHeadDim;
    let mut big_dt = SsdCase::plain(1, 300, 4, 16, 16, 1).all_options();
    big_dt.dt = crate::gen::DtRegime::Large;
    let mut cases = vec![
        // M2-2.7B with H / 8 and L / 8, b 1.
        SsdCase::plain(1, 512, 10, 64, 128, 1).all_options(),
        // M2-long with H / 8, L / 16.
        SsdCase::plain(1, 4096, 4, 64, 128, 1),
        // M2-groups with H / 4, L / 8, G / 2.
        SsdCase::plain(1, 512, 8, 128, 128, 4).all_options(),
        SsdCase::plain(2, 1, 4, 32, 16, 2).all_options(),
        varlen,
        big_dt,
    ];
    if full {
        cases.push(SsdCase::plain(4, 4096, 80, 64, 128, 1));
        cases.push(SsdCase::plain(1, 65536, 32, 64, 128, 1));
        cases.push(SsdCase::plain(4, 4096, 32, 128, 128, 8));
    }
    cases
}

fn step_cases(full: bool) -> Vec<(Family, StepCase)> {
    let m1 = |batch, indexed| StepCase {
        batch,
        channels: 5120,
        head_dim: 1,
        d_state: 16,
        groups: 1,
        indexed,
        all_options: true,
        d_per_head_dim: false,
    };
    let m2 = |batch, groups, indexed| StepCase {
        batch,
        channels: 80,
        head_dim: 64,
        d_state: 128,
        groups,
        indexed,
        all_options: true,
        d_per_head_dim: false,
    };
    let mut cases = vec![
        (Family::Mamba1, m1(16, None)),
        (Family::Mamba1, m1(8, Some(4))),
        (Family::Mamba2, m2(4, 1, None)),
        (Family::Mamba2, m2(4, 8, Some(3))),
    ];
    if full {
        cases.push((Family::Mamba1, m1(256, None)));
        cases.push((Family::Mamba2, m2(256, 1, Some(16))));
    }
    cases
}

/// One problem of the suite; it yields a row per (implementation, dtype).
enum Job {
    Scan(Mamba1Case, u64),
    Ssd(SsdCase, u64),
    Step(Family, StepCase, u64),
}

fn jobs(full: bool, seed: u64) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (i, case) in scan_cases(full).into_iter().enumerate() {
        jobs.push(Job::Scan(case, seed + i as u64));
    }
    for (i, case) in ssd_cases(full).into_iter().enumerate() {
        jobs.push(Job::Ssd(case, seed + 100 + i as u64));
    }
    for (i, (family, case)) in step_cases(full).into_iter().enumerate() {
        jobs.push(Job::Step(family, case, seed + 200 + i as u64));
    }
    jobs
}

/// Problems the suite runs with these options (the unit of [`run_with_progress`]).
pub fn problem_count(opts: &SuiteOptions<'_>) -> usize {
    jobs(opts.full, opts.seed).len()
}

/// Run the suite and return every row (rows whose implementation failed to run
/// carry the error and fail).
pub fn run(opts: &SuiteOptions<'_>, mut progress: impl FnMut(&CheckRow)) -> Result<Vec<CheckRow>> {
    run_with_progress(opts, |row, _, _| progress(row))
}

/// [`run`], telling `progress` each row with the problems done and the total
/// (`ssmk verify` draws its progress bar from them).
pub fn run_with_progress(
    opts: &SuiteOptions<'_>,
    mut progress: impl FnMut(&CheckRow, usize, usize),
) -> Result<Vec<CheckRow>> {
    let gpu = opts.gpu;
    let mut scan_impls = vec![
        ScanImpl::CpuBlocked { block_len: 256 },
        ScanImpl::CpuBlocked { block_len: 7 },
    ];
    let mut ssd_impls = vec![
        SsdImpl::CpuChunked { chunk: 64 },
        SsdImpl::CpuChunked { chunk: 256 },
    ];
    let mut step_impls = vec![StepImpl::Cpu];
    if gpu.is_some() {
        scan_impls.push(ScanImpl::Cuda);
        ssd_impls.push(SsdImpl::Cuda);
        step_impls.push(StepImpl::Cuda);
    }
    let jobs = jobs(opts.full, opts.seed);
    let total = jobs.len();
    let mut rows = Vec::new();
    for (done, job) in jobs.into_iter().enumerate() {
        let new = match job {
            Job::Scan(case, seed) => {
                let data = Mamba1Data::generate(&case, seed);
                let mut r = check_scan::<f32>(&scan_impls, &data, gpu)?;
                r.extend(check_scan::<bf16>(&scan_impls, &data, gpu)?);
                r
            }
            Job::Ssd(case, seed) => {
                let data = SsdData::generate(&case, seed);
                let mut impls = ssd_impls.clone();
                // The O(L^2) quadratic form is an independent oracle check on the
                // smaller shapes.
                if case.dims.seqlen <= 1024 {
                    impls.insert(0, SsdImpl::Quadratic);
                }
                let mut r = check_ssd::<f32>(&impls, &data, gpu)?;
                r.extend(check_ssd::<bf16>(&ssd_impls, &data, gpu)?);
                r
            }
            Job::Step(family, case, seed) => {
                let data = StepData::generate(&case, family == Family::Mamba2, seed);
                let mut r = check_step::<f32>(family, &step_impls, &data, gpu)?;
                r.extend(check_step::<bf16>(family, &step_impls, &data, gpu)?);
                r
            }
        };
        for r in new {
            progress(&r, done + 1, total);
            rows.push(r);
        }
    }
    Ok(rows)
}

/// Header of the verification table.
pub fn table_header() -> String {
    format!(
        "{:<20} {:<62} {:<5} {:>10} {:>10} {:>10} {:>10} {:>9}  {}",
        "implementation",
        "shape",
        "dtype",
        "rel err",
        "max abs",
        "state err",
        "budget",
        "time ms",
        "result"
    )
}

/// One formatted line of the verification table.
pub fn table_line(r: &CheckRow) -> String {
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2e}"));
    let verdict = if r.passed() {
        "PASS".to_string()
    } else if let Some(e) = &r.error {
        format!("FAIL: {e}")
    } else {
        "FAIL".to_string()
    };
    format!(
        "{:<20} {:<62} {:<5} {:>10} {:>10} {:>10} {:>10} {:>9.1}  {}",
        r.implementation,
        r.problem,
        r.dtype.name(),
        fmt(r.out.map(|c| c.rel_l2)),
        fmt(r.out.map(|c| c.max_abs)),
        fmt(r.state.map(|c| c.rel_l2)),
        format!("{:.1e}", r.out_budget),
        r.time_ms,
        verdict
    )
}
