//! The oracle: every operation of docs/DESIGN.md §1 computed naively in f64.
//!
//! Inputs are taken in whatever element type the implementation under test saw and
//! widened to f64 exactly (parameters and initial states from f32), so the only
//! error left in a comparison is the implementation's own. Step sizes, softplus
//! and silu come from `ssm_core::math`, the definitions every implementation
//! shares. This crate never depends on anything GPU.
//!
//! - [`mamba1::selective_scan`]: the Mamba-1 recurrence, one step at a time
//!   (independent (sequence, channel) pairs run in parallel; each is sequential in t).
//! - [`ssd::ssd_recurrence`] and [`ssd::ssd_quadratic`]: Mamba-2 SSD as a
//!   recurrence and, independently, as masked attention; they check each other.
//! - [`decode::mamba1_step`], [`decode::mamba2_step`]: one token on a state cache.
//!
//! Every function validates its parameters first and returns the same
//! `ssm_core::SsmError` as the implementations under test; it never panics on a
//! call that validation accepts (including L = 0 and empty varlen sequences).

pub mod decode;
pub mod mamba1;
pub mod mamba1_backward;
mod sequence;
pub mod ssd;
pub mod ssd_backward;
#[cfg(test)]
mod test_support;

pub use decode::{mamba1_step, mamba2_step};
pub use mamba1::selective_scan;
pub use ssd::{ssd_quadratic, ssd_recurrence};
