//! `LocalDisk`: async block I/O on one backing file or device.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::buf::{IoBuf, Pool};
use super::faults::{FaultPlan, FaultRules};
use super::op::{Completion, Op, OpKind};
use super::open::{self, Geometry};
use super::range_lock::RangeLocks;
use super::threads::{self, ThreadBackend};
use super::uring::UringBackend;
use crate::error::Error;

/// Which backend executes the I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring, falling back to threads when the kernel refuses it.
    #[default]
    Auto,
    Uring,
    Threads,
    /// Synchronous I/O in the calling thread: for memory-backed file systems (tmpfs), where
    /// every operation completes at memory speed and io_uring would hand it to a kernel worker.
    Inline,
}

/// How to open and drive a disk.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub read_only: bool,
    /// Treat the O_DIRECT alignment as this many bytes (power of two), instead of detecting it.
    pub align_bytes_forced: Option<u32>,
    pub engine: EngineKind,
    pub ring_entries: u32,
    /// Registered buffers and their size; larger I/O uses heap buffers.
    pub pool_buffers: u16,
    pub pool_buffer_bytes: usize,
    /// Recycled large buffers (not registered) and their size; larger I/O allocates.
    pub large_pool_buffers: u16,
    pub large_pool_buffer_bytes: usize,
    pub fallback_threads: usize,
    /// Largest chunk written at once when zeroes must be written out.
    pub zero_chunk_bytes: usize,
    /// Tests only: a fault plan file (`faults.rs`) consulted before every data operation.
    pub fault_plan: Option<std::path::PathBuf>,
}

impl Default for DiskConfig {
    fn default() -> DiskConfig {
        DiskConfig {
            read_only: false,
            align_bytes_forced: None,
            engine: EngineKind::Auto,
            ring_entries: 256,
            pool_buffers: 256,
            pool_buffer_bytes: 128 << 10,
            large_pool_buffers: 64,
            large_pool_buffer_bytes: 1 << 20,
            fallback_threads: 4,
            zero_chunk_bytes: 1 << 20,
            fault_plan: None,
        }
    }
}

enum Backend {
    Uring(UringBackend),
    Threads(ThreadBackend),
    Inline,
}

/// An allocation extent of the backing file: `hole` ranges read as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length_bytes: u64,
    pub hole: bool,
}

/// One backing disk. All methods may be called concurrently.
pub struct LocalDisk {
    backend: Backend,
    file: Arc<File>,
    geometry: Geometry,
    pool: Arc<Pool>,
    large_pool: Arc<Pool>,
    locks: RangeLocks,
    zero_chunk_bytes: usize,
    path: String,
    faults: Option<FaultPlan>,
}

