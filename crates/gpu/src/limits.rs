//! The per-device limits that kernel selection and occupancy planning depend on
//! (shared memory per block and per SM, registers, threads and blocks per SM, SM
//! count, L2 size), as one value: read from the device through its attributes
//! ([`crate::Gpu::limits`]), or one of the constants below for planning without a
//! GPU (tests, `ssmk resources`, the selection grid test).
//!
//! Nothing else in the workspace should write a card's limits as literals: the
//! planners take a `&DeviceLimits`, and kernels whose `static_assert`s check a
//! limit receive it as a `-D` define from their launcher.

use serde::{Deserialize, Serialize};

/// Limits of one device, in the units the CUDA driver reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceLimits {
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Most dynamic shared memory one block may use after opting in
    /// (`CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`).
    pub smem_per_block_optin: u32,
    /// Shared memory of one SM (`..._MAX_SHARED_MEMORY_PER_MULTIPROCESSOR`).
    pub smem_per_sm: u32,
    /// Shared memory the system reserves per resident block
    /// (`..._RESERVED_SHARED_MEMORY_PER_BLOCK`).
    pub smem_reserved_per_block: u32,
    /// 32-bit registers of one SM (`..._MAX_REGISTERS_PER_MULTIPROCESSOR`).
    pub registers_per_sm: u32,
    /// Registers are allocated per warp in units of this many (256 on sm_80 and
    /// sm_90; the driver has no attribute for it).
    pub register_unit_per_warp: u32,
    /// Resident threads per SM (`..._MAX_THREADS_PER_MULTIPROCESSOR`).
    pub max_threads_per_sm: u32,
    /// Resident blocks per SM (`..._MAX_BLOCKS_PER_MULTIPROCESSOR`).
    pub max_blocks_per_sm: u32,
    /// L2 cache bytes (`..._L2_CACHE_SIZE`).
    pub l2_bytes: u32,
}

impl DeviceLimits {
    /// H100 SXM (sm_90, 132 SMs): 227 KiB per block, 228 KiB per SM, 50 MiB L2.
    pub const H100_SXM: DeviceLimits = DeviceLimits {
        sm_count: 132,
        smem_per_block_optin: 227 * 1024,
        smem_per_sm: 228 * 1024,
        smem_reserved_per_block: 1024,
        registers_per_sm: 65536,
        register_unit_per_warp: 256,
        max_threads_per_sm: 2048,
        max_blocks_per_sm: 32,
        l2_bytes: 50 * 1024 * 1024,
    };

    /// H200 (sm_90, the H100's SM with HBM3e): the same on-chip limits. The
    /// device's own attributes are what a run plans from; this is for tests.
    pub const H200: DeviceLimits = DeviceLimits::H100_SXM;

    /// A smaller card in the manner of sm_86 (an RTX 3090 / A10 class part):
    /// 100 KiB of shared memory per SM (99 KiB per block), 1536 threads and 16
    /// blocks per SM, 82 SMs, 6 MiB of L2.
    pub const SM86_SMALL: DeviceLimits = DeviceLimits {
        sm_count: 82,
        smem_per_block_optin: 99 * 1024,
        smem_per_sm: 100 * 1024,
        smem_reserved_per_block: 1024,
        registers_per_sm: 65536,
        register_unit_per_warp: 256,
        max_threads_per_sm: 1536,
        max_blocks_per_sm: 16,
        l2_bytes: 6 * 1024 * 1024,
    };

    /// A100 (sm_80, 108 SMs): 163 KiB per block, 164 KiB per SM, 40 MiB L2.
    pub const A100: DeviceLimits = DeviceLimits {
        sm_count: 108,
        smem_per_block_optin: 163 * 1024,
        smem_per_sm: 164 * 1024,
        smem_reserved_per_block: 1024,
        registers_per_sm: 65536,
        register_unit_per_warp: 256,
        max_threads_per_sm: 2048,
        max_blocks_per_sm: 32,
        l2_bytes: 40 * 1024 * 1024,
    };

