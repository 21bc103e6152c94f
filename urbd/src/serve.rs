//! `urbd serve`: one local disk exported over NBD, unreplicated (like qemu-nbd).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use nbd_frontend::{BlockDevice, DeviceError, DeviceInfo, Errno, Extent, ZeroFlags};
use urbd_replicator::disk::{DiskConfig, EngineKind, IoBuf, LocalDisk};

use crate::listen::ListenAddr;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Backing file or block device.
    #[arg(long)]
    pub disk: PathBuf,
    /// `HOST:PORT` (port 0 picks a free one) or `unix:/path/to/socket`.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: ListenAddr,
    /// Export name clients ask for (the empty name works too).
    #[arg(long, default_value = "urbd")]
    pub export: String,
    /// Export read-only: writes, trims and zeroes get EPERM.
    #[arg(long)]
    pub read_only: bool,
    /// Treat the disk's O_DIRECT alignment as N bytes instead of detecting it (power of two).
    #[arg(long, value_name = "N", value_parser = parse_align)]
    pub io_align_bytes: Option<u32>,
    /// Disk I/O engine: auto (io_uring; inline on tmpfs; threads if io_uring is refused),
    /// uring, threads, inline.
    #[arg(long, default_value = "auto", value_parser = parse_engine)]
    pub disk_engine: EngineKind,
}

fn parse_align(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !n.is_power_of_two() || !(512..=65536).contains(&n) {
        return Err(format!("{n} must be a power of two between 512 and 65536"));
    }
    Ok(n)
}

fn parse_engine(s: &str) -> Result<EngineKind, String> {
    match s {
        "auto" => Ok(EngineKind::Auto),
        "uring" | "io_uring" => Ok(EngineKind::Uring),
        "threads" => Ok(EngineKind::Threads),
        "inline" => Ok(EngineKind::Inline),
        _ => Err(format!("{s:?}: expected auto, uring, threads or inline")),
    }
}

/// A local disk seen as an NBD block device.
pub struct ServedDisk {
    disk: LocalDisk,
    read_only: bool,
}

impl ServedDisk {
    pub fn new(disk: LocalDisk, read_only: bool) -> ServedDisk {
        ServedDisk { disk, read_only }
    }
}

/// Maps a disk engine error onto the NBD error the client gets.
pub fn device_error(e: urbd_replicator::Error) -> DeviceError {
    let errno = match e {
        urbd_replicator::Error::FastZeroUnsupported => Errno::NotSup,
        ref other => Errno::from_os(other.os_errno().unwrap_or(libc::EIO)),
    };
    DeviceError::new(errno, e.to_string())
}

impl BlockDevice for ServedDisk {
    type Buf = IoBuf;

    fn info(&self) -> DeviceInfo {
        let g = self.disk.geometry();
        DeviceInfo {
            size_bytes: g.size_bytes,
            read_only: self.read_only,
            can_trim: true,
            can_fast_zero: true,
            block_bytes_min: g.align_bytes,
        }
    }

    fn alloc(&self, len: usize) -> IoBuf {
        self.disk.alloc(len)
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> Result<IoBuf, DeviceError> {
        self.disk.read(offset, buf).await.map_err(device_error)
    }

    async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> Result<(), DeviceError> {
        self.disk
            .write(offset, buf, fua)
            .await
            .map_err(device_error)
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        self.disk.flush().await.map_err(device_error)
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), DeviceError> {
        self.disk
            .trim(offset, u64::from(len), fua)
            .await
            .map_err(device_error)
    }

    async fn write_zeroes(&self, offset: u64, len: u32, f: ZeroFlags) -> Result<(), DeviceError> {
        self.disk
            .write_zeroes(offset, u64::from(len), f.may_trim, f.fast_only, f.fua)
            .await
            .map_err(device_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DeviceError> {
        block_status_of(&self.disk, offset, len)
    }
}

/// `base:allocation` extents of a local disk range.
pub fn block_status_of(
    disk: &LocalDisk,
    offset: u64,
    len: u32,
) -> Result<Vec<Extent>, DeviceError> {
    let extents = disk
        .extents(offset, u64::from(len), 64)
        .map_err(device_error)?;
    Ok(extents
        .into_iter()
        .map(|e| Extent {
            length: u32::try_from(e.length_bytes).expect("bounded by the request length"),
            flags: if e.hole {
                nbd_frontend::consts::STATE_HOLE | nbd_frontend::consts::STATE_ZERO
            } else {
                0
            },
        })
        .collect())
}

/// Runs `urbd serve` until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    let config = DiskConfig {
        read_only: args.read_only,
        align_bytes_forced: args.io_align_bytes,
        engine: args.disk_engine,
        ..DiskConfig::default()
    };
    let disk = LocalDisk::open(&args.disk, &config)?;
    let device = Arc::new(ServedDisk::new(disk, args.read_only));
    let (listener, uri) = args
        .listen
        .bind(&args.export)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let server_config = nbd_frontend::ServerConfig {
        export_name: args.export.clone(),
        description: format!("urbd serve {}", args.disk.display()),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::signals::stop_on_signal(stop));
    println!("urbd: serving {} as {uri}", args.disk.display());
    use std::io::Write;
    std::io::stdout().flush().ok();
    nbd_frontend::run(listener, device, server_config, stopped).await?;
    tracing::info!("stopped");
    Ok(())
}
