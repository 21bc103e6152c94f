//! Opening a backing disk: O_DIRECT when the file system allows it, its size, its alignment.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::Error;

/// What we learnt about a backing disk when opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub size_bytes: u64,
    /// Offset/length alignment O_DIRECT needs (1 when not using O_DIRECT).
    pub align_bytes: u32,
    pub direct: bool,
    pub block_device: bool,
}

/// Opens `path`, preferring O_DIRECT. `align_bytes_forced` overrides the detected alignment
/// (tests use it to exercise read-modify-write).
pub fn open(
    path: &Path,
    read_only: bool,
    align_bytes_forced: Option<u32>,
) -> Result<(File, Geometry), Error> {
    let open_err = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(open_err)?;
    let block_device = meta.file_type().is_block_device();
    if !block_device && !meta.is_file() {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        )));
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(!read_only);
    let direct = opts.clone().custom_flags(libc::O_DIRECT).open(path);
    let (file, direct) = match direct {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "{}: O_DIRECT not supported by this file system; using the page cache \
                 (FLUSH and FUA still fdatasync)",
                path.display()
            );
            (opts.open(path).map_err(open_err)?, false)
        }
        Err(e) => return Err(open_err(e)),
    };
    let (file, direct) = if direct && memory_backed(&file) {
        // tmpfs keeps data in the page cache whatever we ask: O_DIRECT would only add an
        // alignment constraint (and read-modify-write for small writes).
        tracing::info!(
            "{}: memory-backed file system; not using O_DIRECT",
            path.display()
        );
        drop(file);
        (opts.open(path).map_err(open_err)?, false)
    } else {
        (file, direct)
    };
    let size_bytes = disk_size(&file).map_err(|e| Error::Size {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if size_bytes == 0 {
        return Err(Error::Size {
            path: path.to_owned(),
            detail: "size is 0 bytes; create it first (e.g. truncate -s 1G FILE)".into(),
        });
    }
    let mut align_bytes = if direct {
        align_forced_or_detected(&file, block_device, align_bytes_forced)
    } else {
        1
    };
    if direct && size_bytes % u64::from(align_bytes) != 0 {
        // O_DIRECT on the last partial block would extend or fail: use the page cache instead.
        tracing::warn!(
            "{}: size {size_bytes} is not a multiple of the {align_bytes}-byte O_DIRECT \
             alignment; using the page cache",
            path.display()
        );
        drop(file);
        let file = opts.open(path).map_err(open_err)?;
        align_bytes = 1;
        return Ok((
            file,
            Geometry {
                size_bytes,
                align_bytes,
                direct: false,
                block_device,
            },
        ));
    }
    Ok((
        file,
        Geometry {
            size_bytes,
            align_bytes,
            direct,
            block_device,
        },
    ))
}

fn disk_size(file: &File) -> io::Result<u64> {
    // SAFETY: lseek on a descriptor we own; works for regular files and block devices alike.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(end as u64)
}

fn align_forced_or_detected(file: &File, block_device: bool, forced: Option<u32>) -> u32 {
    if let Some(a) = forced {
        assert!(a.is_power_of_two(), "alignment must be a power of two");
        return a;
    }
    if let Some(a) = statx_dio_offset_align(file) {
        return a.max(1);
    }
    if block_device {
        let mut sector: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int into `sector`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut sector) };
        if rc == 0 && sector > 0 {
            return sector as u32;
        }
    }
    // Unknown: the largest alignment any common device needs.
    4096
}

fn statx_dio_offset_align(file: &File) -> Option<u32> {
    // SAFETY: statx is plain old data; zeroed is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, and a live output struct.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(stx.stx_dio_offset_align)
}

/// True for file systems whose I/O completes at memory speed (tmpfs, ramfs).
pub fn memory_backed(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a live output struct.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    let kind = st.f_type as i64;
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}
