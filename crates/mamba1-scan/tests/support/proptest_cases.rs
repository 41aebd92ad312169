//! The property tests' configuration: one reader of `SSM_PROPTEST_CASES` for
//! the kernel crates' tests (mamba1-scan's, and mamba2-ssd's and
//! context-parallel's, which include this file by `#[path]`). CI runs each
//! file's default number of cases; `SSM_PROPTEST_CASES=N` runs N.

use proptest::test_runner::Config;

/// `default_cases` cases unless `SSM_PROPTEST_CASES` says otherwise, and at
/// most `max_shrink_iters` shrinking steps (proptest's default where `None`).
pub fn config(default_cases: u32, max_shrink_iters: Option<u32>) -> Config {
    let defaults = Config::default();
    let env_cases = std::env::var("SSM_PROPTEST_CASES").ok();
    Config {
        cases: env_cases
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases),
        max_shrink_iters: max_shrink_iters.unwrap_or(defaults.max_shrink_iters),
        ..defaults
    }
}
