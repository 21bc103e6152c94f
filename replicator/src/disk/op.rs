//! Operations the disk backends execute, and their completions.

use std::io;

use tokio::sync::oneshot;

use super::buf::IoBuf;

/// What to do.
#[derive(Debug)]
pub enum OpKind {
    /// Fill the whole buffer from `offset`.
    Read { buf: IoBuf },
    /// Write the whole buffer at `offset`; `dsync` makes it durable (RWF_DSYNC, our FUA).
    Write { buf: IoBuf, dsync: bool },
    /// fdatasync: every completed write becomes durable.
    Fsync,
    /// fallocate(2) with `mode` over `[offset, offset + len)`.
    Fallocate { mode: i32, len: u64 },
}

/// The result of an operation; the buffer (if any) comes back to the caller.
#[derive(Debug)]
pub struct Completion {
    pub result: io::Result<()>,
    pub buf: Option<IoBuf>,
}

/// An operation on its way to a backend.
pub struct Op {
    pub kind: OpKind,
    pub offset: u64,
    pub done: oneshot::Sender<Completion>,
}

impl Op {
    /// Completes the operation; a caller that stopped waiting simply drops the result.
    pub fn complete(self, result: io::Result<()>) {
        let buf = match self.kind {
            OpKind::Read { buf } | OpKind::Write { buf, .. } => Some(buf),
            OpKind::Fsync | OpKind::Fallocate { .. } => None,
        };
        let _ = self.done.send(Completion { result, buf });
    }
}
