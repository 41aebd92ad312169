//! Fuzz target `scan_bwd_diff`: Mamba-1 selective-scan backward: the L-blocked CPU backward against the f64 adjoint.
//!
//! The decoding and the checks live in `ssm_verify::fuzz::backward` (shared
//! with the corpus replay in crates/verify/tests/regressions.rs and `ssmk
//! fuzz`); the budgets are the backward property tests' (docs/TOLERANCES.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssm_verify::fuzz::{Ctx, Target};

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = Target::ScanBackward.run(data, &Ctx::CPU) {
        panic!("{finding}");
    }
});
