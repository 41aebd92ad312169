//! On-chip memory use of one kernel launch: registers and shared memory per
//! block, spills, and how many blocks fit on one SM (which of the two runs out).
//!
//! Built from the runtime's attribute read ([`ssm_gpu::KernelResources`]),
//! ptxas's report when the runtime has one (spill bytes), the launch shape and
//! the limits of the device it ran on ([`SmLimits`], from its attributes).

use serde::{Deserialize, Serialize};
use ssm_gpu::{DeviceLimits, KernelResources, PtxasFunction};

/// Per-SM limits of the card a launch ran on. A run builds them from its
/// device's attributes (`SmLimits::from(&gpu.limits()?)`, [`DeviceLimits`]);
/// the constants are for tests and runs without a device.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmLimits {
    /// Registers per SM.
    pub registers: u32,
    /// Register allocation granularity per warp.
    pub register_unit_per_warp: u32,
    /// Shared memory per SM, bytes.
    pub smem_bytes: u32,
    /// Shared memory the system reserves per resident block.
    pub smem_reserved_per_block: u32,
    /// Resident threads per SM.
    pub threads: u32,
    /// Resident blocks per SM.
    pub blocks: u32,
}

impl SmLimits {
    /// The limits of a device, as `ssm-gpu` read them from its attributes.
    pub const fn from_device(l: &DeviceLimits) -> SmLimits {
        SmLimits {
            registers: l.registers_per_sm,
            register_unit_per_warp: l.register_unit_per_warp,
            smem_bytes: l.smem_per_sm,
            smem_reserved_per_block: l.smem_reserved_per_block,
            threads: l.max_threads_per_sm,
            blocks: l.max_blocks_per_sm,
        }
    }

    /// H100 SXM (sm_90): 64 Ki registers, 228 KiB shared memory, 2048 threads, 32 blocks.
    pub const H100_SXM: SmLimits = SmLimits::from_device(&DeviceLimits::H100_SXM);
    /// H200: the H100's SM.
    pub const H200: SmLimits = SmLimits::from_device(&DeviceLimits::H200);
}

impl From<&DeviceLimits> for SmLimits {
    fn from(l: &DeviceLimits) -> SmLimits {
        SmLimits::from_device(l)
    }
}

/// The shape of a launch that resources alone do not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchShape {
    /// Threads per block.
    pub threads_per_block: u32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_smem_bytes: u32,
}

/// Which per-SM resource bounds the resident blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OccupancyLimiter {
    /// Registers.
    Registers,
    /// Shared memory.
    SharedMemory,
    /// Threads per SM.
    Threads,
    /// Blocks per SM.
    Blocks,
}

/// SRAM use of one kernel launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SramUse {
    /// Threads per block.
    pub threads_per_block: u32,
    /// Registers per thread.
    pub registers_per_thread: u32,
    /// Registers x threads (before allocation rounding).
    pub register_bytes_per_block: u64,
    /// Static shared memory per block, bytes.
    pub static_smem_bytes: u32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_smem_bytes: u32,
    /// Per-thread local memory (stack frame and spills), from the function attribute.
    pub local_bytes_per_thread: u32,
    /// ptxas's spill stores + loads, when the runtime kept its report.
    pub spill_bytes: Option<u32>,
    /// Resident blocks per SM.
    pub blocks_per_sm: u32,
    /// The resource that bounds `blocks_per_sm`.
    pub limiter: OccupancyLimiter,
    /// Registers plus shared memory of all resident blocks of one SM.
    pub sram_bytes_per_sm: u64,
}

impl SramUse {
    /// The occupancy of a launch of a kernel with `resources` (and ptxas's
    /// report, for spills) in `launch`'s shape on an SM with `limits`.
    pub fn new(
        resources: &KernelResources,
        ptxas: Option<&PtxasFunction>,
        launch: LaunchShape,
        limits: &SmLimits,
    ) -> SramUse {
        let threads = launch.threads_per_block.max(1);
        let regs = resources.registers;
        let smem = resources.static_smem_bytes + launch.dynamic_smem_bytes;
        let warps = threads.div_ceil(32);
        let unit = limits.register_unit_per_warp.max(1);
        let regs_per_warp = (regs * 32).div_ceil(unit) * unit;
        let by_regs = if regs_per_warp == 0 {
            u32::MAX
        } else {
            limits.registers / (regs_per_warp * warps)
        };
        let by_smem = if smem == 0 {
            u32::MAX
        } else {
            limits.smem_bytes / (smem + limits.smem_reserved_per_block)
        };
        let by_threads = limits.threads / threads;
        let (blocks_per_sm, limiter) = [
            (by_regs, OccupancyLimiter::Registers),
            (by_smem, OccupancyLimiter::SharedMemory),
            (by_threads, OccupancyLimiter::Threads),
            (limits.blocks, OccupancyLimiter::Blocks),
        ]
        .into_iter()
        .fold((u32::MAX, OccupancyLimiter::Blocks), |best, x| {
            if x.0 < best.0 {
                x
            } else {
                best
            }
        });
        let register_bytes_per_block = 4 * u64::from(regs) * u64::from(threads);
        SramUse {
            threads_per_block: threads,
            registers_per_thread: regs,
            register_bytes_per_block,
            static_smem_bytes: resources.static_smem_bytes,
            dynamic_smem_bytes: launch.dynamic_smem_bytes,
            local_bytes_per_thread: resources.local_bytes,
            spill_bytes: ptxas.map(PtxasFunction::spill_bytes),
            blocks_per_sm,
            limiter,
            sram_bytes_per_sm: u64::from(blocks_per_sm)
                * (register_bytes_per_block + u64::from(smem)),
        }
    }

