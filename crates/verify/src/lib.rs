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
//!
//! One problem, drawn from a seed, checked on the CPU ports against the oracle:
//!
//! ```
//! use ssm_verify::check::check_ssd;
//! use ssm_verify::gen::{SsdCase, SsdData};
//! use ssm_verify::impls::SsdImpl;
//!
//! // (b, L, H, P, N, G) = (1, 40, 2, 4, 8, 1), every option on.
//! let case = SsdCase::plain(1, 40, 2, 4, 8, 1).all_options();
//! let data = SsdData::generate(&case, 7); // the same seed gives the same data
//! let impls = [SsdImpl::Quadratic, SsdImpl::CpuChunked { chunk: 16 }];
//! let rows = check_ssd::<half::bf16>(&impls, &data, None).unwrap();
//! for row in &rows {
//!     assert!(row.passed(), "{} on {}: {:?}", row.implementation, row.problem, row.out);
//! }
//! ```

#![warn(missing_docs)]

pub mod check;
pub mod conditioning;
pub mod fuzz;
pub mod gen;
pub mod impls;
pub mod suite;
