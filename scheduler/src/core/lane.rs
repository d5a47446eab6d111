//! The queues nodes wait in.
//!
//! Two shapes serve the lanes:
//!
//! - [`KeyedLane`]: a min-heap on a key (urgent: front rank, then waiting
//!   since; deploy: deploy time, then oldest catalog; parked: backoff end).
//! - [`CycleLane`]: a FIFO whose entries carry the time they fall due. Nodes
//!   join at the back when their compile ends, so due times rise along the
//!   queue and the head is always the first due; start and finish are O(1).
//!
//! Both use lazy removal: an entry records the node's ticket, a node that
//! leaves a lane moves its ticket on, and entries whose ticket no longer
//! matches are dropped when they reach the head (or by [`compaction`] when
//! they pile up). So taking a node out of the middle of a million-entry lane
//! (a bump, a deploy) costs nothing here.
//!
//! [`compaction`]: KeyedLane::compact_if_sparse

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

use super::node::Node;
use super::time::Time;

/// Stale entries tolerated beyond the live ones before a lane compacts.
const COMPACT_SLACK: usize = 1024;

/// A lane entry: a node, the ticket it had when it joined, and a sort key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<K> {
    pub key: K,
    pub node: u32,
    pub ticket: u32,
}

impl<K> Entry<K> {
    fn is_live(&self, nodes: &[Node]) -> bool {
        nodes
            .get(self.node as usize)
            .is_some_and(|n| n.ticket == self.ticket)
    }
}

impl<K: Ord> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<K: Ord> Eq for Entry<K> {}
impl<K: Ord> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then(self.node.cmp(&other.node))
            .then(self.ticket.cmp(&other.ticket))
    }
}

/// A lane ordered by key, smallest first.
#[derive(Clone, Debug)]
pub(crate) struct KeyedLane<K: Ord> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    live: usize,
}

impl<K: Ord + Copy> Default for KeyedLane<K> {
    fn default() -> Self {
        KeyedLane {
            heap: BinaryHeap::new(),
            live: 0,
        }
    }
}

impl<K: Ord + Copy> KeyedLane<K> {
    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn push(&mut self, key: K, node: u32, ticket: u32) {
        self.heap.push(Reverse(Entry { key, node, ticket }));
        self.live += 1;
    }

    /// Adds many entries at once (a deploy), cheaper than one push each.
    pub fn extend(&mut self, entries: impl IntoIterator<Item = Entry<K>>) {
        let before = self.heap.len();
        self.heap.extend(entries.into_iter().map(Reverse));
        self.live += self.heap.len() - before;
    }

    /// A node left the lane some other way than `pop` (its ticket moved on).
    pub fn forget_one(&mut self) {
        self.live -= 1;
    }

