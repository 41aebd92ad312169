//! The verification harness shared by the property tests, the fuzzers and the
//! `ssmk verify` command.
//!
//! - [`gen`]: random problems driven by `(case, seed)`, with inputs rounded to the
//!   dtype the implementation under test sees, so the oracle gets exactly those.
//! - [`impls`]: every implementation of each operation behind one enum, so each
//!   enters the same comparisons (reference, CPU ports, CUDA kernels).
//! - [`check`]: run one implementation on one problem and compare it with the
//!   oracle under the tolerance model of `ssm_core::tolerance`.
//! - [`conditioning`]: the oracle runs that say how far a near cancellation may
//!   widen a relative check (shared by the fuzzers and the property tests).
//! - [`suite`]: the named shapes of the main verification run and its table.

pub mod check;
pub mod conditioning;
pub mod fuzz;
pub mod gen;
pub mod impls;
pub mod suite;
