//! The replicated resource as an NBD block device: writes, zeroes and flushes go through the
//! engine (and so to both nodes); reads are served from the local UpToDate disk.

use std::sync::Arc;

use nbd_frontend::{BlockDevice, DeviceError, DeviceInfo, Errno, Extent, ZeroFlags};
use tokio::sync::{mpsc, oneshot};
use urbd_replicator::core::IoFailure;
use urbd_replicator::disk::{IoBuf, LocalDisk};

use super::engine::{ClientOp, EngineInput};
use crate::serve::block_status_of;

pub struct ReplicatedDevice {
    pub disk: Arc<LocalDisk>,
    pub engine: mpsc::Sender<EngineInput>,
    pub data_size_bytes: u64,
    /// Writes larger than a replication frame carries are split into pieces of this size.
    pub write_chunk_bytes: u32,
}

fn failure(f: IoFailure) -> DeviceError {
    match f {
        IoFailure::Io => DeviceError::new(Errno::Io, "the write failed on this node's disk"),
        IoFailure::NotPrimary => DeviceError::new(Errno::Perm, "this node is not Primary"),
    }
}

impl ReplicatedDevice {
    async fn call(&self, op: ClientOp) -> Result<(), DeviceError> {
        let (done, wait) = oneshot::channel();
        self.engine
            .send(EngineInput::Client { op, done })
            .await
            .map_err(|_| DeviceError::new(Errno::Shutdown, "the resource is going down"))?;
        match wait.await {
            Ok(r) => r.map_err(failure),
            Err(_) => Err(DeviceError::new(
                Errno::Shutdown,
                "the resource is going down",
            )),
        }
    }
}

impl BlockDevice for ReplicatedDevice {
    type Buf = IoBuf;

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size_bytes: self.data_size_bytes,
            read_only: false,
            can_trim: true,
            can_fast_zero: false,
            block_bytes_min: self.disk.geometry().align_bytes,
        }
    }

    fn alloc(&self, len: usize) -> IoBuf {
        self.disk.alloc(len)
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> Result<IoBuf, DeviceError> {
        let len = buf.len();
        let local = match self.disk.read(offset, buf).await {
            Ok(buf) => return Ok(buf),
            Err(e) => e,
        };
        // PROTOCOL.md §5.7: the peer's copy, if it is current; otherwise EIO, never wrong data.
        tracing::warn!("{local}; asking the peer for the range");
        let mut out = self.disk.alloc(len);
        let piece_max = (self.write_chunk_bytes as usize)
            .min(urbd_replicator::core::PEER_READ_BYTES_MAX as usize)
            .max(1);
        let mut at = 0;
        while at < len {
            let n = piece_max.min(len - at);
            let (done, wait) = oneshot::channel();
            let input = EngineInput::ReadFromPeer {
                offset_bytes: offset + at as u64,
                len_bytes: n as u64,
                done,
            };
            let gone = || DeviceError::new(Errno::Shutdown, "the resource is going down");
            self.engine.send(input).await.map_err(|_| gone())?;
            let data = wait.await.map_err(|_| gone())?.map_err(|_| {
                DeviceError::new(
                    Errno::Io,
                    "the read failed on this node's disk and the peer could not serve it",
                )
            })?;
            if data.len() != n {
                return Err(DeviceError::new(Errno::Io, "the peer sent a short read"));
            }
            out.as_mut()[at..at + n].copy_from_slice(&data);
            at += n;
        }
        Ok(out)
    }

    async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> Result<(), DeviceError> {
        let chunk = self.write_chunk_bytes as usize;
        if buf.len() <= chunk {
            return self
                .call(ClientOp::Write {
                    offset_bytes: offset,
                    buf,
                    fua,
                })
                .await;
        }
        // Larger than a frame: pieces, in flight together; the write is done when all are.
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let n = chunk.min(buf.len() - at);
            let mut piece = self.disk.alloc(n);
            piece.as_mut().copy_from_slice(&buf.as_ref()[at..at + n]);
            let op = ClientOp::Write {
                offset_bytes: offset + at as u64,
                buf: piece,
                fua,
            };
            pieces.push(self.call(op));
            at += n;
        }
        for r in futures_util::future::join_all(pieces).await {
            r?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        self.call(ClientOp::Flush).await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), DeviceError> {
        // Replicated as zeroing, so both disks stay byte-identical.
        let op = ClientOp::Zero {
            offset_bytes: offset,
            len_bytes: u64::from(len),
            fua,
        };
        self.call(op).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, f: ZeroFlags) -> Result<(), DeviceError> {
        if f.fast_only {
            return Err(DeviceError::new(
                Errno::NotSup,
                "fast zeroing is not offered",
            ));
        }
        let op = ClientOp::Zero {
            offset_bytes: offset,
            len_bytes: u64::from(len),
            fua: f.fua,
        };
        self.call(op).await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DeviceError> {
        block_status_of(&self.disk, offset, len)
    }

    async fn attach_client(&self) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.engine
            .send(EngineInput::Attach { done })
            .await
            .map_err(|_| "the resource is going down".to_string())?;
        wait.await
            .unwrap_or_else(|_| Err("the resource is going down".into()))
    }

    fn detach_client(&self) {
        let _ = self.engine.try_send(EngineInput::Detach);
    }
}
