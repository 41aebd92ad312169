//! Every planted bug (`ssm_core::planted`) must be caught by the fuzz targets'
//! logic run from random seeds, as `ssmk fuzz` runs it. Prints the catch table
//! of docs/FUZZING.md (cases and wall time until the first failing case).
//!
//! ```text
//! cargo test -p ssm-verify --features planted-bugs --test planted_bugs -- --nocapture
//! ```
//!
//! `SSM_PLANTED_REPORT=<file>` also writes the table rows (markdown) to a file;
//! `SSM_PLANTED_MAX_CASES` bounds the search per bug (default 20000);
//! `SSM_FUZZ_SEED` changes the seed. ci/planted-bugs.sh runs this and the
//! property tests with each bug.
#![cfg(feature = "planted-bugs")]

use std::time::Instant;

use ssm_core::planted::{self, Bug};
use ssm_verify::fuzz::{case_seed, random_case, Ctx, Finding, Target};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first failing case of a search.
struct Catch {
    cases: u64,
    seconds: f64,
    case_seed: u64,
    finding: Finding,
}

/// Random cases over every target until one fails.
fn hunt(seed: u64, max_cases: u64) -> Option<Catch> {
    let start = Instant::now();
    (0..max_cases).find_map(|index| {
        let case = case_seed(seed, index);
        let (target, bytes) = random_case(case, &Target::ALL);
        target.run(&bytes, &Ctx::CPU).err().map(|finding| Catch {
            cases: index + 1,
            seconds: start.elapsed().as_secs_f64(),
            case_seed: case,
            finding,
        })
    })
}

#[test]
fn every_planted_bug_is_caught_by_the_fuzz_logic() {
    let seed = env_u64("SSM_FUZZ_SEED", 0x9a17);
    let max_cases = env_u64("SSM_PLANTED_MAX_CASES", 20_000);
    let mut rows = Vec::new();
    let mut missed = Vec::new();
    for bug in Bug::ALL {
        planted::set(Some(bug));
        let catch = hunt(seed, max_cases);
        planted::set(None);
        let row = match &catch {
            Some(c) => {
                // The same case passes without the bug: the finding is the bug's.
                let (target, bytes) = random_case(c.case_seed, &Target::ALL);
                if let Err(f) = target.run(&bytes, &Ctx::CPU) {
                    panic!("case {} fails without a planted bug: {f}", c.case_seed);
                }
                let first_line = c.finding.to_string();
                let first_line = first_line.lines().next().unwrap_or_default().to_string();
                format!(
                    "| {} | yes | {} | {:.3} | {} | `{}` |",
                    bug.name(),
                    c.cases,
                    c.seconds,
                    c.finding.target,
                    first_line.replace('|', "/")
                )
            }
            None => {
                missed.push(bug);
                format!("| {} | NO | > {max_cases} | | | |", bug.name())
            }
        };
        eprintln!("{row}");
        rows.push(row);
    }
    if let Ok(path) = std::env::var("SSM_PLANTED_REPORT") {
        std::fs::write(&path, rows.join("\n") + "\n").expect("writing the report");
    }
    let caught = Bug::ALL.len() - missed.len();
    eprintln!(
        "fuzz logic caught {caught} of {} planted bugs (seed {seed})",
        Bug::ALL.len()
    );
    assert!(missed.is_empty(), "not caught: {missed:?}");
}
