//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Errors of the disk engine and the replication engine around it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open disk {path}: {source} (check the path exists and is readable/writable by this user)")]
    Open { path: PathBuf, source: io::Error },
    #[error("disk {path} is empty or its size cannot be read: {detail}")]
    Size { path: PathBuf, detail: String },
    #[error("cannot start the io_uring disk engine: {0}")]
    Uring(io::Error),
    #[error("disk {op} at offset {offset} ({len} bytes) failed: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        len: u64,
        source: io::Error,
    },
    #[error("fast zeroing is not supported by this disk (the range would have to be written)")]
    FastZeroUnsupported,
    #[error("the disk engine has shut down")]
    EngineGone,
}

impl Error {
    /// The OS errno behind this error, if any (for mapping onto a client protocol's errors).
    pub fn os_errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Open { source, .. } | Error::Uring(source) => {
                source.raw_os_error()
            }
            Error::FastZeroUnsupported => Some(libc::EOPNOTSUPP),
            Error::EngineGone => Some(libc::ESHUTDOWN),
            Error::Size { .. } => Some(libc::EIO),
        }
    }
}
