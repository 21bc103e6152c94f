//! What a fault scenario checked and what it measured, for the run's summary.
//!
//! Every fault scenario (`scenarios/faults_*.rs`) ends with [`scenario`]: one line naming the
//! scenario, the invariant it asserted and its figures (blocks resynced, seconds to converge...).
//! The line goes to stderr (shown with `--nocapture` or when the test fails) and is appended to
//! `target/fault-report.txt` (override: `URBD_FAULT_REPORT`), which `scripts/test.sh` prints at
//! the end of the run.
//!
//! Randomness in fault scenarios comes from [`seed`]: `URBD_FAULT_SEED` when set (the soak mode,
//! `scripts/soak.sh`, sets a new one per round), else a fixed default, so a failing round replays.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

/// Default seed of the fault scenarios (the test command's runs are reproducible).
pub const SEED_DEFAULT: u64 = 0x7572_6264;

/// The seed for this run's random choices (printed so that a failure can be replayed).
pub fn seed() -> u64 {
    let s = std::env::var("URBD_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED_DEFAULT);
    eprintln!("fault seed: {s} (replay: URBD_FAULT_SEED={s})");
    s
}

/// Where the report lines go.
pub fn report_path() -> PathBuf {
    if let Some(p) = std::env::var_os("URBD_FAULT_REPORT") {
        return PathBuf::from(p);
    }
    // The tests run with the package dir as cwd; the workspace target dir is one level up.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(&manifest)
        .join("target")
        .join("fault-report.txt")
}

/// Records that scenario `name` passed, having asserted `invariant`, with `figures`.
pub fn scenario(name: &str, invariant: &str, figures: &str) {
    let line = format!("{name}: OK — {invariant} — {figures}");
    eprintln!("{line}");
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(mut f) => {
            let _ = writeln!(f, "{line}");
        }
        Err(e) => eprintln!("cannot append to {}: {e}", path.display()),
    }
}
