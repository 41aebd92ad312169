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

/// The `with_*` setters of the options every sequence problem
/// (`SelectiveScanParams`, `SsdParams`) has under the same name and type: the
/// gate `z`, initial states, varlen offsets, final states, the finiteness check.
macro_rules! sequence_setters {
    ($a:lifetime, $t:ident) => {
        pub fn with_z(mut self, z: &$a [$t]) -> Self {
            self.z = Some(z);
            self
        }
        pub fn with_initial_states(mut self, states: &$a [f32]) -> Self {
            self.initial_states = Some(states);
            self
        }
        pub fn with_cu_seqlens(mut self, cu: &$a [i64]) -> Self {
            self.cu_seqlens = Some(cu);
            self
        }
        pub fn with_final_states(mut self, on: bool) -> Self {
            self.return_final_states = on;
            self
        }
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