impl LocalDisk {
    pub fn open(path: &Path, config: &DiskConfig) -> Result<LocalDisk, Error> {
        let (file, geometry) = open::open(path, config.read_only, config.align_bytes_forced)?;
        let file = Arc::new(file);
        let pool = Pool::registrable(config.pool_buffers, config.pool_buffer_bytes);
        let large_pool = Pool::plain(config.large_pool_buffers, config.large_pool_buffer_bytes);
        let mut engine = config.engine;
        if engine == EngineKind::Auto && open::memory_backed(&file) {
            engine = EngineKind::Inline;
        }
        let uring = match engine {
            EngineKind::Threads | EngineKind::Inline => None,
            EngineKind::Uring => Some(
                UringBackend::start(file.clone(), config.ring_entries, Some(pool.clone()))
                    .map_err(Error::Uring)?,
            ),
            EngineKind::Auto => {
                match UringBackend::start(file.clone(), config.ring_entries, Some(pool.clone())) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::warn!(
                            "io_uring unavailable ({e}); using a pool of {} I/O threads instead",
                            config.fallback_threads
                        );
                        None
                    }
                }
            }
        };
        let backend = match uring {
            Some(b) => Backend::Uring(b),
            None if engine == EngineKind::Inline => Backend::Inline,
            None => Backend::Threads(
                ThreadBackend::start(file.clone(), config.fallback_threads).map_err(|source| {
                    Error::Open {
                        path: path.to_owned(),
                        source,
                    }
                })?,
            ),
        };
        tracing::info!(
            path = %path.display(),
            size_bytes = geometry.size_bytes,
            align_bytes = geometry.align_bytes,
            direct = geometry.direct,
            engine = match backend {
                Backend::Uring(_) => "io_uring",
                Backend::Threads(_) => "threads",
                Backend::Inline => "inline (memory-backed file system)",
            },
            "disk opened"
        );
        Ok(LocalDisk {
            backend,
            file,
            geometry,
            pool,
            large_pool,
            locks: RangeLocks::default(),
            zero_chunk_bytes: config.zero_chunk_bytes,
            path: path.display().to_string(),
            faults: config.fault_plan.as_deref().map(|p| {
                tracing::warn!(
                    plan = %p.display(),
                    "disk fault injection is on (testing.disk-fault-plan): for tests only"
                );
                FaultPlan::new(p)
            }),
        })
    }

    /// Tests only: applies the fault plan (if any) to one operation — its write delay, then EIO
    /// when `fails` says so.
    async fn injected(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        fails: impl FnOnce(&FaultRules) -> bool,
    ) -> Result<(), Error> {
        let Some(plan) = &self.faults else {
            return Ok(());
        };
        let rules = plan.rules();
        if rules.write_delay_ms > 0 && op != "read" {
            tokio::time::sleep(std::time::Duration::from_millis(rules.write_delay_ms)).await;
        }
        if !fails(&rules) {
            return Ok(());
        }
        tracing::warn!(op, offset, len, plan = %plan.path().display(), "injected EIO");
        Err(Error::Io {
            op,
            offset,
            len,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when I/O goes through io_uring.
    pub fn uses_uring(&self) -> bool {
        matches!(self.backend, Backend::Uring(_))
    }

    /// An aligned buffer of `len` bytes (registered when small enough and one is free).
    pub fn alloc(&self, len: usize) -> IoBuf {
        self.pool
            .take(len)
            .or_else(|| self.large_pool.take(len))
            .unwrap_or_else(|| IoBuf::heap(len))
    }

    async fn submit(&self, kind: OpKind, offset: u64) -> Completion {
        let (done, wait) = oneshot::channel();
        let mut op = Op { kind, offset, done };
        match &self.backend {
            Backend::Uring(b) => b.submit(op),
            Backend::Threads(b) => b.submit(op),
            Backend::Inline => {
                let result = threads::execute(&self.file, &mut op);
                op.complete(result);
            }
        }
        wait.await.unwrap_or(Completion {
            result: Err(std::io::Error::from_raw_os_error(libc::ESHUTDOWN)),
            buf: None,
        })
    }

    async fn raw_read(&self, offset: u64, buf: IoBuf) -> Result<IoBuf, Error> {
        let len = buf.len() as u64;
        let c = self.submit(OpKind::Read { buf }, offset).await;
        c.result.map_err(|source| Error::Io {
            op: "read",
            offset,
            len,
            source,
        })?;
        Ok(c.buf.expect("read returns its buffer"))
    }

    async fn raw_write(&self, offset: u64, buf: IoBuf, dsync: bool) -> Result<(), Error> {
        let len = buf.len() as u64;
        let c = self.submit(OpKind::Write { buf, dsync }, offset).await;
        c.result.map_err(|source| Error::Io {
            op: "write",
            offset,
            len,
            source,
        })
    }

    fn aligned(&self, offset: u64, len: u64) -> (u64, u64) {
        let a = u64::from(self.geometry.align_bytes);
        let start = offset - offset % a;
        let end = (offset + len).next_multiple_of(a);
        (start, end)
    }

    fn check_range(&self, offset: u64, len: u64) {
        let end = offset.checked_add(len).expect("range end overflows");
        assert!(
            end <= self.geometry.size_bytes,
            "I/O past the end of the disk"
        );
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub async fn read(&self, offset: u64, mut buf: IoBuf) -> Result<IoBuf, Error> {
        let len = buf.len() as u64;
        self.check_range(offset, len);
        self.injected("read", offset, len, |r| r.read_fails(offset, len))
            .await?;
        if len == 0 {
            return Ok(buf);
        }
        let (start, end) = self.aligned(offset, len);
        if start == offset && end == offset + len {
            return self.raw_read(offset, buf).await;
        }
        let bounce = self
            .raw_read(start, self.alloc((end - start) as usize))
            .await?;
        let skip = (offset - start) as usize;
        buf.as_mut()
            .copy_from_slice(&bounce.as_ref()[skip..skip + len as usize]);
        Ok(buf)
    }

    /// Writes `buf` at `offset`; with `fua` it is durable on return. Writes whose aligned
    /// footprints overlap are serialised, so partial-block read-modify-write never loses a
    /// neighbour's data.
    pub async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> Result<(), Error> {
        let len = buf.len() as u64;
        self.check_range(offset, len);
        self.injected("write", offset, len, |r| r.write_fails(offset, len))
            .await?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.aligned(offset, len);
        let _guard = self.locks.lock(start, end).await;
        if start == offset && end == offset + len {
            return self.raw_write(offset, buf, fua).await;
        }
        let a = u64::from(self.geometry.align_bytes);
        let mut merged = self.alloc((end - start) as usize);
        if offset != start {
            let head = self.raw_read(start, self.alloc(a as usize)).await?;
            merged.as_mut()[..a as usize].copy_from_slice(head.as_ref());
        }
        let tail_start = end - a;
        let tail_read_by_head = offset != start && tail_start == start;
        if offset + len != end && !tail_read_by_head {
            let tail = self.raw_read(tail_start, self.alloc(a as usize)).await?;
            merged.as_mut()[(tail_start - start) as usize..].copy_from_slice(tail.as_ref());
        }
        let at = (offset - start) as usize;
        merged.as_mut()[at..at + len as usize].copy_from_slice(buf.as_ref());
        drop(buf);
        self.raw_write(start, merged, fua).await
    }

    /// Makes every completed write durable (fdatasync).
    pub async fn flush(&self) -> Result<(), Error> {
        self.injected("fdatasync", 0, 0, |r| r.flush_eio).await?;
        let c = self.submit(OpKind::Fsync, 0).await;
        c.result.map_err(|source| Error::Io {
            op: "fdatasync",
            offset: 0,
            len: 0,
            source,
        })
    }

    async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
        self.submit(OpKind::Fallocate { mode, len }, offset)
            .await
            .result
    }

    /// Discards a range. Deallocation is best effort (trim is advisory), but when it happens the
    /// range reads back as zeroes.
    pub async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), Error> {
        self.check_range(offset, len);
        self.injected("trim", offset, len, |r| r.write_fails(offset, len))
            .await?;
        if len == 0 || self.geometry.block_device && !self.sector_aligned(offset, len) {
            return Ok(());
        }
        let (start, end) = self.aligned(offset, len);
        let guard = self.locks.lock(start, end).await;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(mode, offset, len).await {
            Ok(()) => {}
            Err(e) if unsupported(&e) => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "trim",
                    offset,
                    len,
                    source,
                })
            }
        }
        drop(guard);
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Makes a range read as zeroes. `may_trim` allows deallocating it; `fast_only` fails with
    /// `FastZeroUnsupported` rather than writing zeroes out.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), Error> {
        self.check_range(offset, len);
        self.injected("write zeroes", offset, len, |r| r.write_fails(offset, len))
            .await?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.aligned(offset, len);
        let fallocate_ok = !self.geometry.block_device || self.sector_aligned(offset, len);
        {
            let _guard = self.locks.lock(start, end).await;
            let mut modes = Vec::with_capacity(2);
            if fallocate_ok {
                if may_trim {
                    modes.push(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
                }
                modes.push(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE);
            }
            let mut done = false;
            for mode in modes {
                match self.fallocate(mode, offset, len).await {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(e) if unsupported(&e) => continue,
                    Err(source) => {
                        return Err(Error::Io {
                            op: "write-zeroes",
                            offset,
                            len,
                            source,
                        })
                    }
                }
            }
            if !done {
                if fast_only {
                    return Err(Error::FastZeroUnsupported);
                }
                drop(_guard);
                self.write_zero_chunks(offset, len).await?;
            }
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_zero_chunks(&self, offset: u64, len: u64) -> Result<(), Error> {
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(self.zero_chunk_bytes as u64);
            self.write(at, self.alloc(n as usize), false).await?;
            at += n;
        }
        Ok(())
    }

    fn sector_aligned(&self, offset: u64, len: u64) -> bool {
        offset % 512 == 0 && len % 512 == 0
    }

    /// Allocation map of `[offset, offset + len)`: at most `extents_max` extents, covering at
    /// least the first byte. Block devices report everything as data.
    pub fn extents(&self, offset: u64, len: u64, extents_max: usize) -> Result<Vec<Extent>, Error> {
        self.check_range(offset, len);
        let end = offset + len;
        if self.geometry.block_device || len == 0 {
            return Ok(vec![Extent {
                length_bytes: len,
                hole: false,
            }]);
        }
        let fd = self.file.as_raw_fd();
        let seek = |from: u64, whence| -> Result<Option<u64>, Error> {
            // SAFETY: lseek on a descriptor we keep open; the offset fits (checked < size).
            let r = unsafe { libc::lseek(fd, from as libc::off_t, whence) };
            if r >= 0 {
                return Ok(Some(r as u64));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            Err(Error::Io {
                op: "lseek",
                offset: from,
                len: 0,
                source: e,
            })
        };
        let mut out = Vec::new();
        let mut at = offset;
        while at < end && out.len() < extents_max {
            let data = seek(at, libc::SEEK_DATA)?.unwrap_or(u64::MAX);
            if data > at {
                let stop = data.min(end);
                out.push(Extent {
                    length_bytes: stop - at,
                    hole: true,
                });
                at = stop;
                continue;
            }
            let hole = seek(at, libc::SEEK_HOLE)?.unwrap_or(self.geometry.size_bytes);
            let stop = hole.min(end).max(at + 1);
            out.push(Extent {
                length_bytes: stop - at,
                hole: false,
            });
            at = stop;
        }
        Ok(out)
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}
