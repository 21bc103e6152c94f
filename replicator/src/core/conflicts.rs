//! Conflict detection: operations whose byte ranges overlap run one after the other, in the
//! order they arrived. On the Primary this orders application writes and resync reads (so both
//! disks apply overlapping writes in the same order, PROTOCOL.md §5.3); on the Secondary it
//! orders replicated writes in arrival order.

use std::collections::VecDeque;

/// Ranges in progress and operations waiting for them, FIFO among overlapping ones.
#[derive(Debug)]
pub struct Conflicts<T> {
    active: Vec<(u64, u64, T)>,
    waiting: VecDeque<(u64, u64, T)>,
    waiting_max: usize,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl<T: Copy + PartialEq + std::fmt::Debug> Conflicts<T> {
    pub fn new(waiting_max: usize) -> Conflicts<T> {
        Conflicts {
            active: Vec::new(),
            waiting: VecDeque::new(),
            waiting_max,
        }
    }

    /// Starts `owner` on `[start, end)` if nothing before it overlaps; otherwise queues it and
    /// returns false. An empty range never conflicts.
    pub fn try_start(&mut self, start: u64, end: u64, owner: T) -> bool {
        let r = (start, end.max(start + 1));
        let blocked = self.active.iter().any(|a| overlaps((a.0, a.1), r))
            || self.waiting.iter().any(|w| overlaps((w.0, w.1), r));
        if blocked {
            assert!(
                self.waiting.len() < self.waiting_max,
                "conflict queue bound exceeded"
            );
            self.waiting.push_back((r.0, r.1, owner));
            false
        } else {
            self.active.push((r.0, r.1, owner));
            true
        }
    }

    /// Ends `owner` and returns the waiting operations that may start now, in arrival order.
    pub fn finish(&mut self, owner: T) -> Vec<T> {
        let i = self
            .active
            .iter()
            .position(|a| a.2 == owner)
            .unwrap_or_else(|| panic!("finishing {owner:?}, which is not active"));
        self.active.swap_remove(i);
        let mut started = Vec::new();
        let mut still_waiting: VecDeque<(u64, u64, T)> = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            let r = (w.0, w.1);
            let blocked = self.active.iter().any(|a| overlaps((a.0, a.1), r))
                || still_waiting.iter().any(|s| overlaps((s.0, s.1), r));
            if blocked {
                still_waiting.push_back(w);
            } else {
                self.active.push(w);
                started.push(w.2);
            }
        }
        self.waiting = still_waiting;
        started
    }

    pub fn is_active(&self, owner: T) -> bool {
        self.active.iter().any(|a| a.2 == owner)
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Drops every waiting operation matching `pred` (e.g. resync reads when the peer is lost).
    pub fn cancel_waiting(&mut self, mut pred: impl FnMut(T) -> bool) -> Vec<T> {
        let mut cancelled = Vec::new();
        self.waiting.retain(|w| {
            if pred(w.2) {
                cancelled.push(w.2);
                false
            } else {
                true
            }
        });
        cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // PROTOCOL.md §5.3: overlapping writes in flight are applied one after the other.
    #[test]
    fn overlapping_operations_run_in_arrival_order() {
        let mut c = Conflicts::new(16);
        assert!(c.try_start(0, 4096, 1));
        assert!(!c.try_start(1000, 2000, 2));
        assert!(
            c.try_start(4096, 8192, 3),
            "adjacent ranges do not conflict"
        );
        assert!(
            !c.try_start(1500, 1600, 4),
            "waits behind 2, which overlaps it"
        );
        assert_eq!(c.finish(1), vec![2]);
        assert_eq!(c.finish(2), vec![4]);
        assert_eq!(c.active_len(), 2);
    }

    #[test]
    fn a_later_non_overlapping_operation_is_not_held_up() {
        let mut c = Conflicts::new(16);
        assert!(c.try_start(0, 10, 1));
        assert!(!c.try_start(5, 15, 2));
        assert!(c.try_start(100, 110, 3));
    }

    proptest! {
        // No two active operations ever overlap, and everything eventually runs.
        #[test]
        fn never_two_overlapping_active(ops in proptest::collection::vec((0u64..64, 1u64..16), 1..40)) {
            let mut c = Conflicts::new(64);
            let mut active: Vec<(u64, u64, usize)> = Vec::new();
            let mut ran = 0;
            for (i, (s, l)) in ops.iter().enumerate() {
                if c.try_start(*s, s + l, i) {
                    active.push((*s, s + l, i));
                }
            }
            while let Some((_, _, owner)) = active.pop() {
                ran += 1;
                for started in c.finish(owner) {
                    let (s, l) = ops[started];
                    active.push((s, s + l, started));
                }
                for (i, a) in active.iter().enumerate() {
                    for b in &active[i + 1..] {
                        prop_assert!(!overlaps((a.0, a.1), (b.0, b.1)));
                    }
                }
            }
            prop_assert_eq!(ran, ops.len());
        }
    }
}
