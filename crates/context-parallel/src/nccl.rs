//! [`NcclCommunicator`]: the exchange over NCCL, through cudarc's `nccl`
//! bindings (feature `nccl`; the library is loaded at run time, like the
//! driver, as `libnccl.so`). One communicator per rank, each on its own GPU's stream.
//!
//! Set `NCCL_NVLS_ENABLE=0` before the first communicator is made (NVLink
//! multicast stays off on the lent machines; [`disable_nvls`] does it).
//!
//! The buffers the exchange moves are small (a pair is `H P N + H` f32 per
//! carried row, 1 MB at H 32, P 64, N 128), and the context-parallel calls take
//! host slices, so each call stages through the device: copy in, one NCCL
//! operation, copy out, synchronize.

use crate::comm::{CommError, Communicator};
use cudarc::driver::CudaStream;
use cudarc::nccl::{group_end, group_start, Comm, Id};
use std::sync::Arc;

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> CommError {
    CommError::Backend(format!("{what}: {e:?}"))
}

/// Run the first NCCL call of a process: cudarc loads the library on first use
/// and panics when it cannot; that becomes an error saying what to do. cudarc
/// looks for `libnccl.so` and `libnccl.so.<CUDA major>` (not `.so.2`, the
/// name NCCL ships under): link `libnccl.so` to `libnccl.so.2` in a folder on
/// `LD_LIBRARY_PATH` (docs/CONTEXT-PARALLEL.md §8).
fn loaded<R>(f: impl FnOnce() -> R) -> Result<R, CommError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        CommError::Backend(
            "the NCCL library could not be loaded: put a `libnccl.so` (a link to \
             libnccl.so.2, e.g. from the nvidia-nccl-cu13 wheel's nvidia/nccl/lib) \
             in a folder on LD_LIBRARY_PATH"
                .into(),
        )
    })
}

/// Turn NVLink multicast (NVLS) off for communicators made after this call,
/// unless the environment already says otherwise.
pub fn disable_nvls() {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        // Call it before other threads start: NCCL reads the variable when a
        // communicator is made, and the environment is process-wide.
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
}

/// A rank of an NCCL communicator.
pub struct NcclCommunicator {
    comm: Comm,
    stream: Arc<CudaStream>,
}

impl NcclCommunicator {
    /// A new unique id (on one rank; every rank passes the same id to
    /// [`NcclCommunicator::new`]).
    pub fn unique_id() -> Result<Id, CommError> {
        loaded(Id::new)?.map_err(|e| nccl_err("ncclGetUniqueId", e))
    }

    /// Join the communicator `id` as `rank` of `size`, on `stream`'s GPU.
    /// Blocks until every rank has joined (call it from one thread per rank).
    pub fn new(
        stream: Arc<CudaStream>,
        rank: usize,
        size: usize,
        id: Id,
    ) -> Result<Self, CommError> {
        if rank >= size {
            return Err(CommError::Peer { peer: rank, size });
        }
        let comm = loaded(|| Comm::from_rank(stream.clone(), rank, size, id))?
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(NcclCommunicator { comm, stream })
    }

    fn upload(&self, data: &[f32]) -> Result<cudarc::driver::CudaSlice<f32>, CommError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| nccl_err("copy to device", e))
    }

    fn download(&self, dev: &cudarc::driver::CudaSlice<f32>) -> Result<Vec<f32>, CommError> {
        let v = self
            .stream
            .clone_dtoh(dev)
            .map_err(|e| nccl_err("copy to host", e))?;
        self.stream
            .synchronize()
            .map_err(|e| nccl_err("synchronize", e))?;
        Ok(v)
    }

    fn check_peer(&self, peer: usize) -> Result<i32, CommError> {
        let size = self.comm.world_size();
        if peer >= size {
            return Err(CommError::Peer { peer, size });
        }
        i32::try_from(peer).map_err(|_| CommError::Peer { peer, size })
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_gather(&self, send: &[f32]) -> Result<Vec<f32>, CommError> {
        if send.is_empty() {
            return Ok(Vec::new());
        }
        let src = self.upload(send)?;
        let mut dst = self
            .stream
            .alloc_zeros::<f32>(send.len() * self.size())
            .map_err(|e| nccl_err("alloc", e))?;
        self.comm
            .all_gather(&src, &mut dst)
            .map_err(|e| nccl_err("ncclAllGather", e))?;
        self.download(&dst)
    }
    fn send_recv(
        &self,
        send: Option<(usize, &[f32])>,
        recv: Option<(usize, usize)>,
    ) -> Result<Option<Vec<f32>>, CommError> {
        let send = match send {
            Some((peer, data)) => Some((self.check_peer(peer)?, self.upload(data)?)),
            None => None,
        };
        let mut recv = match recv {
            Some((peer, len)) => Some((
                self.check_peer(peer)?,
                self.stream
                    .alloc_zeros::<f32>(len)
                    .map_err(|e| nccl_err("alloc", e))?,
            )),
            None => None,
        };
        // One group: both halves are posted before either waits, so paired
        // exchanges (r -> r + d while r - d -> r) cannot deadlock.
        group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        let posted = (|| -> Result<(), CommError> {
            if let Some((peer, buf)) = &send {
                self.comm
                    .send(buf, *peer)
                    .map_err(|e| nccl_err("ncclSend", e))?;
            }
            if let Some((peer, buf)) = &mut recv {
                self.comm
                    .recv(buf, *peer)
                    .map_err(|e| nccl_err("ncclRecv", e))?;
            }
            Ok(())
        })();
        let ended = group_end().map_err(|e| nccl_err("ncclGroupEnd", e));
        posted?;
        ended?;
        match recv {
            Some((_, buf)) => self.download(&buf).map(Some),
            None => {
                self.stream
                    .synchronize()
                    .map_err(|e| nccl_err("synchronize", e))?;
                Ok(None)
            }
        }
    }
}
