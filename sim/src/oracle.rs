//! What the clients wrote, and what a read may return.
//!
//! Every 512-byte sector a client writes carries (sector index, write id, crc32c), so any read
//! says which write it comes from, or that it is garbage (torn inside a sector, corrupted, or
//! placed at the wrong offset). Per sector the oracle keeps the writes issued in order (write
//! ids grow with issue order, and the core applies overlapping writes in issue order) and two
//! floors: the newest write acknowledged (volatile floor) and the newest write made durable by
//! an acknowledged FLUSH or FUA (durable floor). A read must return a write at or above the
//! floor in force, or zeroes from a zeroing at or above it.

use std::collections::HashMap;

use crate::disk::SECTOR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Zero,
    Write(u64),
    Garbage,
}

pub fn encode_sector(sector: u64, wid: u64, out: &mut [u8]) {
    out[0..8].copy_from_slice(&sector.to_le_bytes());
    out[8..16].copy_from_slice(&wid.to_le_bytes());
    let mut x = wid.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sector;
    for b in out[16..SECTOR - 4].iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (x >> 56) as u8;
    }
    let crc = crc32c::crc32c(&out[..SECTOR - 4]);
    out[SECTOR - 4..].copy_from_slice(&crc.to_le_bytes());
}

pub fn decode_sector(sector: u64, bytes: &[u8]) -> Value {
    if bytes.iter().all(|&b| b == 0) {
        return Value::Zero;
    }
    let crc = u32::from_le_bytes(bytes[SECTOR - 4..].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[..SECTOR - 4]) {
        return Value::Garbage;
    }
    let at = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
    if at != sector {
        return Value::Garbage;
    }
    Value::Write(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    ))
}

#[derive(Default, Clone)]
struct Hist {
    /// (write id, is a zeroing), in issue order.
    issued: Vec<(u64, bool)>,
    vol: u64,
    dur: u64,
}

#[derive(Clone, Copy)]
pub struct WriteRec {
    pub off: u64,
    pub len: u64,
    pub zero: bool,
}

pub struct Oracle {
    hist: Vec<Hist>,
    pub writes: HashMap<u64, WriteRec>,
    acked_not_durable: Vec<u64>,
}

impl Oracle {
    pub fn new(size: u64) -> Oracle {
        Oracle {
            hist: vec![Hist::default(); (size / SECTOR as u64) as usize],
            writes: HashMap::new(),
            acked_not_durable: Vec::new(),
        }
    }

    fn sectors(r: &WriteRec) -> std::ops::Range<usize> {
        (r.off / SECTOR as u64) as usize..((r.off + r.len) / SECTOR as u64) as usize
    }

    pub fn issue(&mut self, wid: u64, rec: WriteRec) {
        for s in Self::sectors(&rec) {
            self.hist[s].issued.push((wid, rec.zero));
        }
        self.writes.insert(wid, rec);
    }

    /// The node refused it (not Primary): it never reached a disk.
    pub fn refused(&mut self, wid: u64) {
        let rec = self.writes[&wid];
        for s in Self::sectors(&rec) {
            self.hist[s].issued.retain(|&(w, _)| w != wid);
        }
    }

    pub fn acked(&mut self, wid: u64, fua: bool) {
        let rec = self.writes[&wid];
        for s in Self::sectors(&rec) {
            let h = &mut self.hist[s];
            h.vol = h.vol.max(wid);
            if fua {
                h.dur = h.dur.max(wid);
            }
        }
        if !fua {
            self.acked_not_durable.push(wid);
        }
    }

    /// A FLUSH is issued: it covers every write acknowledged so far.
    pub fn flush_snapshot(&self) -> Vec<u64> {
        self.acked_not_durable.clone()
    }

    pub fn flush_acked(&mut self, covered: &[u64]) {
        for &wid in covered {
            let rec = self.writes[&wid];
            for s in Self::sectors(&rec) {
                let h = &mut self.hist[s];
                h.dur = h.dur.max(wid);
                h.vol = h.vol.max(wid);
            }
        }
        self.acked_not_durable.retain(|w| !covered.contains(w));
    }

    /// Unflushed acknowledged writes may legitimately be gone (a crash, a failover).
    pub fn forget_volatile(&mut self) {
        for h in &mut self.hist {
            h.vol = h.dur;
        }
        // A later FLUSH does not bring back what was lost.
        self.acked_not_durable.clear();
    }

    /// Protocol A acknowledges a write once it is on the local disk and handed to the
    /// network: a failover may lose writes the old Primary had (even flushed there) that never
    /// reached the new one — DRBD's documented protocol A trade-off. Floors restart at zero.
    pub fn forget_unreplicated(&mut self) {
        for h in &mut self.hist {
            h.vol = 0;
            h.dur = 0;
        }
        self.acked_not_durable.clear();
    }

    /// Checks one sector read from the serving node. `floors`: enforce the durable floor
    /// (invariant 1) and the volatile floor (invariant 2); garbage is always a violation.
    pub fn check(&self, sector: usize, v: Value, floors: bool) -> Result<(), String> {
        let h = &self.hist[sector];
        let floor = if floors { h.vol.max(h.dur) } else { 0 };
        let what = if floors && h.dur >= h.vol {
            "durability (1): a write acknowledged before an acknowledged FLUSH/FUA"
        } else {
            "reads (2): an acknowledged write"
        };
        self.check_against(sector, v, floor, what)
    }

    /// As [`Oracle::check`], against a floor taken earlier (a read asked then, answered now).
    pub fn check_floor(&self, sector: usize, v: Value, floor: u64) -> Result<(), String> {
        self.check_against(
            sector,
            v,
            floor,
            "reads (2): a write acknowledged when the read was asked",
        )
    }

    fn check_against(&self, sector: usize, v: Value, floor: u64, what: &str) -> Result<(), String> {
        match v {
            Value::Garbage => Err(format!(
                "sector {sector}: data that was never written (bad checksum or wrong place)"
            )),
            Value::Write(w) => {
                if !self.hist[sector].issued.iter().any(|&(x, z)| x == w && !z) {
                    return Err(format!("sector {sector}: write {w} was never issued here"));
                }
                if w < floor {
                    return Err(format!(
                        "sector {sector}: read write {w}, older than {floor}; violates {what}"
                    ));
                }
                Ok(())
            }
            Value::Zero => {
                if floor == 0 || self.zeroed_since(sector, floor) {
                    Ok(())
                } else {
                    Err(format!(
                        "sector {sector}: read zeroes, older than write {floor}; violates {what}"
                    ))
                }
            }
        }
    }

    /// The sectors write `wid` covered.
    pub fn sectors_of(&self, wid: u64) -> Vec<usize> {
        self.writes
            .get(&wid)
            .map(|rec| Self::sectors(rec).collect())
            .unwrap_or_default()
    }

    /// True if a zero write at or after `wid` was issued for `sector` (or `wid` itself zeroed).
    pub fn zeroed_since(&self, sector: usize, wid: u64) -> bool {
        self.hist[sector].issued.iter().any(|&(x, z)| z && x >= wid)
    }

    /// Where each sector's floor stands (for traces).
    pub fn floor(&self, sector: usize) -> (u64, u64) {
        (self.hist[sector].vol, self.hist[sector].dur)
    }
}
