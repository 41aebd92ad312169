//! Mamba-1 selective scan, sequential over t (design.md §1.1).
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Element, Result, ScanOutput};

/// Naive f64 selective scan with every option of design.md §1.1.
/// `out` is `(b, D_in, L)`; final states `(b or num_seqs, D_in, N)` when requested.
pub fn selective_scan<T: Element>(p: &SelectiveScanParams<'_, T>) -> Result<ScanOutput<f64, f64>> {
    let _ = p.validate()?;
    todo!("reference helper implements this")
}
