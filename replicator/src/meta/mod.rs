//! On-disk metadata of a replicated resource (DRBD 8.4's internal metadata, in userspace).
//!
//! Internal metadata lives at the **end** of the backing disk, so the data region starts at
//! offset 0 and a Secondary's backing disk holds a plain image:
//!
//! ```text
//! [data][bitmap][activity log ring 32 KiB][superblock slot A 4 KiB][slot B 4 KiB]
//! ```
//!
//! - [`layout`]: where everything goes ([`Layout::compute`]).
//! - [`superblock`]: generation UUIDs, flags, disk state, names; two checksummed slots written
//!   alternately, so a crash at any point leaves the old or the new state, never a mix.
//! - [`bitmap`]: the dirty bitmap, with page-level change tracking for incremental writes.
//! - [`activity_log`]: the hot extents written before writes land in them; after a Primary
//!   crash only those are resynced.
//! - [`store`]: the thin blocking I/O layer ([`MetaStore`]): `create-md`, open, writes, `dump-md`.
//!
//! Everything but `store` is pure and tested without I/O.

pub mod activity_log;
pub mod bitmap;
pub mod layout;
pub mod store;
pub mod superblock;
mod uuid;

pub use activity_log::{
    ActivityLog, AlGeometry, AlRecovered, AlUpdate, AL_EXTENTS_DEFAULT, AL_EXTENTS_MAX,
    AL_EXTENT_BYTES_DEFAULT,
};
pub use bitmap::{Bitmap, BITMAP_PAGE_BYTES};
pub use layout::{Layout, BYTES_PER_BIT_DEFAULT, MIN_DATA_SIZE_BYTES};
pub use store::{dump, CreateOptions, DumpInput, MemIo, MetaIo, MetaStore, Opened};
pub use superblock::{choose, MdFlags, Superblock};
pub use urbd_protocol::{GenerationUuids, UUID_JUST_CREATED};
pub use uuid::{new_uuid, try_new_uuid};
