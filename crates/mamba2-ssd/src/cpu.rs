//! The 5-step chunked SSD in f32 (cumsum, intra-chunk, chunk state, state passing, inter-chunk output), multi-threaded over (batch, head).
use ssm_core::mamba2::SsdParams;
use ssm_core::{Element, Result, ScanOutput};

pub fn ssd_chunked<T: Element>(
    p: &SsdParams<'_, T>,
    chunk_size: usize,
) -> Result<ScanOutput<T, f32>> {
    let _ = (p.validate()?, chunk_size);
    todo!("CPU-port helper implements this")
}
