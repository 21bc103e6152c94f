//! urbd's deterministic simulator: two nodes running the **real** replication core
//! (`urbd_replicator::core::Core`) and the real metadata code (`MetaStore`, superblock,
//! bitmap, activity log) in one thread, on simulated disks, a simulated network and simulated
//! time, all driven by one seeded PRNG. A seed replays exactly. `docs/SIMULATION.md` describes
//! the fault model and the invariants.

pub mod disk;
pub mod oracle;
pub mod rng;
mod sim;

pub use sim::{run, Options, Report};

/// Runs seeds `first..first + count` and returns the first failing report, if any.
pub fn run_seeds(first: u64, count: u64, base: &Options) -> Result<u64, Box<Report>> {
    for seed in first..first + count {
        let opts = Options {
            seed,
            ..base.clone()
        };
        let r = run(&opts);
        if !r.violations.is_empty() {
            return Err(Box::new(r));
        }
    }
    Ok(count)
}
