//! The thin, blocking I/O layer over the pure metadata code: `create-md`, `open` (attach),
//! superblock / bitmap / activity-log writes, and the `dump-md` text.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use urbd_protocol::{DiskState, GenerationUuids, UUID_JUST_CREATED};

use super::activity_log::{
    check_al_extents, encode_transaction, recover, ActivityLog, AlGeometry, AlRecovered, AlUpdate,
    AL_EXTENTS_DEFAULT, AL_EXTENT_BYTES_DEFAULT,
};
use super::bitmap::{Bitmap, BITMAP_PAGE_BYTES};
use super::layout::{
    check_bytes_per_bit, superblock_offset_for, Layout, BYTES_PER_BIT_DEFAULT, META_BLOCK_BYTES,
    SUPERBLOCK_SLOT_BYTES,
};
use super::superblock::{
    choose_slot, MdFlags, Superblock, NAME_MAX_BYTES, SUPERBLOCK_BYTES, SUPERBLOCK_FORMAT_VERSION,
    SUPERBLOCK_MAGIC,
};
use super::uuid::try_new_uuid;
use crate::error::Error;

/// Largest single metadata read or write (bitmap zeroing and loading go in chunks this big).
const CHUNK_BYTES: usize = 1 << 20;

/// Positioned, blocking I/O on the backing disk, as the metadata code needs it.
pub trait MetaIo {
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `off`.
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Size of the whole backing disk.
    fn size_bytes(&self) -> io::Result<u64>;
    /// A name for messages (a path when known).
    fn describe(&self) -> String {
        "the disk".to_string()
    }
}

/// pread / pwrite / fdatasync on a regular file or a block device.
impl MetaIo for File {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, off)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.write_all_at(buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn size_bytes(&self) -> io::Result<u64> {
        // Block devices report a length of 0 in their metadata; seeking to the end works for
        // both. pread/pwrite ignore the file position.
        let mut f: &File = self;
        f.seek(SeekFrom::End(0))
    }
    fn describe(&self) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", self.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "the disk".to_string())
    }
}

impl<T: MetaIo + ?Sized> MetaIo for &T {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(off, buf)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(off, buf)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn size_bytes(&self) -> io::Result<u64> {
        (**self).size_bytes()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// An in-memory disk (tests, simulations). Can be told to fail writes, to model a crash or an
/// I/O error at a chosen point.
#[derive(Debug)]
pub struct MemIo {
    inner: Mutex<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    bytes: Vec<u8>,
    /// Writes still allowed before every write fails (`None`: unlimited).
    writes_left: Option<u64>,
}

impl MemIo {
    /// A zeroed disk of `size_bytes`.
    pub fn new(size_bytes: usize) -> MemIo {
        Self::from_bytes(vec![0; size_bytes])
    }
    /// A disk holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> MemIo {
        MemIo {
            inner: Mutex::new(MemInner {
                bytes,
                writes_left: None,
            }),
        }
    }
    /// A copy of the whole disk.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }
    /// After `n` more successful writes, every write fails with EIO (`None`: never).
    pub fn fail_writes_after(&self, n: Option<u64>) {
        self.lock().writes_left = n;
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn range(len: usize, off: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        match start.checked_add(n) {
            Some(end) if end <= len => Ok(start..end),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "past the end of the disk",
            )),
        }
    }
}

impl MetaIo for MemIo {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let g = self.lock();
        let r = Self::range(g.bytes.len(), off, buf.len())?;
        buf.copy_from_slice(&g.bytes[r]);
        Ok(())
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let mut g = self.lock();
        match &mut g.writes_left {
            Some(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(n) => *n -= 1,
            None => {}
        }
        let r = Self::range(g.bytes.len(), off, buf.len())?;
        g.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.lock().bytes.len() as u64)
    }
    fn describe(&self) -> String {
        "memory disk".to_string()
    }
}

/// Options of `create-md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Data bytes per bitmap bit: a power of two from 512 (default 4096).
    pub bytes_per_bit: u32,
    /// Activity-log capacity in 4 MiB extents (default 1000, at most 1017).
    pub al_extents: u32,
    /// This node's name (≤ 64 bytes).
    pub node_name: String,
    /// The peer's name (≤ 64 bytes).
    pub peer_name: String,
    /// Overwrite existing urbd metadata.
    pub force: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            bytes_per_bit: BYTES_PER_BIT_DEFAULT,
            al_extents: AL_EXTENTS_DEFAULT,
            node_name: String::new(),
            peer_name: String::new(),
            force: false,
        }
    }
}

