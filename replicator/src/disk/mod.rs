//! The local disk engine: io_uring with O_DIRECT (or a thread pool where io_uring is not
//! allowed), aligned buffers owned by the engine, and read-modify-write for I/O that does not
//! match the disk's O_DIRECT alignment. It knows nothing about NBD or replication.

mod buf;
pub mod faults;
mod local;
mod op;
mod open;
mod range_lock;
mod threads;
mod uring;

pub use buf::{IoBuf, BUF_ALIGN_BYTES};
pub use local::{DiskConfig, EngineKind, Extent, LocalDisk};
pub use open::Geometry;
