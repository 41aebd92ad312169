//! Outputs shared by every implementation.

use crate::Element;

/// Output of a full-sequence forward pass.
///
/// `out` has the layout of the input `u`/`x` (Mamba-1 `(b, D_in, L)`, Mamba-2
/// `(b, L, H, P)`); `final_states` is present when requested, one state per batch
/// row, or per sequence for varlen input.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanOutput<O, S> {
    /// The output, in the layout of the input.
    pub out: Vec<O>,
    /// The final states when requested: `(b or num_seqs, D_in, N)` or `(b or
    /// num_seqs, H, P, N)`, f32 on the fast paths, f64 from the oracle.
    pub final_states: Option<Vec<S>>,
}

impl<O: Element, S: Element> ScanOutput<O, S> {
    /// Widen to f64 for comparison against the oracle.
    pub fn to_f64(&self) -> ScanOutput<f64, f64> {
        ScanOutput {
            out: crate::element::widen(&self.out),
            final_states: self.final_states.as_deref().map(crate::element::widen),
        }
    }
}

/// Output of a decode step; the state is updated in place.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput<O> {
    /// The output, `(b, D_in)` or `(b, H, P)`.
    pub out: Vec<O>,
}
