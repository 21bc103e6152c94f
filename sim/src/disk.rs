//! Simulated disks: a data disk and a metadata device, both with a volatile write cache.
//!
//! A completed write lands in the cache (`current`, what reads see); FLUSH (or FUA) makes it
//! durable. A crash keeps the durable image plus a random subset of the cached sectors (the
//! cache may have written some back), and each write still in flight may have landed partly,
//! sector by sector (torn at 512-byte granularity).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io;
use std::rc::Rc;

use urbd_replicator::meta::MetaIo;

use crate::rng::Rng;

pub const SECTOR: usize = 512;

/// A data region with a volatile cache.
#[derive(Clone)]
pub struct Disk {
    pub durable: Vec<u8>,
    pub current: Vec<u8>,
    dirty: BTreeSet<usize>,
}

impl Disk {
    pub fn new(size: usize) -> Disk {
        Disk {
            durable: vec![0; size],
            current: vec![0; size],
            dirty: BTreeSet::new(),
        }
    }

    pub fn write(&mut self, off: usize, data: &[u8], fua: bool) {
        self.current[off..off + data.len()].copy_from_slice(data);
        for s in off / SECTOR..(off + data.len()).div_ceil(SECTOR) {
            if fua {
                self.durable[s * SECTOR..(s + 1) * SECTOR]
                    .copy_from_slice(&self.current[s * SECTOR..(s + 1) * SECTOR]);
                self.dirty.remove(&s);
            } else {
                self.dirty.insert(s);
            }
        }
    }

    /// Every completed write becomes durable.
    pub fn flush(&mut self) {
        for s in std::mem::take(&mut self.dirty) {
            self.durable[s * SECTOR..(s + 1) * SECTOR]
                .copy_from_slice(&self.current[s * SECTOR..(s + 1) * SECTOR]);
        }
    }

    /// Power loss: cached sectors survive at random; writes in flight land torn.
    pub fn crash(&mut self, rng: &mut Rng, in_flight: &[(usize, Vec<u8>)]) {
        for s in std::mem::take(&mut self.dirty) {
            if rng.chance(0.5) {
                self.durable[s * SECTOR..(s + 1) * SECTOR]
                    .copy_from_slice(&self.current[s * SECTOR..(s + 1) * SECTOR]);
            }
        }
        for (off, data) in in_flight {
            for (k, chunk) in data.chunks(SECTOR).enumerate() {
                if rng.chance(0.3) {
                    let o = off + k * SECTOR;
                    self.durable[o..o + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
        self.current = self.durable.clone();
    }

    pub fn unflushed_sectors(&self) -> usize {
        self.dirty.len()
    }
}

/// The metadata area of a node's backing disk (everything past the data region), shared by
/// the real `MetaStore` (through [`MetaHandle`]) and the simulator (crashes, torn writes).
pub struct MetaDev {
    /// Offset of the first byte held (the end of the data region).
    base: u64,
    total: u64,
    disk: Disk,
    /// Writes left before the device "loses power" in the middle of one (torn).
    pub crash_after_writes: Option<u32>,
    pub dead: bool,
    rng: Rng,
}

#[derive(Clone)]
pub struct MetaHandle(pub Rc<RefCell<MetaDev>>);

impl MetaDev {
    pub fn new(base: u64, total: u64, seed: u64) -> MetaDev {
        MetaDev {
            base,
            total,
            disk: Disk::new((total - base) as usize),
            crash_after_writes: None,
            dead: false,
            rng: Rng::new(seed),
        }
    }

    fn range(&self, off: u64, len: usize) -> io::Result<usize> {
        if off < self.base || off + len as u64 > self.total {
            return Err(io::Error::other("outside the metadata area"));
        }
        Ok((off - self.base) as usize)
    }

    /// The node crashed: the cache is lost (partly written back), the device works again.
    pub fn crash(&mut self, rng: &mut Rng) {
        self.disk.crash(rng, &[]);
        self.dead = false;
        self.crash_after_writes = None;
    }
}

impl MetaIo for MetaHandle {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.0.borrow();
        let o = d.range(off, buf.len())?;
        buf.copy_from_slice(&d.disk.current[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        if d.dead {
            return Err(io::Error::from_raw_os_error(5));
        }
        let o = d.range(off, buf.len())?;
        match d.crash_after_writes {
            Some(0) => {
                // Power fails during this write: some of its sectors reach the platter.
                let mut rng = d.rng.clone();
                let data = buf.to_vec();
                d.disk.crash(&mut rng, &[(o, data)]);
                d.rng = rng;
                d.dead = true;
                return Err(io::Error::from_raw_os_error(5));
            }
            Some(n) => d.crash_after_writes = Some(n - 1),
            None => {}
        }
        d.disk.write(o, buf, false);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        if d.dead {
            return Err(io::Error::from_raw_os_error(5));
        }
        d.disk.flush();
        Ok(())
    }
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.borrow().total)
    }
    fn describe(&self) -> String {
        "simulated metadata".into()
    }
}
