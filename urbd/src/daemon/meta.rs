//! The daemon's side of the on-disk metadata: opening it at start, persisting what the core
//! asks for (superblock state, bitmap pages, activity-log transactions), clean shutdown.

use std::fs::File;
use std::path::Path;

use urbd_protocol::DiskState;
use urbd_replicator::core::{MetaState, PeerView, Restored};
use urbd_replicator::meta::{AlUpdate, Bitmap, MdFlags, MetaStore, Superblock};

/// Open metadata of the local disk.
pub struct Metadata {
    store: MetaStore<File>,
    sb: Superblock,
}

/// What a node starts from.
pub struct Attached {
    pub meta: Metadata,
    pub restored: Restored,
    pub data_size_bytes: u64,
    pub bytes_per_bit: u32,
    pub al_extents: u32,
    pub al_extent_bytes: u64,
}

impl Metadata {
    /// Opens the metadata at the end of `disk` and marks it "in use" (clean-shutdown cleared),
    /// so that a crash from now on is recognisable.
    pub fn attach(disk: &Path) -> anyhow::Result<Attached> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .map_err(|e| anyhow::anyhow!("cannot open {} for its metadata: {e}", disk.display()))?;
        let (store, sb, bitmap, hot_extents) = MetaStore::open(file)?;
        let clean = sb.flags.contains(MdFlags::CLEAN_SHUTDOWN);
        let crashed_primary = sb.flags.contains(MdFlags::CRASHED_PRIMARY)
            || (sb.flags.contains(MdFlags::PRIMARY_IND) && !clean);
        if crashed_primary {
            tracing::warn!(
                "{}: the node was Primary and did not shut down cleanly; its {} activity-log \
                 extent(s) will be resynced",
                disk.display(),
                hot_extents.len()
            );
        }
        let restored = Restored {
            uuids: sb.uuids,
            disk: sb.disk_state,
            crashed_primary,
            bitmap,
            al_extents: hot_extents,
        };
        let data_size_bytes = sb.data_size_bytes;
        let bytes_per_bit = sb.bytes_per_bit;
        let al_extents = sb.al_extents;
        let al_extent_bytes = u64::from(sb.al_extent_bytes);
        let mut meta = Metadata { store, sb };
        let mut next = meta.sb.clone();
        next.flags.remove(MdFlags::CLEAN_SHUTDOWN);
        next.flags.set(MdFlags::CRASHED_PRIMARY, crashed_primary);
        meta.write(next)?;
        Ok(Attached {
            meta,
            restored,
            data_size_bytes,
            bytes_per_bit,
            al_extents,
            al_extent_bytes,
        })
    }

    fn write(&mut self, sb: Superblock) -> Result<(), urbd_replicator::Error> {
        self.store.write_superblock(&sb)?;
        self.sb = sb;
        Ok(())
    }

    pub fn write_state(&mut self, m: &MetaState) -> Result<(), urbd_replicator::Error> {
        let mut sb = self.sb.clone();
        sb.uuids = m.uuids;
        sb.disk_state = persistable(m.disk);
        sb.flags.set(MdFlags::PRIMARY_IND, m.primary);
        sb.flags.set(MdFlags::CRASHED_PRIMARY, m.crashed_primary);
        sb.flags.set(
            MdFlags::CONSISTENT,
            matches!(
                m.disk,
                DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
            ),
        );
        sb.flags
            .set(MdFlags::WAS_UP_TO_DATE, m.disk == DiskState::UpToDate);
        self.write(sb)
    }

    pub fn write_bitmap(
        &mut self,
        bitmap: &Bitmap,
        pages: &[usize],
    ) -> Result<(), urbd_replicator::Error> {
        self.store.write_bitmap_pages(bitmap, pages)
    }

    pub fn write_al(&mut self, extents: Vec<u64>) -> Result<(), urbd_replicator::Error> {
        let seq = self.store.al_state().last_seq + 1;
        let update = AlUpdate {
            seq,
            extents,
            added: Vec::new(),
            evicted: Vec::new(),
        };
        self.store.write_al(&update)
    }

    /// `down`: the final state with the clean-shutdown flag (no resync needed at restart).
    pub fn clean_shutdown(&mut self, view: &PeerView) -> Result<(), urbd_replicator::Error> {
        let mut sb = self.sb.clone();
        sb.uuids = view.uuids;
        sb.disk_state = persistable(view.disk);
        sb.flags.insert(MdFlags::CLEAN_SHUTDOWN);
        sb.flags.remove(MdFlags::PRIMARY_IND);
        sb.flags.remove(MdFlags::CRASHED_PRIMARY);
        self.write(sb)
    }
}

/// Only these states are meaningful after a restart.
fn persistable(d: DiskState) -> DiskState {
    match d {
        DiskState::UpToDate | DiskState::Outdated | DiskState::Consistent => d,
        _ => DiskState::Inconsistent,
    }
}
