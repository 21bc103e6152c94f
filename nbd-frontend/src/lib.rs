//! NBD frontend for urbd: a pure NBD codec (`option`, `request`, `reply`) and a server loop
//! (`server`) that maps NBD commands onto the [`BlockDevice`] trait. It knows nothing about
//! replication. Wire numbers and rules follow NetworkBlockDevice/nbd `doc/proto.md`.

pub mod consts;
pub mod device;
pub mod errno;
pub mod error;
pub mod option;
pub mod reply;
pub mod request;
pub mod server;

pub use device::{BlockDevice, DeviceError, DeviceInfo, ZeroFlags};
pub use errno::Errno;
pub use error::{CodecError, ServerError};
pub use reply::Extent;
pub use server::{run, Listener, ServerConfig};
