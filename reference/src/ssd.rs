//! Mamba-2 SSD: the recurrence and the quadratic (masked attention) form (design.md §1.2).
use ssm_core::mamba2::SsdParams;
use ssm_core::{Element, Result, ScanOutput};

/// The SSD recurrence `S_t = exp(a_t) S_{t-1} + dt'_t x_t B_t^T`, `y_t = S_t C_t + D x_t`, gated by z.
pub fn ssd_recurrence<T: Element>(p: &SsdParams<'_, T>) -> Result<ScanOutput<f64, f64>> {
    let _ = p.validate()?;
    todo!("reference helper implements this")
}

/// The quadratic form, computed independently of the recurrence.
pub fn ssd_quadratic<T: Element>(p: &SsdParams<'_, T>) -> Result<ScanOutput<f64, f64>> {
    let _ = p.validate()?;
    todo!("reference helper implements this")
}
