//! The two f32 building blocks of every matmul of the chunked algorithm, written so
//! that the compiler vectorises them without fast-math.
//!
//! f32 addition is not associative, so the compiler may not split a running sum
//! into SIMD lanes by itself. [`vec_mat_acc`] therefore vectorises across
//! independent outputs (the contiguous inner dimension) and keeps a block of them
//! in registers over the whole reduction; [`dot`] splits its reduction into eight
//! explicit partial sums.

/// Width of the blocks that mop up the rest of a row, and of [`dot`]'s partial sums.
const NARROW: usize = 8;

/// `c[l] += sum_k a[k] * b[k * b_stride + l]` for `l < c.len()`: a row vector times
/// a row-major matrix whose rows are `b_stride` apart, accumulated into `c`.
///
/// Each output is summed in order of `k`, exactly like the naive loop, so the
/// result is bit-for-bit the same on every instruction set (no FMA contraction).
pub(crate) fn vec_mat_acc(a: &[f32], b: &[f32], b_stride: usize, c: &mut [f32]) {
    let width = c.len();
    if a.is_empty() || width == 0 {
        return;
    }
    assert!(
        b_stride >= width && b.len() >= (a.len() - 1) * b_stride + width,
        "matrix too small for {} rows of {width} (stride {b_stride})",
        a.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above, which is the only
        // requirement of a `#[target_feature(enable = "avx2")]` function.
        unsafe { vec_mat_acc_avx2(a, b, b_stride, c) };
        return;
    }
    // 32 outputs = 8 SSE registers of accumulators.
    vec_mat_acc_blocked::<32>(a, b, b_stride, c);
}

/// The same loops compiled for AVX2: 64 outputs = 8 AVX registers of accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vec_mat_acc_avx2(a: &[f32], b: &[f32], b_stride: usize, c: &mut [f32]) {
    vec_mat_acc_blocked::<64>(a, b, b_stride, c);
}

/// [`vec_mat_acc`] with `BLOCK` outputs kept in registers per pass over `a`.
#[inline(always)]
fn vec_mat_acc_blocked<const BLOCK: usize>(a: &[f32], b: &[f32], b_stride: usize, c: &mut [f32]) {
    let mut col = 0;
    let mut wide = c.chunks_exact_mut(BLOCK);
    for block in &mut wide {
        accumulate_block::<BLOCK>(a, b, b_stride, col, block);
        col += BLOCK;
    }
    let mut narrow = wide.into_remainder().chunks_exact_mut(NARROW);
    for block in &mut narrow {
        accumulate_block::<NARROW>(a, b, b_stride, col, block);
        col += NARROW;
    }
    for block in narrow.into_remainder().chunks_exact_mut(1) {
        accumulate_block::<1>(a, b, b_stride, col, block);
        col += 1;
    }
}

/// One register block of [`vec_mat_acc`]: `W` outputs starting at column `col`.
#[inline(always)]
fn accumulate_block<const W: usize>(
    a: &[f32],
    b: &[f32],
    b_stride: usize,
    col: usize,
    c: &mut [f32],
) {
    let c: &mut [f32; W] = c.try_into().expect("block has W outputs");
    let mut acc = *c;
    for (k, &ak) in a.iter().enumerate() {
        let start = k * b_stride + col;
        let row: &[f32; W] = b[start..start + W].try_into().expect("W columns");
        for (o, &v) in acc.iter_mut().zip(row) {
            *o += ak * v;
        }
    }
    *c = acc;
}

/// `sum_k a[k] * b[k]` over the common length, in eight interleaved partial sums.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut partial = [0f32; NARROW];
    let mut a_blocks = a.chunks_exact(NARROW);
    let mut b_blocks = b.chunks_exact(NARROW);
    for (x, y) in (&mut a_blocks).zip(&mut b_blocks) {
        for ((p, &x), &y) in partial.iter_mut().zip(x).zip(y) {
            *p += x * y;
        }
    }
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(&x, &y)| x * y)
        .sum();
    partial.iter().sum::<f32>() + tail
}

/// `x *= alpha`, elementwise.
pub(crate) fn scale(alpha: f32, x: &mut [f32]) {
    for v in x {
        *v *= alpha;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_vec_mat(a: &[f32], b: &[f32], stride: usize, width: usize) -> Vec<f64> {
        (0..width)
            .map(|l| {
                a.iter()
                    .enumerate()
                    .map(|(k, &ak)| ak as f64 * b[k * stride + l] as f64)
                    .sum()
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A cheap deterministic sequence in [-1, 1); no need for a real RNG here.
        (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32)
                    * 2.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn vec_mat_matches_naive_for_every_block_remainder() {
        // Widths hit the 64- and 32-blocks, the 8-block and the scalar tail paths.
        for width in [1, 7, 8, 9, 31, 32, 33, 45, 64, 77, 136] {
            for rows in [1, 3, 17] {
                let stride = width + 3;
                let a = values(rows, 1);
                let b = values(rows * stride, 2);
                let init = values(width, 3);
                let mut c = init.clone();
                vec_mat_acc(&a, &b, stride, &mut c);
                let expect = naive_vec_mat(&a, &b, stride, width);
                for l in 0..width {
                    let want = init[l] as f64 + expect[l];
                    assert!(
                        (c[l] as f64 - want).abs() < 1e-5,
                        "width {width} rows {rows} col {l}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let (rows, width, stride) = (19, 100, 104);
        let a = values(rows, 6);
        let b = values(rows * stride, 7);
        let mut dispatched = values(width, 8);
        let mut portable = dispatched.clone();
        vec_mat_acc(&a, &b, stride, &mut dispatched);
        vec_mat_acc_blocked::<32>(&a, &b, stride, &mut portable);
        assert_eq!(dispatched, portable);
    }

    #[test]
    fn empty_operands_leave_the_output_alone() {
        let mut c = [1.0f32, 2.0];
        vec_mat_acc(&[], &[], 2, &mut c);
        assert_eq!(c, [1.0, 2.0]);
    }

    #[test]
    fn dot_matches_naive() {
        for n in [0, 1, 7, 8, 9, 64, 67] {
            let (a, b) = (values(n, 4), values(n, 5));
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5, "n = {n}");
        }
    }
}
