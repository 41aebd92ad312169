//! The L-blocked f32 port of the CUDA scan: the state is carried in registers (here: locals) from one L-block to the next, multi-threaded over (batch, channel).
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Element, Result, ScanOutput};

pub fn selective_scan_blocked<T: Element>(
    p: &SelectiveScanParams<'_, T>,
    block_len: usize,
) -> Result<ScanOutput<T, f32>> {
    let _ = (p.validate()?, block_len);
    todo!("CPU-port helper implements this")
}
