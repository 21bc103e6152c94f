//! Byte-range locks: writes whose aligned footprints overlap run one after the other. This is
//! what makes read-modify-write of partial blocks safe against a neighbouring write.

use std::sync::Mutex;

use tokio::sync::Notify;

/// A set of locked `[start, end)` ranges.
#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    released: Notify,
}

/// Holds a range until dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

impl RangeLocks {
    /// Waits until no held range overlaps `[start, end)`, then holds it.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        assert!(start < end, "empty range lock");
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Register for wake-ups before checking, so a release in between is not missed.
            notified.as_mut().enable();
            {
                let mut held = self.held.lock().expect("range lock table");
                if !held.iter().any(|&(s, e)| s < end && start < e) {
                    held.push((start, end));
                    return RangeGuard {
                        locks: self,
                        range: (start, end),
                    };
                }
            }
            notified.await;
        }
    }

    #[cfg(test)]
    fn held_count(&self) -> usize {
        self.held.lock().expect("range lock table").len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().expect("range lock table");
        let i = held
            .iter()
            .position(|&r| r == self.range)
            .expect("a held range is in the table");
        held.swap_remove(i);
        drop(held);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_ranges_wait_disjoint_ones_do_not() {
        let locks = Arc::new(RangeLocks::default());
        let a = locks.lock(0, 4096).await;
        let _b = locks.lock(4096, 8192).await; // disjoint: immediate
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _c = l2.lock(4000, 4001).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "overlapping lock must wait");
        drop(a);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("released lock wakes the waiter")
            .expect("no panic");
        assert_eq!(locks.held_count(), 1);
    }
}