/// What [`MetaStore::open`] returns: the store, the current superblock, the bitmap as persisted,
/// and the activity log's hot extents (sorted).
pub type Opened<IO> = (MetaStore<IO>, Superblock, Bitmap, Vec<u64>);

/// The metadata of one backing disk. Writes are synchronous and end with a sync.
#[derive(Debug)]
pub struct MetaStore<IO: MetaIo> {
    io: IO,
    disk: String,
    disk_size_bytes: u64,
    layout: Layout,
    /// The last superblock written or read; `current.seq` is the newest seq on disk.
    current: Superblock,
    /// The slot holding `current` (0 = A, 1 = B); the next write goes to the other.
    newest_slot: usize,
    /// The newest AL transaction on disk.
    al: AlRecovered,
}

impl<IO: MetaIo> MetaStore<IO> {
    fn io_err(
        &self,
        op: &'static str,
        offset_bytes: u64,
        len_bytes: usize,
        source: io::Error,
    ) -> Error {
        io_err(&self.disk, op, offset_bytes, len_bytes, source)
    }

    /// `create-md`: lays out the disk and writes fresh metadata: UUIDs {current:
    /// `UUID_JUST_CREATED`, others 0}, disk state Inconsistent, no flags, a clear bitmap, an
    /// empty activity log. Refuses a disk that already holds valid urbd metadata unless
    /// `force`. Crash-safe: the old superblock slots are invalidated (and synced) before the
    /// bitmap is cleared, and the new superblock is written last.
    pub fn create(io: IO, opts: CreateOptions) -> Result<MetaStore<IO>, Error> {
        let disk = io.describe();
        check_bytes_per_bit(opts.bytes_per_bit)?;
        check_al_extents(opts.al_extents)?;
        for (what, name) in [("node", &opts.node_name), ("peer", &opts.peer_name)] {
            if name.len() > NAME_MAX_BYTES || name.contains('\0') {
                return Err(Error::MetaInvalidOption(format!(
                    "{what} name {name:?} must be at most {NAME_MAX_BYTES} bytes without NUL"
                )));
            }
        }
        let disk_size_bytes = io
            .size_bytes()
            .map_err(|e| io_err(&disk, "size query", 0, 0, e))?;
        let layout = Layout::compute(disk_size_bytes, opts.bytes_per_bit, opts.al_extents)
            .map_err(|e| name_disk(e, &disk))?;
        let (a, b) = read_slots(&io, &disk, layout.superblock_offset_bytes)?;
        if let Some((old, _)) = choose_slot(&a, &b) {
            if !opts.force {
                return Err(Error::MetaAlreadyInitialised {
                    disk,
                    created: format_unix_time(old.created_at_unix_s),
                });
            }
        }
        let sb = Superblock {
            magic: SUPERBLOCK_MAGIC,
            format_version: SUPERBLOCK_FORMAT_VERSION,
            seq: 1,
            data_size_bytes: layout.data_size_bytes,
            bytes_per_bit: opts.bytes_per_bit,
            al_extents: opts.al_extents,
            al_extent_bytes: AL_EXTENT_BYTES_DEFAULT,
            uuids: GenerationUuids {
                current: UUID_JUST_CREATED,
                bitmap: 0,
                history: [0, 0],
            },
            flags: MdFlags::empty(),
            disk_state: DiskState::Inconsistent,
            node_name: opts.node_name,
            peer_name: opts.peer_name,
            device_uuid: try_new_uuid()?,
            created_at_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        sb.validate()?;
        let store = MetaStore {
            io,
            disk,
            disk_size_bytes,
            layout,
            current: sb.clone(),
            newest_slot: 0,
            al: AlRecovered::default(),
        };
        // 1. Invalidate both slots so a crash below leaves "no metadata", never the old
        //    superblock over a half-cleared bitmap.
        store.write_zeroes(layout.superblock_offset_bytes, 2 * SUPERBLOCK_SLOT_BYTES)?;
        store.sync()?;
        // 2. Bitmap and activity log (adjacent).
        store.write_zeroes(
            layout.bitmap_offset_bytes,
            layout.bitmap_bytes + layout.al_bytes,
        )?;
        store.sync()?;
        // 3. The superblock, in slot A.
        let off = layout.superblock_slot_offset_bytes(0);
        store.write_all(off, &sb.encode(), "superblock write")?;
        store.sync()?;
        Ok(store)
    }

    /// Attaches to existing metadata: the newest valid superblock, the persisted bitmap and the
    /// activity log's hot extents. Errors when there is none ("run `urbdadm create-md`"), when
    /// both slots are damaged, or when the disk's size no longer matches the recorded layout.
    pub fn open(io: IO) -> Result<Opened<IO>, Error> {
        let disk = io.describe();
        let disk_size_bytes = io
            .size_bytes()
            .map_err(|e| io_err(&disk, "size query", 0, 0, e))?;
        let sb_off = superblock_offset_for(disk_size_bytes)
            .ok_or_else(|| Error::MetaNotFound { disk: disk.clone() })?;
        let (a, b) = read_slots(&io, &disk, sb_off)?;
        let (sb, newest_slot) = match choose_slot(&a, &b) {
            Some(found) => found,
            None => {
                // Magic present but nothing valid: say why instead of "no metadata".
                for slot in [&a, &b] {
                    if slot[0..8] == SUPERBLOCK_MAGIC {
                        Superblock::decode(slot)?;
                    }
                }
                return Err(Error::MetaNotFound { disk });
            }
        };
        let layout =
            Layout::compute(disk_size_bytes, sb.bytes_per_bit, sb.al_extents).map_err(|e| {
                Error::MetaLayoutMismatch {
                    disk: disk.clone(),
                    detail: e.to_string(),
                }
            })?;
        if layout.data_size_bytes != sb.data_size_bytes {
            return Err(Error::MetaLayoutMismatch {
                disk,
                detail: format!(
                    "the superblock records {} bytes of data, a {disk_size_bytes}-byte disk lays \
                     out {}",
                    sb.data_size_bytes, layout.data_size_bytes
                ),
            });
        }
        let mut store = MetaStore {
            io,
            disk,
            disk_size_bytes,
            layout,
            current: sb.clone(),
            newest_slot,
            al: AlRecovered::default(),
        };
        let mut bitmap = Bitmap::new(sb.data_size_bytes, sb.bytes_per_bit);
        let mut buf = vec![0u8; CHUNK_BYTES];
        let pages_per_chunk = CHUNK_BYTES / BITMAP_PAGE_BYTES;
        let mut page = 0;
        while page < bitmap.page_count() {
            let n = pages_per_chunk.min(bitmap.page_count() - page);
            let off = layout.bitmap_offset_bytes + (page * BITMAP_PAGE_BYTES) as u64;
            let chunk = &mut buf[..n * BITMAP_PAGE_BYTES];
            store.read_exact(off, chunk, "bitmap read")?;
            for (i, p) in chunk.chunks(BITMAP_PAGE_BYTES).enumerate() {
                bitmap.load_page(page + i, p);
            }
            page += n;
        }
        let mut ring = vec![0u8; layout.al_bytes as usize];
        store.read_exact(layout.al_offset_bytes, &mut ring, "activity log read")?;
        store.al = recover(&ring, AlGeometry::from_superblock(&sb))?;
        let hot = store.al.extents.clone();
        Ok((store, sb, bitmap, hot))
    }

    /// The layout of this disk.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The disk's name for messages.
    pub fn disk(&self) -> &str {
        &self.disk
    }
    /// Size of the whole backing disk.
    pub fn disk_size_bytes(&self) -> u64 {
        self.disk_size_bytes
    }
    /// The newest superblock on disk (as last read or written).
    pub fn superblock(&self) -> &Superblock {
        &self.current
    }
    /// Which slot holds the newest superblock (0 = A, 1 = B).
    pub fn newest_slot(&self) -> usize {
        self.newest_slot
    }
    /// The newest activity-log transaction on disk.
    pub fn al_state(&self) -> &AlRecovered {
        &self.al
    }
    /// An activity log continuing from the one on disk (its hot set, its sequence).
    pub fn activity_log(&self) -> ActivityLog {
        ActivityLog::restore(AlGeometry::from_superblock(&self.current), &self.al)
    }
    /// The underlying I/O.
    pub fn io(&self) -> &IO {
        &self.io
    }

    /// Writes `sb` as the new state: into the slot not holding the newest one, with seq = the
    /// newest seq + 1 (the `seq` of `sb` is ignored), then syncs. A crash at any point leaves
    /// either the previous or the new state readable. Returns the seq written. The geometry
    /// (data size, bytes per bit, AL size) cannot change here.
    pub fn write_superblock(&mut self, sb: &Superblock) -> Result<u64, Error> {
        sb.validate()?;
        let c = &self.current;
        if (
            sb.data_size_bytes,
            sb.bytes_per_bit,
            sb.al_extents,
            sb.al_extent_bytes,
        ) != (
            c.data_size_bytes,
            c.bytes_per_bit,
            c.al_extents,
            c.al_extent_bytes,
        ) {
            return Err(Error::MetaInvalidOption(
                "the superblock's geometry (data size, bytes per bit, al-extents) cannot change \
                 in place; run create-md"
                    .to_string(),
            ));
        }
        let mut next = sb.clone();
        next.seq = self.current.seq + 1;
        let target = if crate::core::mutated!(SuperblockInPlace) {
            self.newest_slot
        } else {
            1 - self.newest_slot
        };
        let off = self.layout.superblock_slot_offset_bytes(target);
        self.write_all(off, &next.encode(), "superblock write")?;
        self.sync()?;
        self.newest_slot = target;
        self.current = next;
        Ok(self.current.seq)
    }

    /// Writes the given bitmap pages (consecutive pages in one write each), then syncs.
    pub fn write_bitmap_pages(&mut self, bitmap: &Bitmap, pages: &[usize]) -> Result<(), Error> {
        assert!(
            bitmap.data_size_bytes() == self.current.data_size_bytes
                && bitmap.bytes_per_bit() == self.current.bytes_per_bit,
            "bitmap geometry does not match the metadata"
        );
        if pages.is_empty() {
            return Ok(());
        }
        let mut sorted = pages.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let max_run = CHUNK_BYTES / BITMAP_PAGE_BYTES;
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        let mut i = 0;
        while i < sorted.len() {
            let first = sorted[i];
            buf.clear();
            while i < sorted.len()
                && sorted[i] == first + buf.len() / BITMAP_PAGE_BYTES
                && buf.len() < CHUNK_BYTES
            {
                buf.extend_from_slice(&bitmap.encode_page(sorted[i]));
                i += 1;
            }
            assert!(buf.len() / BITMAP_PAGE_BYTES <= max_run);
            let off = self.layout.bitmap_offset_bytes + (first * BITMAP_PAGE_BYTES) as u64;
            self.write_all(off, &buf, "bitmap write")?;
        }
        self.sync()
    }

    /// Writes the pages changed since the last call ([`Bitmap::take_dirty_pages`]); on an error
    /// they stay marked changed.
    pub fn flush_bitmap(&mut self, bitmap: &mut Bitmap) -> Result<(), Error> {
        let pages = bitmap.take_dirty_pages();
        let r = self.write_bitmap_pages(bitmap, &pages);
        if r.is_err() {
            pages.iter().for_each(|&p| bitmap.mark_page_dirty(p));
        }
        r
    }

    /// Persists an activity-log transaction into ring slot `seq % slots`, then syncs. Must
    /// return before the write that caused the update is submitted. Panics if `update.seq` is
    /// not newer than the newest transaction on disk (an `ActivityLog` not restored from
    /// [`MetaStore::activity_log`]).
    pub fn write_al(&mut self, update: &AlUpdate) -> Result<(), Error> {
        assert!(
            update.seq > self.al.last_seq,
            "AL transaction {} is not newer than {} on disk",
            update.seq,
            self.al.last_seq
        );
        let slot = update.seq % self.layout.al_slots();
        let block = encode_transaction(update.seq, self.current.al_extents, &update.extents);
        let off = self.layout.al_offset_bytes + slot * META_BLOCK_BYTES;
        self.write_all(off, &block, "activity log write")?;
        self.sync()?;
        self.al = AlRecovered {
            last_seq: update.seq,
            extents: update.extents.clone(),
        };
        Ok(())
    }

    /// The `dump-md` text for this disk.
    pub fn dump(&self, sb: &Superblock, bitmap: &Bitmap, al_hot_extents: &[u64]) -> String {
        dump(&DumpInput {
            disk: &self.disk,
            disk_size_bytes: self.disk_size_bytes,
            layout: &self.layout,
            superblock: sb,
            superblock_slot: self.newest_slot,
            bitmap,
            al_seq: self.al.last_seq,
            al_hot_extents,
        })
    }

    fn sync(&self) -> Result<(), Error> {
        self.io.sync().map_err(|e| self.io_err("sync", 0, 0, e))
    }

    fn write_all(&self, off: u64, buf: &[u8], op: &'static str) -> Result<(), Error> {
        self.io
            .write_at(off, buf)
            .map_err(|e| self.io_err(op, off, buf.len(), e))
    }

    fn read_exact(&self, off: u64, buf: &mut [u8], op: &'static str) -> Result<(), Error> {
        let len = buf.len();
        self.io
            .read_at(off, buf)
            .map_err(|e| self.io_err(op, off, len, e))
    }

    fn write_zeroes(&self, mut off: u64, len_bytes: u64) -> Result<(), Error> {
        let zeroes = vec![0u8; CHUNK_BYTES];
        let end = off + len_bytes;
        while off < end {
            let n = (end - off).min(CHUNK_BYTES as u64) as usize;
            self.write_all(off, &zeroes[..n], "metadata zeroing")?;
            off += n as u64;
        }
        Ok(())
    }
}

fn io_err(
    disk: &str,
    op: &'static str,
    offset_bytes: u64,
    len_bytes: usize,
    source: io::Error,
) -> Error {
    Error::MetaIo {
        disk: disk.to_string(),
        op,
        offset_bytes,
        len_bytes: len_bytes as u64,
        source,
    }
}

fn name_disk(e: Error, name: &str) -> Error {
    match e {
        Error::MetaDiskTooSmall {
            disk_size_bytes,
            min_disk_size_bytes,
            min_data_size_bytes,
            ..
        } => Error::MetaDiskTooSmall {
            disk: name.to_string(),
            disk_size_bytes,
            min_disk_size_bytes,
            min_data_size_bytes,
        },
        other => other,
    }
}

fn read_slots<IO: MetaIo>(
    io: &IO,
    disk: &str,
    off: u64,
) -> Result<([u8; SUPERBLOCK_BYTES], [u8; SUPERBLOCK_BYTES]), Error> {
    let mut a = [0u8; SUPERBLOCK_BYTES];
    let mut b = [0u8; SUPERBLOCK_BYTES];
    io.read_at(off, &mut a)
        .map_err(|e| io_err(disk, "superblock read", off, SUPERBLOCK_BYTES, e))?;
    let off_b = off + SUPERBLOCK_SLOT_BYTES;
    io.read_at(off_b, &mut b)
        .map_err(|e| io_err(disk, "superblock read", off_b, SUPERBLOCK_BYTES, e))?;
    Ok((a, b))
}

/// Everything `dump-md` prints.
#[derive(Debug, Clone, Copy)]
pub struct DumpInput<'a> {
    /// The disk's name.
    pub disk: &'a str,
    /// Size of the whole backing disk.
    pub disk_size_bytes: u64,
    /// Its layout.
    pub layout: &'a Layout,
    /// The current superblock.
    pub superblock: &'a Superblock,
    /// The slot holding it (0 = A, 1 = B).
    pub superblock_slot: usize,
    /// The persisted bitmap.
    pub bitmap: &'a Bitmap,
    /// Seq of the newest AL transaction.
    pub al_seq: u64,
    /// The hot extents.
    pub al_hot_extents: &'a [u64],
}

