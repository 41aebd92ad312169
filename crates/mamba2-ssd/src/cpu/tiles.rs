//! Loading strided tiles of the input tensors into contiguous f32 scratch, the CPU
//! counterpart of the kernel's global-to-shared-memory loads.

use ssm_core::Element;

/// A tile of `rows` rows of `cols` consecutive elements: row `r` starts at element
/// `first + r * row_stride` of its tensor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileView {
    pub first: usize,
    pub row_stride: usize,
    pub rows: usize,
    pub cols: usize,
}

impl TileView {
    /// The `(len, P)` tile of head `head` of `x` or `z` (`(b, L, H, P)`) for the
    /// `len` tokens starting at global token `token_start`.
    pub fn head(
        token_start: usize,
        len: usize,
        heads: usize,
        head_dim: usize,
        head: usize,
    ) -> Self {
        TileView {
            first: (token_start * heads + head) * head_dim,
            row_stride: heads * head_dim,
            rows: len,
            cols: head_dim,
        }
    }

    /// The `(len, N)` tile of group `group` of `B` or `C` (`(b, L, G, N)`).
    pub fn group(
        token_start: usize,
        len: usize,
        groups: usize,
        d_state: usize,
        group: usize,
    ) -> Self {
        TileView {
            first: (token_start * groups + group) * d_state,
            row_stride: groups * d_state,
            rows: len,
            cols: d_state,
        }
    }

    /// Widen the tile to f32 into `out` (row-major, `rows * cols` values).
    pub fn load<T: Element>(&self, src: &[T], out: &mut [f32]) {
        let out = &mut out[..self.rows * self.cols];
        for (r, dst) in out.chunks_exact_mut(self.cols).enumerate() {
            let start = self.first + r * self.row_stride;
            for (d, s) in dst.iter_mut().zip(&src[start..start + self.cols]) {
                *d = s.to_f32();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_tile_picks_one_head_of_consecutive_tokens() {
        // (tokens=3, H=2, P=2): value = 10 * token + 2 * head + p
        let x: Vec<f32> = (0..3)
            .flat_map(|t| {
                (0..2).flat_map(move |h| (0..2).map(move |p| (10 * t + 2 * h + p) as f32))
            })
            .collect();
        let mut out = [0f32; 4];
        TileView::head(1, 2, 2, 2, 1).load(&x, &mut out);
        assert_eq!(out, [12.0, 13.0, 22.0, 23.0]);
    }

    #[test]
    fn group_tile_widens_half_precision() {
        let b: Vec<half::bf16> = (0..12).map(|v| half::bf16::from_f32(v as f32)).collect();
        let mut out = [0f32; 6];
        // (tokens=2, G=2, N=3), group 1 of tokens 0..2
        TileView::group(0, 2, 2, 3, 1).load(&b, &mut out);
        assert_eq!(out, [3.0, 4.0, 5.0, 9.0, 10.0, 11.0]);
    }
}
