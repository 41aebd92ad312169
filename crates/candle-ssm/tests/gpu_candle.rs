//! The ops on candle CUDA tensors against the pure-candle reference (feature
//! `cuda`; skips loudly without a GPU).
