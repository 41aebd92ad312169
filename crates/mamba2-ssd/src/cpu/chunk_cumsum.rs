//! Step 1: the processed step sizes `dt'` and the in-chunk cumulative log2-decays
//! `s_i = sum_{k<=i} dt'_k * A * log2(e)`, in f32, for every head of one chunk.

use ssm_core::mamba2::SsdParams;
use ssm_core::math::ssd_dt_f32;
use ssm_core::Element;

use super::plan::Chunk;

/// The `(H, len)` per-head scalars of one chunk: `dt'` and the cumulative sums.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkScalars<'a> {
    pub len: usize,
    pub dt: &'a [f32],
    pub log2_cumsum: &'a [f32],
}

impl<'a> ChunkScalars<'a> {
    /// `(dt', s)` of head `h`, each of length `len`.
    pub fn head(&self, h: usize) -> (&'a [f32], &'a [f32]) {
        let range = h * self.len..(h + 1) * self.len;
        (&self.dt[range.clone()], &self.log2_cumsum[range])
    }

    /// `s` at the last token of the chunk for head `h`: the log2 of the decay of
    /// the whole chunk.
    pub fn last(&self, h: usize) -> f32 {
        self.log2_cumsum[(h + 1) * self.len - 1]
    }
}

/// Fill `dt` and `log2_cumsum` (both `(H, chunk.len)`) for one chunk.
/// `log2_a[h] = A_h * log2(e)`, so that every decay is an `exp2` of a difference.
pub(crate) fn chunk_cumsum<T: Element>(
    p: &SsdParams<'_, T>,
    chunk: &Chunk,
    log2_a: &[f32],
    dt: &mut [f32],
    log2_cumsum: &mut [f32],
) {
    let heads = p.dims.heads;
    let rows = dt
        .chunks_exact_mut(chunk.len)
        .zip(log2_cumsum.chunks_exact_mut(chunk.len));
    for (h, (dt_h, s_h)) in rows.enumerate() {
        let bias = p.dt_bias.map_or(0.0, |b| b[h]);
        let mut s = 0f32;
        for (i, (dt_i, s_i)) in dt_h.iter_mut().zip(s_h.iter_mut()).enumerate() {
            let raw = p.dt[(chunk.token_start + i) * heads + h].to_f32();
            *dt_i = ssd_dt_f32(raw, bias, p.dt_softplus, p.dt_limit);
            s += *dt_i * log2_a[h];
            *s_i = s;
        }
    }
}