    /// Static plus dynamic shared memory per block.
    pub fn smem_per_block(&self) -> u32 {
        self.static_smem_bytes + self.dynamic_smem_bytes
    }

    /// Spill traffic per thread: ptxas's count when known, else the local-memory size
    /// (which also counts a stack frame that need not be spills).
    pub fn spills(&self) -> u32 {
        self.spill_bytes.unwrap_or(self.local_bytes_per_thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(registers: u32, static_smem_bytes: u32) -> KernelResources {
        KernelResources {
            registers,
            static_smem_bytes,
            local_bytes: 0,
            max_threads_per_block: 1024,
            max_dynamic_smem_bytes: 48 * 1024,
        }
    }

    #[test]
    fn register_bound_launch() {
        // 128 regs x 256 threads = 32 Ki registers per block: 2 blocks per SM.
        let s = SramUse::new(
            &resources(128, 0),
            None,
            LaunchShape {
                threads_per_block: 256,
                dynamic_smem_bytes: 0,
            },
            &SmLimits::H100_SXM,
        );
        assert_eq!(
            (s.blocks_per_sm, s.limiter),
            (2, OccupancyLimiter::Registers)
        );
        assert_eq!(s.register_bytes_per_block, 128 * 256 * 4);
        assert_eq!(s.sram_bytes_per_sm, 2 * 128 * 256 * 4);
    }

    #[test]
    fn shared_memory_bound_launch_counts_static_and_dynamic() {
        let s = SramUse::new(
            &resources(32, 16 * 1024),
            None,
            LaunchShape {
                threads_per_block: 128,
                dynamic_smem_bytes: 80 * 1024,
            },
            &SmLimits::H100_SXM,
        );
        assert_eq!(s.smem_per_block(), 96 * 1024);
        // (96 + 1) KiB per block in 228 KiB: 2 blocks.
        assert_eq!(
            (s.blocks_per_sm, s.limiter),
            (2, OccupancyLimiter::SharedMemory)
        );
    }

    #[test]
    fn spills_prefer_ptxas_counts() {
        let mut r = resources(255, 0);
        r.local_bytes = 64;
        let p = PtxasFunction {
            spill_store_bytes: 8,
            spill_load_bytes: 8,
            ..Default::default()
        };
        let launch = LaunchShape {
            threads_per_block: 64,
            dynamic_smem_bytes: 0,
        };
        assert_eq!(
            SramUse::new(&r, Some(&p), launch, &SmLimits::H100_SXM).spills(),
            16
        );
        assert_eq!(
            SramUse::new(&r, None, launch, &SmLimits::H100_SXM).spills(),
            64
        );
    }
    #[test]
    fn blocks_per_sm_follow_the_device_limits() {
        // 64 KiB of shared memory per block: 3 fit the H100's 228 KiB, 1 a
        // 100 KiB card's.
        let launch = LaunchShape {
            threads_per_block: 128,
            dynamic_smem_bytes: 64 * 1024,
        };
        let r = resources(64, 0);
        let h100 = SramUse::new(&r, None, launch, &SmLimits::H100_SXM);
        let small = SmLimits::from(&DeviceLimits::SM86_SMALL);
        let s = SramUse::new(&r, None, launch, &small);
        assert_eq!((h100.blocks_per_sm, s.blocks_per_sm), (3, 1));
        assert_eq!(s.limiter, OccupancyLimiter::SharedMemory);
        assert_eq!(SmLimits::H200, SmLimits::H100_SXM);
        // The same answer as the device limits' own occupancy rule.
        assert_eq!(
            h100.blocks_per_sm as usize,
            DeviceLimits::H100_SXM.blocks_per_sm(64, 128, 64 * 1024)
        );
    }
}
