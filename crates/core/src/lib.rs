//! Shared vocabulary of the SSM kernel workspace.
//!
//! Every implementation of an operation (the f64 oracle in `ssm-reference`, the
//! f32 CPU ports, the CUDA kernels) takes the same validated parameter struct
//! from this crate and returns the same output struct, so that one harness can
//! compare any two of them.
//!
//! - [`element`]: the input element types (f32, f16, bf16, and f64 for the oracle).
//! - [`error`]: [`SsmError`], the typed validation error naming the bad argument.
//! - [`mamba1`]: the Mamba-1 selective scan problem (docs/DESIGN.md §1.1, §2).
//! - [`mamba1_grad`]: its backward's gradient inputs and [`ScanGrads`] (docs/BACKWARD-MAMBA1.md).
//! - [`mamba2`]: the Mamba-2 SSD problem (docs/DESIGN.md §1.2, §2).
//! - [`mamba2_grad`]: the SSD backward's gradient inputs, [`mamba2_grad::SsdGrads`], the shared derivatives.
//! - [`decode`]: single-token decode steps for both families (docs/DESIGN.md §1.3).
//! - [`math`]: softplus, silu and the other scalar definitions every implementation shares.
//! - [`tolerance`]: error metrics and the tolerance model of docs/DESIGN.md §4.
//!
//! Every backend validates the same struct first, so a bad call fails the same
//! way everywhere, with the argument and the expected shape in the error:
//!
//! ```
//! use ssm_core::mamba2::{SsdDims, SsdParams};
//! use ssm_core::SsmError;
//!
//! let dims = SsdDims { batch: 1, seqlen: 4, heads: 2, head_dim: 2, d_state: 3, groups: 1 };
//! let (x, dt, a) = (vec![0.5f32; 16], vec![0.1f32; 8], vec![-1.0f32; 2]);
//! let (b, c) = (vec![0.2f32; 12], vec![0.3f32; 12]);
//! let p = SsdParams::new(dims, &x, &dt, &a, &b, &c);
//! assert_eq!(p.validate().unwrap().num_seqs, 1);
//!
//! // Varlen: one packed row of two sequences, lengths 1 and 3.
//! let cu = [0i64, 1, 4];
//! assert_eq!(p.with_cu_seqlens(&cu).validate().unwrap().num_seqs, 2);
//!
//! // B is (b, L, G, N) = 12 elements; pass 11 and the error says so.
//! let err = SsdParams { b: &b[1..], ..p }.validate().unwrap_err();
//! assert!(matches!(err, SsmError::Shape { arg: "B", expected_len: 12, got: 11, .. }));
//! assert!(err.to_string().contains("(b=1, L=4, G=1, N=3)"), "{err}");
//! ```

#![warn(missing_docs)]

/// The `with_*` setters of the options every sequence problem
/// (`SelectiveScanParams`, `SsdParams`) has under the same name and type: the
/// gate `z`, initial states, varlen offsets, final states, the finiteness check.
macro_rules! sequence_setters {
    ($a:lifetime, $t:ident) => {
        /// Gate the output with `silu(z)`; `z` has the output's layout.
        pub fn with_z(mut self, z: &$a [$t]) -> Self {
            self.z = Some(z);
            self
        }
        /// Start from these f32 states, one per batch row (or per sequence
        /// with `cu_seqlens`) instead of zero.
        pub fn with_initial_states(mut self, states: &$a [f32]) -> Self {
            self.initial_states = Some(states);
            self
        }
        /// Varlen input: batch 1, the packed L split into sequences at these
        /// prefix offsets (`num_seqs + 1` entries, `0 = cu[0] <= ... = L`); the
        /// state restarts at each sequence start.
        pub fn with_cu_seqlens(mut self, cu: &$a [i64]) -> Self {
            self.cu_seqlens = Some(cu);
            self
        }
        /// Also return the f32 state after each row's (or sequence's) last step.
        pub fn with_final_states(mut self, on: bool) -> Self {
            self.return_final_states = on;
            self
        }
        /// Reject NaN or Inf in any input (one extra pass over the inputs).
        pub fn with_check_finite(mut self, on: bool) -> Self {
            self.check_finite = on;
            self
        }
    };
}

pub mod decode;
pub mod element;
pub mod error;
pub mod mamba1;
pub mod mamba1_grad;
pub mod mamba2;
pub mod mamba2_grad;
pub mod math;
pub mod output;
pub mod planted;
pub mod shape;
pub mod tolerance;

pub use element::{DType, Element};
pub use error::SsmError;
pub use mamba1_grad::{ScanGradInputs, ScanGrads};
pub use mamba2_grad::SsdGrads;
pub use output::{ScanOutput, StepOutput};

/// Result alias used across the workspace.
pub type Result<T> = std::result::Result<T, SsmError>;
