//! An upstream binary using our crates and candle's CUDA backend together: it
//! only has to type-check (ci/upstream-check.sh runs `cargo check`, no GPU).

// Linked in, so every library crate is compiled against the one cudarc that
// cargo resolved for the whole graph.
use mamba1_scan as _;
use mamba2_ssd as _;
use ssm_core as _;

fn main() {
    let ours = ssm_gpu::Gpu::new(0).map(|_| ());
    let theirs = candle_core::Device::new_cuda(0).map(|_| ());
    println!("ssm-gpu: {:?}; candle: {:?}", ours.err(), theirs.err());
}
