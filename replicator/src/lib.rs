//! urbd engine. Today: the local disk engine (`disk`). The replication core builds on it.

pub mod core;
pub mod disk;
pub mod error;
pub mod meta;

pub use error::Error;
