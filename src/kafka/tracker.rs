//! Which records are finished, so that commits never pass one that is not (SPEC §1).

use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Per-partition tracking of records read but not finished, so that a partition's committed
/// offset never passes a record that is not finished (SPEC §1).
///
/// Each record is registered when read, with a count of outstanding pieces of work (one
/// "mapping" token, later replaced by its produced records). Acknowledgements may arrive in any
/// order. The committable offset is the lowest unfinished offset, or one past the highest read.
/// An epoch per assignment makes acknowledgements for a partition that was revoked and
/// re-assigned in between harmless.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// By partition: a tracker serves one consumer of one topic.
    parts: HashMap<i32, PartState>,
    pending_total: usize,
}

#[derive(Debug, Default)]
struct PartState {
    topic: Arc<str>,
    epoch: u64,
    pending: BTreeMap<i64, u32>,
    next: Option<i64>,
    committed: Option<i64>,
    /// Lowest offset whose output failed for good: commits never pass it.
    failed: Option<i64>,
    /// Registered records that wait in the consumer's stash (their lane was full): unfinished,
    /// but no work on them has started, so a revoke or shutdown does not wait for them.
    stashed: BTreeSet<i64>,
}

/// Identifies one record's tracking slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Topic read from (shared: cloned for every output record).
    pub topic: Arc<str>,
    /// Partition read from.
    pub partition: i32,
    /// Offset read.
    pub offset: i64,
    /// Assignment epoch at read time.
    pub epoch: u64,
}

impl OffsetTracker {
    /// Start (or restart) tracking a partition after an assignment; returns its new epoch.
    pub fn assign(&mut self, topic: &str, partition: i32) -> u64 {
        let old = self.parts.remove(&partition).unwrap_or_default();
        self.pending_total -= old.pending.len();
        let epoch = old.epoch + 1;
        self.parts.insert(
            partition,
            PartState {
                topic: Arc::from(topic),
                epoch,
                ..Default::default()
            },
        );
        epoch
    }

    /// Stop tracking a revoked partition.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self
            .parts
            .get_mut(&partition)
            .filter(|p| &*p.topic == topic)
        {
            self.pending_total -= p.pending.len();
            p.pending.clear();
            p.next = None;
            p.committed = None;
            p.failed = None;
            p.stashed.clear();
            p.epoch += 1;
        }
    }

    /// Register a record read with `work` outstanding pieces; `None` if the partition is not
    /// assigned (a record from before a revoke).
    pub fn register(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        work: u32,
    ) -> Option<Slot> {
        let p = self
            .parts
            .get_mut(&partition)
            .filter(|p| &*p.topic == topic)?;
        if work > 0 && p.pending.insert(offset, work).is_none() {
            self.pending_total += 1;
        }
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Slot {
            topic: p.topic.clone(),
            partition,
            offset,
            epoch: p.epoch,
        })
    }

    /// Add (`delta > 0`) or finish (`delta < 0`) pieces of work for a record.
    pub fn adjust(&mut self, slot: &Slot, delta: i64) {
        let Some(p) = self.parts.get_mut(&slot.partition) else {
            return;
        };
        if p.epoch != slot.epoch {
            return;
        }
        if let Some(n) = p.pending.get_mut(&slot.offset) {
            let v = *n as i64 + delta;
            if v <= 0 {
                p.pending.remove(&slot.offset);
                p.stashed.remove(&slot.offset);
                self.pending_total -= 1;
            } else {
                *n = v as u32;
            }
        }
    }

    /// A piece of work failed for good (a produce that will never be acknowledged): the
    /// partition's committed offset must stay before it until the process restarts.
    pub fn fail(&mut self, slot: &Slot) {
        if let Some(p) = self.parts.get_mut(&slot.partition) {
            if p.epoch == slot.epoch {
                p.failed = Some(p.failed.map_or(slot.offset, |f| f.min(slot.offset)));
            }
        }
    }

    /// Whether any produce failed for good.
    #[cfg(test)]
    fn has_failed(&self) -> bool {
        self.parts.values().any(|p| p.failed.is_some())
    }

    /// Records read and not finished, over all partitions.
    pub fn pending(&self) -> usize {
        self.pending_total
    }

    /// A registered record waits in the consumer's stash (`true`) or was handed to its lane
    /// (`false`).
    pub fn set_stashed(&mut self, slot: &Slot, stashed: bool) {
        if let Some(p) = self.parts.get_mut(&slot.partition) {
            if p.epoch == slot.epoch {
                if stashed {
                    p.stashed.insert(slot.offset);
                } else {
                    p.stashed.remove(&slot.offset);
                }
            }
        }
    }

    /// Whether a slot still belongs to the current assignment of its partition (a stashed
    /// record of a partition revoked since is dropped: the next owner reads it again).
    pub fn is_current(&self, slot: &Slot) -> bool {
        self.parts
            .get(&slot.partition)
            .is_some_and(|p| p.epoch == slot.epoch)
    }

    /// Records whose work has started and not finished (pending minus stashed), in the given
    /// partitions or everywhere: what a revoke or shutdown waits for.
    pub fn in_progress_in(&self, only: Option<&TopicPartitionList>) -> usize {
        let count = |p: &PartState| p.pending.len() - p.stashed.len();
        match only {
            None => self.parts.values().map(count).sum(),
            Some(tpl) => tpl
                .elements()
                .iter()
                .filter_map(|e| self.parts.get(&e.partition()))
                .map(count)
                .sum(),
        }
    }

    fn committable(p: &PartState) -> Option<i64> {
        let c = match p.pending.keys().next() {
            Some(&lowest) => Some(lowest),
            None => p.next,
        };
        match (c, p.failed) {
            (Some(c), Some(f)) => Some(c.min(f)),
            (c, _) => c,
        }
    }

    /// Offsets to commit (next offset to read, Kafka's convention) for partitions whose
    /// committable offset moved since the last call (every partition with `force`, for commits
    /// that must not rely on an earlier asynchronous one); `only` restricts to some partitions.
    pub fn take_commits(
        &mut self,
        only: Option<&TopicPartitionList>,
        force: bool,
    ) -> Option<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (partition, p) in self.parts.iter_mut() {
            let topic = &*p.topic;
            if let Some(only) = only {
                if only.find_partition(topic, *partition).is_none() {
                    continue;
                }
            }
            if let Some(c) = Self::committable(p) {
                if force || p.committed != Some(c) {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(c));
                    p.committed = Some(c);
                }
            }
        }
        (tpl.count() > 0).then_some(tpl)
    }

    /// Forget that offsets were committed (a commit failed), so the next call retries them.
    pub fn uncommit(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let Some(p) = self.parts.get_mut(&e.partition()) {
                p.committed = None;
            }
        }
    }
}