    /// Ada (sm_89: RTX 4090, L4, L40S): the sm_86 card's shared memory and
    /// threads per SM, 24 blocks per SM (128 SMs and 72 MiB of L2 as on the 4090).
    pub const SM89_ADA: DeviceLimits = DeviceLimits {
        sm_count: 128,
        max_blocks_per_sm: 24,
        l2_bytes: 72 * 1024 * 1024,
        ..DeviceLimits::SM86_SMALL
    };

    /// Consumer Blackwell (compute capability 12.0, RTX 50): 99 KiB per block,
    /// 100 KiB per SM, 1536 threads and 32 blocks per SM (170 SMs, 96 MiB L2
    /// as on the 5090).
    pub const SM120_CONSUMER: DeviceLimits = DeviceLimits {
        sm_count: 170,
        max_blocks_per_sm: 32,
        l2_bytes: 96 * 1024 * 1024,
        ..DeviceLimits::SM86_SMALL
    };

    /// Datacenter Blackwell (compute capability 10.0, B200): the H100's
    /// on-chip limits (227 KiB per block, 228 KiB per SM, 2048 threads and 32
    /// blocks per SM) with 148 SMs and 126 MiB of L2.
    pub const B200: DeviceLimits = DeviceLimits {
        sm_count: 148,
        l2_bytes: 126 * 1024 * 1024,
        ..DeviceLimits::H100_SXM
    };

    /// The named constants, for tests that check planners on each.
    pub const KNOWN: [(&'static str, DeviceLimits); 3] = [
        ("H100 SXM", DeviceLimits::H100_SXM),
        ("H200", DeviceLimits::H200),
        ("sm_86-like (100 KiB smem/SM)", DeviceLimits::SM86_SMALL),
    ];

    /// Resident blocks per SM of a kernel with `registers` per thread, `threads`
    /// per block and `smem_bytes` of shared memory per block (static + dynamic):
    /// the least of what registers, shared memory, threads and the block limit
    /// allow (the occupancy calculator's rule; 0 if one block does not fit).
    pub fn blocks_per_sm(&self, registers: u32, threads: u32, smem_bytes: usize) -> usize {
        let threads = threads.max(1) as usize;
        let warps = threads.div_ceil(32);
        let unit = self.register_unit_per_warp.max(1) as usize;
        let regs_per_warp = (registers as usize * 32).div_ceil(unit) * unit;
        let by_regs = (self.registers_per_sm as usize)
            .checked_div(regs_per_warp * warps)
            .unwrap_or(usize::MAX);
        let by_smem =
            self.smem_per_sm as usize / (smem_bytes + self.smem_reserved_per_block as usize);
        let by_threads = self.max_threads_per_sm as usize / threads;
        by_regs
            .min(by_smem)
            .min(by_threads)
            .min(self.max_blocks_per_sm as usize)
    }

    /// Whether one block with this much dynamic shared memory can launch.
    pub fn smem_fits_block(&self, smem_bytes: usize) -> bool {
        smem_bytes <= self.smem_per_block_optin as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_follows_the_scarcest_resource() {
        let h = DeviceLimits::H100_SXM;
        // 128 threads at 168 registers: 168 * 32 = 5376 per warp, 21504 per block,
        // 3 blocks in 64 Ki registers.
        assert_eq!(h.blocks_per_sm(168, 128, 10 * 1024), 3);
        // Shared memory bound: 3 x (75 KiB + 1 KiB) fit 228 KiB, 4 do not.
        assert_eq!(h.blocks_per_sm(32, 128, 75 * 1024), 3);
        // Threads bound: 2048 / 1024.
        assert_eq!(h.blocks_per_sm(16, 1024, 0), 2);
        // The block limit.
        assert_eq!(h.blocks_per_sm(16, 32, 0), 32);
        // Too much shared memory for the small card: no block fits.
        let s = DeviceLimits::SM86_SMALL;
        assert_eq!(s.blocks_per_sm(32, 128, 120 * 1024), 0);
        assert!(!s.smem_fits_block(100 * 1024));
        assert!(h.smem_fits_block(227 * 1024));
        assert_eq!(s.blocks_per_sm(16, 1024, 0), 1);
    }
}
