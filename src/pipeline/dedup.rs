//! messageId de-duplication in the map stage, the way Segment de-duplicates: an event whose
//! messageId was already seen **at an earlier offset of the same input partition**, within the
//! window, is skipped for every destination with reason `duplicate`.
//!
//! Why "earlier offset" and not "seen before": a replay re-reads the same offsets, and the
//! original record (the lowest offset) must be delivered again; only the later copies are
//! duplicates, on the first pass and on every replay.
//!
//! Each map worker keeps its own table: records are routed to workers by the hash of their key
//! (userId, else anonymousId), and a client's retried event carries the same user, so it lands
//! on the same partition and the same worker. Entries are 64-bit hashes of (partition,
//! messageId) — about 40 bytes each with the table's overhead — evicted by age (the window)
//! and by count (`map.dedup_max_entries` per process, split between workers). The table lives
//! in memory: it starts empty after a restart, and a partition that moves to another process
//! starts empty there, so duplicates that straddle a restart or a rebalance are delivered
//! (at-least-once; receivers still have the `Idempotency-Key`).

use std::collections::{HashMap, VecDeque};

/// One worker's table.
pub struct Dedup {
    window_ms: i64,
    max: usize,
    hasher: ahash::RandomState,
    /// Hash → (lowest offset seen, when first seen).
    seen: HashMap<u64, (i64, i64)>,
    /// Hashes in insertion order, for eviction.
    order: VecDeque<(u64, i64)>,
}

impl Dedup {
    /// A table keeping ids for `window_ms`, at most `max` of them (0: de-duplication off).
    pub fn new(window_ms: i64, max: usize) -> Dedup {
        Dedup {
            window_ms,
            max,
            hasher: ahash::RandomState::with_seeds(11, 12, 13, 14),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the record at (`partition`, `offset`) with `message_id` repeats an earlier one.
    pub fn is_duplicate(
        &mut self,
        partition: i32,
        offset: i64,
        message_id: &str,
        now_ms: i64,
    ) -> bool {
        if self.max == 0 || message_id.is_empty() {
            return false;
        }
        self.evict(now_ms);
        let h = self.hasher.hash_one((partition, message_id));
        match self.seen.get_mut(&h) {
            Some((first, _)) if *first < offset => true,
            Some((first, _)) => {
                // Read again from an earlier offset (a replay or a re-assignment): this is the
                // original now.
                *first = offset;
                false
            }
            None => {
                self.seen.insert(h, (offset, now_ms));
                self.order.push_back((h, now_ms));
                false
            }
        }
    }

    fn evict(&mut self, now_ms: i64) {
        while let Some(&(h, at)) = self.order.front() {
            if self.order.len() < self.max && at > now_ms.saturating_sub(self.window_ms) {
                break;
            }
            self.order.pop_front();
            if self
                .seen
                .get(&h)
                .is_some_and(|(_, first_at)| *first_at == at)
            {
                self.seen.remove(&h);
            }
        }
    }

    /// Ids currently remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_copies_are_duplicates_and_a_replay_delivers_the_original_again() {
        let mut d = Dedup::new(1_000, 100);
        assert!(!d.is_duplicate(0, 10, "m1", 0));
        assert!(d.is_duplicate(0, 20, "m1", 1), "same id, later offset");
        assert!(
            !d.is_duplicate(1, 21, "m1", 1),
            "another partition is another stream"
        );
        // Replay from the start: the original delivers again, the copy is skipped again.
        assert!(!d.is_duplicate(0, 10, "m1", 2));
        assert!(d.is_duplicate(0, 20, "m1", 2));
        // Re-read from an earlier offset with the id first seen later: that one is the original.
        assert!(!d.is_duplicate(0, 5, "m1", 3));
        assert!(d.is_duplicate(0, 10, "m1", 3));
    }

    #[test]
    fn the_window_and_the_bound_evict() {
        let mut d = Dedup::new(1_000, 3);
        assert!(!d.is_duplicate(0, 1, "a", 0));
        assert!(
            !d.is_duplicate(0, 2, "a-late", 2_000),
            "a expired after the window"
        );
        assert!(!d.is_duplicate(0, 3, "a", 2_000));
        for (i, id) in ["b", "c", "d", "e"].iter().enumerate() {
            assert!(!d.is_duplicate(0, 10 + i as i64, id, 2_001));
        }
        assert!(d.len() <= 3);
        assert!(!d.is_duplicate(0, 99, "a", 2_002), "evicted by the bound");
        let mut off = Dedup::new(1_000, 0);
        assert!(!off.is_duplicate(0, 1, "x", 0));
        assert!(!off.is_duplicate(0, 2, "x", 0), "max 0: off");
    }
}
