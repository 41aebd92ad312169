//! Routing gradients to more inputs than candle's custom ops take.
//!
//! candle's autograd knows custom ops of at most three arguments (`CustomOp1/2/3`),
//! and the SSD forward has up to eight differentiable inputs. Rather than
//! concatenating inputs (a copy of each, and `x` is the largest tensor of the
//! call), every input is attached to a *gradient token*: a one-element f32 tensor
//! made by a chain of `Sink` ops over the inputs. The operation itself is a
//! `CustomOp1` on the token and reads its inputs from tensors it holds (no copy).
//!
//! Backward: the operation's node comes before the token's nodes in candle's
//! reverse topological order (the token is its argument), so its `bwd` runs
//! first, computes every gradient in one pass, stores them in the shared
//! [`GradSlot`] and returns a zero gradient for the token; each `Sink`'s `bwd`
//! then hands its own inputs' gradients to candle, which accumulates them into
//! the inputs' graphs as for any other op.

use std::sync::{Arc, Mutex};

#[cfg(feature = "cuda")]
use candle_core::DType;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// The gradients of one call, indexed like the tensors the token was built from.
#[derive(Clone, Default)]
pub(crate) struct GradSlot(Arc<Mutex<Vec<Option<Tensor>>>>);

impl GradSlot {
    /// Store the gradients of the tensors the token was built from, in order.
    pub(crate) fn fill(&self, grads: Vec<Option<Tensor>>) {
        // A poisoned lock only means another backward panicked; the data is a
        // plain vector that is overwritten here, so recovering it is sound.
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slot = grads;
    }

    fn take(&self, index: usize) -> Option<Tensor> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_mut(index).and_then(Option::take)
    }
}

/// One node of the token chain: `direct` inputs starting at `base` in the
/// slot, plus (when `nested`) a last argument that is a sub-token.
struct Sink {
    slot: GradSlot,
    base: usize,
    direct: usize,
    nested: bool,
}

impl Sink {
    fn grads(&self, res: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut out: Vec<Option<Tensor>> = (0..self.direct)
            .map(|i| self.slot.take(self.base + i))
            .collect();
        if self.nested {
            // The sub-token must receive a gradient or candle's backward finds a
            // tracked node without one; the value does not matter.
            out.push(Some(res.zeros_like()?));
        }
        Ok(out)
    }
}

fn zero_cpu() -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![0.0]), Shape::from(1))
}

#[cfg(feature = "cuda")]
fn zero_cuda(s: &candle_core::CudaStorage) -> Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::{BackendDevice, BackendStorage};
    let shape = Shape::from(1);
    Ok((s.device().zeros_impl(&shape, DType::F32)?, shape))
}

impl CustomOp1 for Sink {
    fn name(&self) -> &'static str {
        "ssm-grad-token"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(zero_cpu())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        zero_cuda(s)
    }
    fn bwd(&self, _: &Tensor, res: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        let mut g = self.grads(res)?;
        Ok(g.pop().flatten())
    }
}

impl CustomOp2 for Sink {
    fn name(&self) -> &'static str {
        "ssm-grad-token"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok(zero_cpu())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        zero_cuda(s)
    }
    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        res: &Tensor,
        _: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(res)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

/// The gradient token of `tensors` (at least one): a one-element f32 tensor whose
/// backward hands `slot[i]` to `tensors[i]`.
pub(crate) fn token(tensors: &[Tensor], slot: &GradSlot) -> Result<Tensor> {
    token_from(tensors, slot, 0)
}

fn token_from(tensors: &[Tensor], slot: &GradSlot, base: usize) -> Result<Tensor> {
    let sink = |direct, nested| Sink {
        slot: slot.clone(),
        base,
        direct,
        nested,
    };
    match tensors {
        [] => candle_core::bail!("ssm-grad-token: no tensors (internal error)"),
        [a] => a.apply_op1(sink(1, false)),
        [a, b] => a.apply_op2(b, sink(2, false)),
        // A chain of two-argument sinks: one op trait fewer to implement than a
        // tree of three-argument ones, for a handful more one-element nodes.
        [a, rest @ ..] => {
            let sub = token_from(rest, slot, base + 1)?;
            a.apply_op2(&sub, sink(1, true))
        }
    }
}
