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
//!
//! ```
//! use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
//! use ssm_core::mamba2::{SsdDims, SsdParams};
//!
//! // Mamba-1: u, delta (b, D_in, L) = (1, 2, 3); A (D_in, N) = (2, 2); B, C (b, G, N, L).
//! let dims = Mamba1Dims { batch: 1, d_inner: 2, d_state: 2, seqlen: 3 };
//! let (u, delta) = (vec![1.0f32; 6], vec![0.5f32; 6]);
//! let a = vec![-1.0f32; 4];
//! let bc = vec![1.0f32; 6];
//! let grouped = BcInput::Grouped { groups: 1, data: &bc };
//! let p = SelectiveScanParams::new(dims, &u, &delta, &a, grouped, grouped);
//! let out = ssm_reference::selective_scan(&p).unwrap();
//! assert_eq!(out.out.len(), 6); // (b, D_in, L), in f64
//!
//! // Mamba-2 SSD: the recurrence and the quadratic (attention) form agree.
//! let dims = SsdDims { batch: 1, seqlen: 4, heads: 2, head_dim: 2, d_state: 3, groups: 1 };
//! let (x, dt, a) = (vec![0.5f32; 16], vec![0.1f32; 8], vec![-1.0f32; 2]);
//! let (b, c) = (vec![0.2f32; 12], vec![0.3f32; 12]);
//! let p = SsdParams::new(dims, &x, &dt, &a, &b, &c);
//! let rec = ssm_reference::ssd_recurrence(&p).unwrap();
//! let quad = ssm_reference::ssd_quadratic(&p).unwrap();
//! assert!(rec.out.iter().zip(&quad.out).all(|(r, q)| (r - q).abs() < 1e-12));
//!
//! // A wrong shape is a typed error, not a panic.
//! let short = SsdParams { x: &x[1..], ..p };
//! assert!(ssm_reference::ssd_recurrence(&short).is_err());
//! ```

#![warn(missing_docs)]

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