/// The `dump-md` text: one `key: value` per line, keys stable, UUIDs in hex, flags by name.
pub fn dump(d: &DumpInput<'_>) -> String {
    use std::fmt::Write as _;
    let sb = d.superblock;
    let l = d.layout;
    let mut s = String::new();
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(s, "{k}: {v}");
    };
    kv("disk", &d.disk);
    kv("disk-size-bytes", &d.disk_size_bytes);
    kv("format-version", &sb.format_version);
    kv("superblock-seq", &sb.seq);
    kv(
        "superblock-slot",
        &if d.superblock_slot == 0 { "A" } else { "B" },
    );
    kv("data-size-bytes", &l.data_size_bytes);
    kv("bitmap-offset-bytes", &l.bitmap_offset_bytes);
    kv("bitmap-bytes", &l.bitmap_bytes);
    kv("al-offset-bytes", &l.al_offset_bytes);
    kv("al-bytes", &l.al_bytes);
    kv("superblock-offset-bytes", &l.superblock_offset_bytes);
    kv("bytes-per-bit", &sb.bytes_per_bit);
    kv("al-extents", &sb.al_extents);
    kv("al-extent-bytes", &sb.al_extent_bytes);
    kv("node-name", &sb.node_name);
    kv("peer-name", &sb.peer_name);
    kv("device-uuid", &format_args!("0x{:016x}", sb.device_uuid));
    kv("created-at", &format_unix_time(sb.created_at_unix_s));
    kv("current-uuid", &format_args!("0x{:016x}", sb.uuids.current));
    kv("bitmap-uuid", &format_args!("0x{:016x}", sb.uuids.bitmap));
    kv(
        "history-uuid-0",
        &format_args!("0x{:016x}", sb.uuids.history[0]),
    );
    kv(
        "history-uuid-1",
        &format_args!("0x{:016x}", sb.uuids.history[1]),
    );
    kv("flags", &sb.flags);
    kv("disk-state", &sb.disk_state);
    kv("bitmap-bits", &d.bitmap.bit_count());
    kv("bitmap-set-bits", &d.bitmap.count_set());
    kv("out-of-sync-bytes", &d.bitmap.dirty_bytes());
    kv("al-seq", &d.al_seq);
    kv("al-hot-extent-count", &d.al_hot_extents.len());
    let list: Vec<String> = d.al_hot_extents.iter().map(u64::to_string).collect();
    kv("al-hot-extents", &list.join(","));
    s
}

