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
    #[error("{disk} is too small for urbd metadata: {disk_size_bytes} bytes, at least {min_disk_size_bytes} bytes are needed ({min_data_size_bytes} bytes of data plus metadata); use a larger disk or a larger bytes-per-bit")]
    MetaDiskTooSmall {
        disk: String,
        disk_size_bytes: u64,
        min_disk_size_bytes: u64,
        min_data_size_bytes: u64,
    },
    #[error("invalid metadata option: {0}")]
    MetaInvalidOption(String),
    #[error("corrupt urbd metadata ({what}): {detail}")]
    MetaCorrupt { what: &'static str, detail: String },
    #[error("no urbd metadata on {disk}: run `urbdadm create-md <res>`")]
    MetaNotFound { disk: String },
    #[error("{disk} already holds urbd metadata (created {created}); use --force to overwrite (this discards it)")]
    MetaAlreadyInitialised { disk: String, created: String },
    #[error("urbd metadata on {disk} does not match the disk: {detail} (was the disk resized? restore its size or run `urbdadm create-md --force <res>`, which discards the metadata)")]
    MetaLayoutMismatch { disk: String, detail: String },
    #[error("metadata {op} on {disk} at offset {offset_bytes} ({len_bytes} bytes) failed: {source} (check the backing disk)")]
    MetaIo {
        disk: String,
        op: &'static str,
        offset_bytes: u64,
        len_bytes: u64,
        source: io::Error,
    },
    #[error("the operating system's random number generator failed: {0} (needed for new generation UUIDs; check /dev/urandom and the getrandom syscall)")]
    MetaRandom(String),
}

impl Error {
    /// The OS errno behind this error, if any (for mapping onto a client protocol's errors).
    pub fn os_errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. }
            | Error::Open { source, .. }
            | Error::Uring(source)
            | Error::MetaIo { source, .. } => source.raw_os_error(),
            Error::FastZeroUnsupported => Some(libc::EOPNOTSUPP),
            Error::EngineGone => Some(libc::ESHUTDOWN),
            Error::Size { .. } => Some(libc::EIO),
            Error::MetaDiskTooSmall { .. } => Some(libc::ENOSPC),
            Error::MetaInvalidOption(_) => Some(libc::EINVAL),
            Error::MetaCorrupt { .. }
            | Error::MetaNotFound { .. }
            | Error::MetaLayoutMismatch { .. }
            | Error::MetaRandom(_) => Some(libc::EIO),
            Error::MetaAlreadyInitialised { .. } => Some(libc::EEXIST),
        }
    }
}
