//! The oracle: every operation of design.md §1 computed naively in f64.
//!
//! Inputs are taken in whatever element type the implementation under test saw and
//! widened to f64 exactly, so the only error left in a comparison is the
//! implementation's own. This crate never depends on anything GPU.

pub mod decode;
pub mod mamba1;
pub mod ssd;

pub use decode::{mamba1_step, mamba2_step};
pub use mamba1::selective_scan;
pub use ssd::{ssd_quadratic, ssd_recurrence};