    /// The smallest live entry.
    pub fn peek(&mut self, nodes: &[Node]) -> Option<Entry<K>> {
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.is_live(nodes) {
                return Some(*top);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the smallest live entry. Gives memory back once
    /// the lane has drained far below its peak (after a herd).
    pub fn pop(&mut self, nodes: &[Node]) -> Option<Entry<K>> {
        let top = self.peek(nodes)?;
        self.heap.pop();
        self.live -= 1;
        if self.heap.capacity() > 4 * self.heap.len() + COMPACT_SLACK {
            self.heap.shrink_to(2 * self.heap.len());
        }
        Some(top)
    }

    /// Drops stale entries once they outnumber the live ones by far, so a
    /// lane's memory stays proportional to what is queued in it.
    pub fn compact_if_sparse(&mut self, nodes: &[Node]) {
        if self.heap.len() > 2 * self.live + COMPACT_SLACK {
            self.heap.retain(|Reverse(e)| e.is_live(nodes));
        }
    }

    /// All entries, live and stale, in no order (for audits).
    pub fn raw(&self) -> impl Iterator<Item = &Entry<K>> {
        self.heap.iter().map(|Reverse(e)| e)
    }
}

/// The cycle lane: FIFO of nodes, each with the time it falls due.
///
/// Nodes that are never due (the cycle switched off) take no place in the
/// FIFO at all, only a count: they leave the lane by a bump or a deploy,
/// never from its head.
#[derive(Clone, Debug, Default)]
pub(crate) struct CycleLane {
    queue: VecDeque<Entry<Time>>,
    live: usize,
    idle: usize,
}

impl CycleLane {
    pub fn len(&self) -> usize {
        self.live + self.idle
    }

    /// Nodes in the lane that are never due.
    pub fn idle(&self) -> usize {
        self.idle
    }

    /// Queues a node due at `due`. Due times normally arrive in rising order
    /// (now + a constant interval, with time never going back), which is an
    /// O(1) push at the back; anything else (a rebuild from a store) is
    /// inserted in due order so the head stays the first due.
    pub fn push(&mut self, due: Time, node: u32, ticket: u32) {
        if due == Time::NEVER {
            self.idle += 1;
            return;
        }
        let entry = Entry {
            key: due,
            node,
            ticket,
        };
        match self.queue.back() {
            Some(back) if back.key > due => {
                let at = self.queue.partition_point(|e| e.key <= due);
                self.queue.insert(at, entry);
            }
            _ => self.queue.push_back(entry),
        }
        self.live += 1;
    }

    /// A node due at `due` left the lane some other way than `pop`.
    pub fn forget(&mut self, due: Time) {
        if due == Time::NEVER {
            self.idle -= 1;
        } else {
            self.live -= 1;
        }
    }

    /// The first live entry (due or not).
    pub fn peek(&mut self, nodes: &[Node]) -> Option<Entry<Time>> {
        while let Some(front) = self.queue.front() {
            if front.is_live(nodes) {
                return Some(*front);
            }
            self.queue.pop_front();
        }
        None
    }

    pub fn pop(&mut self, nodes: &[Node]) -> Option<Entry<Time>> {
        let front = self.peek(nodes)?;
        self.queue.pop_front();
        self.live -= 1;
        Some(front)
    }

    pub fn compact_if_sparse(&mut self, nodes: &[Node]) {
        if self.queue.len() > 2 * self.live + COMPACT_SLACK {
            self.queue.retain(|e| e.is_live(nodes));
        }
    }

    pub fn raw(&self) -> impl Iterator<Item = &Entry<Time>> {
        self.queue.iter()
    }
}

/// Keys of the keyed lanes. Each ends in a sequence number, so keys are
/// unique and ties go first come, first served.
pub(crate) mod keys {
    use super::Time;

    /// Urgent: `rank` 0 for compiles that were interrupted (back to the
    /// very front), 1 for everything else; then earliest urgent time.
    pub type Urgent = (u8, Time, u64);
    /// Deploy: when the deploy marked it, then its last compile (oldest
    /// catalog first; never compiled counts as oldest).
    pub type Deploy = (Time, Time, u64);
    /// Parked: when the backoff ends.
    pub type Parked = (Time, u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::node::{Pending, Reason, Slot};

    fn nodes(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| Node {
                slot: Slot::Cycle,
                reason: Reason::Cycle,
                pending: Pending::None,
                failures: 0,
                master: 0,
                ticket: 0,
                env: 0,
                env_pos: i as u32,
                since: Time::ZERO,
                pending_since: Time::ZERO,
                last_compile: None,
            })
            .collect()
    }

    #[test]
    fn keyed_lane_skips_entries_whose_ticket_moved_on() {
        let mut table = nodes(3);
        let mut lane: KeyedLane<(Time, u64)> = KeyedLane::default();
        for (i, t) in [(0u32, 5u64), (1, 3), (2, 4)] {
            lane.push((Time::from_secs(t), u64::from(i)), i, 0);
        }
        // node 1 leaves the lane
        table[1].ticket += 1;
        lane.forget_one();
        assert_eq!(lane.len(), 2);
        assert_eq!(lane.pop(&table).map(|e| e.node), Some(2));
        assert_eq!(lane.pop(&table).map(|e| e.node), Some(0));
        assert_eq!(lane.pop(&table).map(|e| e.node), None);
        assert_eq!(lane.len(), 0);
    }

    #[test]
    fn cycle_lane_keeps_due_order_even_for_late_inserts() {
        let table = nodes(4);
        let mut lane = CycleLane::default();
        lane.push(Time::from_secs(10), 0, 0);
        lane.push(Time::from_secs(20), 1, 0);
        lane.push(Time::from_secs(15), 2, 0);
        lane.push(Time::from_secs(20), 3, 0);
        lane.push(Time::NEVER, 1, 0);
        assert_eq!((lane.len(), lane.idle()), (5, 1));
        let order: Vec<u32> = std::iter::from_fn(|| lane.pop(&table).map(|e| e.node)).collect();
        assert_eq!(order, vec![0, 2, 1, 3]);
    }

    #[test]
    fn compaction_drops_only_stale_entries() {
        let mut table = nodes(5000);
        let mut lane = CycleLane::default();
        for i in 0..5000u32 {
            lane.push(Time::from_secs(u64::from(i)), i, 0);
        }
        for (i, n) in table.iter_mut().take(4000).enumerate() {
            n.ticket += 1;
            lane.forget(Time::from_secs(i as u64));
        }
        lane.compact_if_sparse(&table);
        assert_eq!(lane.raw().count(), 1000);
        assert_eq!(lane.peek(&table).map(|e| e.node), Some(4000));
    }
}