/// `2024-01-02T03:04:05Z (1704164645)`.
pub fn format_unix_time(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z ({unix_s})",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::superblock::choose;

    const MIB: usize = 1 << 20;

    fn opts() -> CreateOptions {
        CreateOptions {
            al_extents: 16,
            node_name: "alpha".into(),
            peer_name: "bravo".into(),
            ..CreateOptions::default()
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(format_unix_time(0), "1970-01-01T00:00:00Z (0)");
        assert_eq!(
            format_unix_time(1_704_164_645),
            "2024-01-02T03:04:05Z (1704164645)"
        );
        assert_eq!(
            format_unix_time(951_782_400),
            "2000-02-29T00:00:00Z (951782400)"
        );
    }

    #[test]
    fn create_open_modify_reopen_in_memory() {
        let io = MemIo::new(64 * MIB);
        let store = MetaStore::create(&io, opts()).unwrap();
        let sb = store.superblock().clone();
        assert_eq!(
            sb.uuids,
            GenerationUuids {
                current: 4,
                bitmap: 0,
                history: [0, 0]
            }
        );
        assert_eq!(sb.disk_state, DiskState::Inconsistent);
        assert!(sb.flags.is_empty());
        let (mut store, sb2, mut bm, hot) = MetaStore::open(&io).unwrap();
        assert_eq!(sb2, sb);
        assert_eq!((bm.count_set(), hot.len()), (0, 0));

        let mut al = store.activity_log();
        let u = al.note_write(5 * MIB as u64, 4096).unwrap();
        store.write_al(&u).unwrap();
        bm.set_range(5 * MIB as u64, 4096);
        bm.set_range(40 * MIB as u64, 1);
        store.flush_bitmap(&mut bm).unwrap();
        let mut next = sb2.clone();
        next.uuids.current = 0x1234_5678;
        next.flags = MdFlags::CONSISTENT | MdFlags::PRIMARY_IND;
        next.disk_state = DiskState::UpToDate;
        assert_eq!(store.write_superblock(&next).unwrap(), 2);
        assert_eq!(store.newest_slot(), 1);
        assert_eq!(store.write_superblock(&next).unwrap(), 3);
        assert_eq!(store.newest_slot(), 0);

        let (store2, sb3, bm3, hot3) = MetaStore::open(&io).unwrap();
        assert_eq!(sb3.seq, 3);
        assert_eq!(sb3.uuids.current, 0x1234_5678);
        assert_eq!(sb3.flags, next.flags);
        assert_eq!(bm3.count_set(), 2);
        assert!(bm3.is_set(5 * 256) && bm3.is_set(40 * 256));
        assert_eq!(hot3, vec![1]);
        let mut al2 = store2.activity_log();
        assert_eq!(al2.note_write(5 * MIB as u64, 1), None);
        assert_eq!(al2.note_write(0, 1).unwrap().seq, 2);
    }

    #[test]
    fn create_refuses_existing_unless_forced() {
        let io = MemIo::new(16 * MIB);
        MetaStore::create(&io, opts()).unwrap();
        let e = MetaStore::create(&io, opts()).unwrap_err().to_string();
        assert!(
            e.contains("memory disk already holds urbd metadata (created "),
            "{e}"
        );
        assert!(
            e.contains("use --force to overwrite (this discards it)"),
            "{e}"
        );
        // Forced: a dirty bitmap and AL are cleared.
        let (mut store, _, mut bm, _) = MetaStore::open(&io).unwrap();
        bm.set_all();
        store.flush_bitmap(&mut bm).unwrap();
        let u = store.activity_log().note_write(0, 1).unwrap();
        store.write_al(&u).unwrap();
        let old_id = store.superblock().device_uuid;
        MetaStore::create(
            &io,
            CreateOptions {
                force: true,
                ..opts()
            },
        )
        .unwrap();
        let (_, sb, bm, hot) = MetaStore::open(&io).unwrap();
        assert_ne!(sb.device_uuid, old_id);
        assert_eq!((bm.count_set(), hot.len()), (0, 0));
    }

    #[test]
    fn open_errors_name_cause_and_fix() {
        let io = MemIo::new(16 * MIB);
        let e = MetaStore::open(&io).unwrap_err().to_string();
        assert_eq!(
            e,
            "no urbd metadata on memory disk: run `urbdadm create-md <res>`"
        );
        let e = MetaStore::create(&MemIo::new(MIB), opts())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory disk is too small") && e.contains("at least"),
            "{e}"
        );
        // Both slots damaged: a corruption error, not "no metadata".
        MetaStore::create(&io, opts()).unwrap();
        let mut bytes = io.snapshot();
        let sb_off = bytes.len() - 8192;
        bytes[sb_off + 100] ^= 1;
        let e = MetaStore::open(&MemIo::from_bytes(bytes))
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum"), "{e}");
        // Resized disk: the slots are no longer at the end.
        let mut bytes = io.snapshot();
        bytes.extend_from_slice(&[0u8; 4096]);
        let sb = bytes[bytes.len() - 12288..bytes.len() - 8192].to_vec();
        let n = bytes.len();
        bytes[n - 8192..n - 4096].copy_from_slice(&sb);
        let e = MetaStore::open(&MemIo::from_bytes(bytes))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match the disk"), "{e}");
    }

    // A failed (crashed) superblock write leaves the old state; the next write goes to the same
    // slot again and succeeds.
    #[test]
    fn failed_superblock_write_keeps_old_state() {
        let io = MemIo::new(16 * MIB);
        let mut store = MetaStore::create(&io, opts()).unwrap();
        let mut next = store.superblock().clone();
        next.uuids.current = 0x77;
        io.fail_writes_after(Some(0));
        assert!(store.write_superblock(&next).is_err());
        io.fail_writes_after(None);
        let (_, sb, _, _) = MetaStore::open(&io).unwrap();
        assert_eq!(sb.uuids.current, UUID_JUST_CREATED);
        assert_eq!(store.write_superblock(&next).unwrap(), 2);
        let (_, sb, _, _) = MetaStore::open(&io).unwrap();
        assert_eq!((sb.seq, sb.uuids.current), (2, 0x77));
    }

    // A crash at any point of create-md over old metadata leaves either the old metadata or
    // none or the new, never the old superblock with a cleared bitmap.
    #[test]
    fn crash_during_forced_create() {
        let base = MemIo::new(16 * MIB);
        MetaStore::create(&base, opts()).unwrap();
        let (mut s, _, mut bm, _) = MetaStore::open(&base).unwrap();
        bm.set_all();
        s.flush_bitmap(&mut bm).unwrap();
        let old = base.snapshot();
        for n in 0..8 {
            let io = MemIo::from_bytes(old.clone());
            io.fail_writes_after(Some(n));
            let r = MetaStore::create(
                &io,
                CreateOptions {
                    force: true,
                    ..opts()
                },
            );
            io.fail_writes_after(None);
            match MetaStore::open(&io) {
                Ok((_, sb, bm, _)) => {
                    if r.is_ok() {
                        assert_eq!(bm.count_set(), 0);
                    } else {
                        assert_eq!(
                            bm.count_set(),
                            bm.bit_count(),
                            "old sb needs its old bitmap ({n})"
                        );
                        assert_eq!(sb.seq, 1);
                    }
                }
                Err(e) => assert!(
                    r.is_err() && e.to_string().contains("no urbd metadata"),
                    "{e}"
                ),
            }
        }
    }

    #[test]
    fn dump_is_greppable() {
        let io = MemIo::new(16 * MIB);
        MetaStore::create(&io, opts()).unwrap();
        let (mut store, sb, mut bm, _) = MetaStore::open(&io).unwrap();
        bm.set_range(0, 8192);
        let u = store.activity_log().note_write(4 << 20, 1).unwrap();
        store.write_al(&u).unwrap();
        let mut next = sb.clone();
        next.flags = MdFlags::CONSISTENT | MdFlags::CLEAN_SHUTDOWN;
        store.write_superblock(&next).unwrap();
        let sb = store.superblock().clone();
        let text = store.dump(&sb, &bm, &store.al_state().extents.clone());
        for want in [
            "current-uuid: 0x0000000000000004\n",
            "bitmap-uuid: 0x0000000000000000\n",
            "flags: CONSISTENT|CLEAN_SHUTDOWN\n",
            "disk-state: Inconsistent\n",
            "bitmap-set-bits: 2\n",
            "out-of-sync-bytes: 8192\n",
            "al-hot-extents: 1\n",
            "al-seq: 1\n",
            "superblock-seq: 2\n",
            "superblock-slot: B\n",
            "node-name: alpha\n",
            "bytes-per-bit: 4096\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.lines().all(|l| l.contains(": ")), "{text}");
        // The slot choice agrees with choose().
        let bytes = io.snapshot();
        let off = store.layout().superblock_offset_bytes as usize;
        let a: [u8; 4096] = bytes[off..off + 4096].try_into().unwrap();
        let b: [u8; 4096] = bytes[off + 4096..off + 8192].try_into().unwrap();
        assert_eq!(choose(&a, &b).unwrap().seq, 2);
    }

    // The real thing: a temp file through pread/pwrite/fdatasync.
    #[test]
    fn file_create_open_modify_reopen() {
        let path = std::env::temp_dir().join(format!(
            "urbd-meta-test-{}-{:x}",
            std::process::id(),
            try_new_uuid().unwrap()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 30).unwrap(); // sparse 1 GiB
        assert_eq!(MetaIo::describe(&f), path.display().to_string());
        {
            let store = MetaStore::create(&f, CreateOptions::default()).unwrap();
            let l = *store.layout();
            assert_eq!(l.data_size_bytes, (1 << 30) - 73728);
            assert_eq!(l.superblock_offset_bytes, (1 << 30) - 8192);
        }
        let (mut store, sb, mut bm, hot) = MetaStore::open(&f).unwrap();
        assert!(hot.is_empty());
        bm.set_range(123 << 20, 1 << 20);
        store.flush_bitmap(&mut bm).unwrap();
        let mut al = store.activity_log();
        store
            .write_al(&al.note_write(123 << 20, 1 << 20).unwrap())
            .unwrap();
        let mut next = sb.clone();
        next.uuids.bitmap = sb.uuids.current;
        next.uuids.current = try_new_uuid().unwrap();
        next.flags.insert(MdFlags::PRIMARY_IND);
        store.write_superblock(&next).unwrap();
        drop(store);
        drop(f);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (store, sb2, bm2, hot2) = MetaStore::open(&f).unwrap();
        assert_eq!(sb2.uuids, next.uuids);
        assert!(sb2.flags.contains(MdFlags::PRIMARY_IND));
        assert_eq!(bm2.count_set(), 256);
        assert_eq!(
            bm2.iter_set_ranges(0).collect::<Vec<_>>(),
            vec![(123 << 20, 1 << 20)]
        );
        assert_eq!(hot2, vec![30]);
        let text = store.dump(&sb2, &bm2, &hot2);
        assert!(
            text.contains(&format!("disk: {}\n", path.display())),
            "{text}"
        );
        assert!(MetaStore::create(&f, CreateOptions::default()).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
