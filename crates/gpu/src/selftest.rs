//! The runtime's own kernels (`kernels/common/selftest.cu`): used by this
//! crate's tests, by the device smoke test and as budgeted variants, so the
//! whole compile -> report -> budget path is exercised even before any model
//! kernel exists.

use crate::{kernel_source, KernelSource, KernelVariant};

/// The self-test kernels, embedded at build time.
pub static SELFTEST_SOURCE: KernelSource = kernel_source!("common/selftest.cu");

/// Threads per block of `ssm_selftest_block_sum` (its `SELFTEST_THREADS`).
pub const BLOCK_SUM_THREADS: u32 = 256;

/// The self-test kernels as budgeted variants.
pub fn selftest_variants() -> Vec<KernelVariant> {
    vec![
        KernelVariant::new(
            "common.selftest_axpy",
            SELFTEST_SOURCE,
            "ssm_selftest_axpy",
            vec![("SELFTEST_SCALE", "2.0f".into())],
        ),
        KernelVariant::new(
            "common.selftest_block_sum",
            SELFTEST_SOURCE,
            "ssm_selftest_block_sum",
            vec![
                ("SELFTEST_SCALE", "1.0f".into()),
                ("SELFTEST_THREADS", BLOCK_SUM_THREADS.to_string()),
            ],
        ),
    ]
}
