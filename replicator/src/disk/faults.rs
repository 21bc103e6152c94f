//! A disk fault plan, for tests only: a text file naming ranges of the backing file where I/O
//! fails with EIO, and a delay added to writes. Selected by `[testing] disk-fault-plan` in a
//! resource's config (never set by default; the daemon warns at start when it is); the file is
//! re-read whenever it changes, so a test turns faults on and off while the daemon runs.
//!
//! ```text
//! # comments and blank lines are ignored; offsets and lengths in bytes of the backing file
//! read-eio 1048576 65536     # reads touching [1 MiB, 1 MiB + 64 KiB) fail
//! write-eio 0 all            # every write fails ("all": to the end of the disk)
//! flush-eio                  # every flush fails
//! write-delay-ms 50          # every write waits 50 ms first
//! ```
//!
//! Metadata I/O (superblock, bitmap, activity log) does not go through this layer.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Longest delay a plan may add to a write.
pub const WRITE_DELAY_MS_MAX: u64 = 10_000;
/// Largest plan file read.
const PLAN_BYTES_MAX: u64 = 64 << 10;

/// What a plan says right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultRules {
    pub read_eio: Vec<(u64, u64)>,
    pub write_eio: Vec<(u64, u64)>,
    pub flush_eio: bool,
    pub write_delay_ms: u64,
}

fn overlaps(ranges: &[(u64, u64)], offset: u64, len: u64) -> bool {
    let end = offset.saturating_add(len.max(1));
    ranges
        .iter()
        .any(|&(start, n)| start < end && offset < start.saturating_add(n))
}

impl FaultRules {
    /// Parses a plan; an unreadable line is an error naming it.
    pub fn parse(text: &str) -> Result<FaultRules, String> {
        let mut r = FaultRules::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: {raw:?}", i + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let num = |w: &str| -> Result<u64, String> {
                if w == "all" {
                    return Ok(u64::MAX);
                }
                w.parse::<u64>().map_err(|_| bad("not a number"))
            };
            match words.as_slice() {
                ["read-eio", start, len] => r.read_eio.push((num(start)?, num(len)?)),
                ["write-eio", start, len] => r.write_eio.push((num(start)?, num(len)?)),
                ["flush-eio"] => r.flush_eio = true,
                ["write-delay-ms", ms] => {
                    let ms = num(ms)?;
                    if ms > WRITE_DELAY_MS_MAX {
                        return Err(bad(&format!("at most {WRITE_DELAY_MS_MAX} ms")));
                    }
                    r.write_delay_ms = ms;
                }
                _ => {
                    return Err(bad(
                        "use read-eio START LEN | write-eio START LEN | flush-eio | \
                         write-delay-ms MS",
                    ))
                }
            }
        }
        Ok(r)
    }

    pub fn read_fails(&self, offset: u64, len: u64) -> bool {
        overlaps(&self.read_eio, offset, len)
    }

    pub fn write_fails(&self, offset: u64, len: u64) -> bool {
        overlaps(&self.write_eio, offset, len)
    }
}

/// A plan file, re-read when its modification time or size changes.
pub struct FaultPlan {
    path: PathBuf,
    cached: Mutex<(Option<(SystemTime, u64)>, FaultRules)>,
}

impl FaultPlan {
    pub fn new(path: &Path) -> FaultPlan {
        FaultPlan {
            path: path.to_owned(),
            cached: Mutex::new((None, FaultRules::default())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rules now. A missing file means no faults; an unreadable or invalid one keeps the
    /// previous rules and logs why.
    pub fn rules(&self) -> FaultRules {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 == stamp {
            return cached.1.clone();
        }
        let rules = match stamp {
            None => Ok(FaultRules::default()),
            Some((_, len)) if len > PLAN_BYTES_MAX => {
                Err(format!("larger than {PLAN_BYTES_MAX} bytes"))
            }
            Some(_) => std::fs::read_to_string(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|t| FaultRules::parse(&t)),
        };
        match rules {
            Ok(r) => {
                if r != cached.1 {
                    tracing::warn!(plan = %self.path.display(), rules = ?r, "disk fault plan changed");
                }
                *cached = (stamp, r);
            }
            Err(e) => {
                tracing::error!(
                    "disk fault plan {}: {e}; keeping the previous rules",
                    self.path.display()
                );
                cached.0 = stamp;
            }
        }
        cached.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_rule_and_refuses_junk() {
        let r = FaultRules::parse(
            "# x\nread-eio 4096 4096\nwrite-eio 0 all # everything\n\nflush-eio\nwrite-delay-ms 5\n",
        )
        .unwrap();
        assert_eq!(r.read_eio, vec![(4096, 4096)]);
        assert_eq!(r.write_eio, vec![(0, u64::MAX)]);
        assert!(r.flush_eio);
        assert_eq!(r.write_delay_ms, 5);
        assert!(r.read_fails(8191, 1));
        assert!(!r.read_fails(8192, 4096));
        assert!(!r.read_fails(0, 4096));
        assert!(r.write_fails(1 << 40, 512));
        let e = FaultRules::parse("read-eio 1\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(FaultRules::parse("write-delay-ms 99999999").is_err());
        assert!(FaultRules::parse("read-eio x 1").is_err());
    }

    #[test]
    fn plan_follows_the_file() {
        let dir = std::env::temp_dir().join(format!("urbd-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("plan");
        let plan = FaultPlan::new(&p);
        assert_eq!(plan.rules(), FaultRules::default());
        std::fs::write(&p, "write-eio 0 4096\n").unwrap();
        assert!(plan.rules().write_fails(0, 1));
        std::fs::write(&p, "write-eio 0 4096\nbogus\n").unwrap();
        assert!(
            plan.rules().write_fails(0, 1),
            "an invalid plan keeps the rules"
        );
        std::fs::remove_file(&p).unwrap();
        assert!(!plan.rules().write_fails(0, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
