//! Fuzz target `cpu_determinism`: the CPU ports are bitwise repeatable on thread pools of 1 and 2 threads.
//!
//! The decoding and the checks live in `ssm_verify::fuzz` (shared with the
//! corpus replay in crates/verify/tests/regressions.rs and `ssmk fuzz`);
//! docs/FUZZING.md has the rule each implementation is held to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssm_verify::fuzz::{Ctx, Target};

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = Target::Determinism.run(data, &Ctx::CPU) {
        panic!("{finding}");
    }
});