/// The tracker plus a condition variable, shared by a consumer thread, the workers that finish
/// records, and the rebalance callback that waits for them.
#[derive(Debug, Default)]
pub struct Progress {
    tracker: Mutex<OffsetTracker>,
    changed: Condvar,
    /// Threads in `wait_until`: finishing work wakes them only when there are some, so the hot
    /// path (one finish per produced record) costs no futex wake-up syscall.
    waiters: AtomicUsize,
    /// Some work failed for good: read on every poll-loop turn without taking the lock.
    failed: AtomicBool,
}

impl Progress {
    /// Run `f` on the tracker (a poisoned lock is recovered: the tracker has no invariants a
    /// panic elsewhere could break halfway).
    pub fn with<T>(&self, f: impl FnOnce(&mut OffsetTracker) -> T) -> T {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t)
    }

    fn wake(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.changed.notify_all();
        }
    }

    /// Finish (`-1`) or add work for a record and wake waiters.
    pub fn adjust(&self, slot: &Slot, delta: i64) {
        self.with(|t| t.adjust(slot, delta));
        self.wake();
    }

    /// Give a record up without finishing it (a lane stopping at shutdown): it is no longer
    /// waited for, and commits stay before it, so it is read again.
    pub fn abandon(&self, slot: &Slot) {
        self.with(|t| t.set_stashed(slot, true));
        self.wake();
    }

    /// Mark a record's work failed for good and wake waiters.
    pub fn fail(&self, slot: &Slot) {
        self.with(|t| t.fail(slot));
        self.failed.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether some work failed for good (the stage must stop), without the lock.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Wait until `done(tracker)` or the timeout; returns whether it became true.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&OffsetTracker) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        // Registered before the lock: a finish after our check sees it and wakes us (and the
        // 50 ms bound on each wait covers any wake-up lost in between).
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _registered = Unregister(&self.waiters);
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        while !done(&t) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            t = self
                .changed
                .wait_timeout(t, left.min(Duration::from_millis(50)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

/// Decrements the waiter count however `wait_until` returns.
struct Unregister<'a>(&'a AtomicUsize);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stashed_records_hold_commits_but_are_not_waited_for() {
        let mut t = OffsetTracker::default();
        t.assign("in", 0);
        let a = t.register("in", 0, 1, 1).unwrap();
        let b = t.register("in", 0, 2, 1).unwrap();
        t.set_stashed(&b, true);
        assert_eq!(t.in_progress_in(None), 1);
        t.adjust(&a, -1);
        assert_eq!(t.in_progress_in(None), 0, "only a stashed record is left");
        assert_eq!(
            offsets(&mut t),
            vec![(0, 2)],
            "commits stop at the stashed record"
        );
        t.set_stashed(&b, false);
        assert_eq!(t.in_progress_in(None), 1);
        t.revoke("in", 0);
        assert!(!t.is_current(&b));
    }

    fn offsets(t: &mut OffsetTracker) -> Vec<(i32, i64)> {
        let mut v: Vec<(i32, i64)> = t
            .take_commits(None, false)
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn commits_stop_at_the_first_unfinished_record() {
        let mut t = OffsetTracker::default();
        t.assign("in", 0);
        let a = t.register("in", 0, 10, 1).unwrap();
        let b = t.register("in", 0, 11, 1).unwrap();
        let c = t.register("in", 0, 12, 1).unwrap();
        t.adjust(&b, -1);
        t.adjust(&c, -1);
        assert_eq!(offsets(&mut t), vec![(0, 10)]);
        t.adjust(&a, 1); // a produced two records instead of one token
        t.adjust(&a, -1);
        assert_eq!(offsets(&mut t), vec![]);
        t.adjust(&a, -1);
        assert_eq!(offsets(&mut t), vec![(0, 13)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn stale_epochs_are_ignored_and_failures_hold_the_offset() {
        let mut t = OffsetTracker::default();
        t.assign("in", 1);
        let old = t.register("in", 1, 5, 1).unwrap();
        t.revoke("in", 1);
        t.assign("in", 1);
        let new = t.register("in", 1, 7, 1).unwrap();
        t.adjust(&old, -1);
        assert_eq!(t.pending(), 1);
        t.fail(&new);
        t.adjust(&new, -1);
        assert!(t.has_failed());
        assert_eq!(offsets(&mut t), vec![(1, 7)]);
    }
}
