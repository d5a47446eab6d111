//! The discrete-event engine: a clock and a queue of future events.
//!
//! Virtual time is [`Time`] (microseconds), the same type the scheduling core
//! takes, so the queue policy hands the engine's clock to the core as is.
//! Events at the same time run in the order they were scheduled (a sequence
//! number breaks ties), which keeps runs reproducible per seed.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use scheduler::core::Time;

use crate::master::Work;

/// Something that happens at a point in virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node's agent run (on demand) or `pcq sync` (queue).
    Run(u32),
    /// On demand: an agent retries after a 503's Retry-After.
    Retry(u32),
    /// A used fact changes somewhere in the fleet (open churn).
    UsedFact,
    /// An unused fact changes somewhere in the fleet (open churn).
    UnusedFact,
    /// Something outside the code and the facts changes a node's catalog.
    External,
    /// A used fact changes on this node (closed churn).
    NodeFact(u32),
    /// An exporter's exported resource changes.
    Export,
    /// Code deploy number `.0` of the scenario, its `.1`-th time.
    Deploy(u32, u32),
    /// A new certificate is signed (a node joins).
    NewCert,
    /// Herd number `.0`: every agent runs now.
    Cron(u32),
    /// Master `.0` fails.
    MasterDown(u32),
    /// Master `.0` comes back.
    MasterUp(u32),
    /// On master `.0`, the compile or file request `.2` completes, if the
    /// master's generation is still `.1`.
    Complete(u32, u32, Work),
    /// On demand: request `.0`'s agent gives up.
    Timeout(u32),
    /// Every master's load average is updated (Linux: every 5 s).
    LoadTick,
    /// Queue: the core asked to be polled now.
    Wakeup,
    /// Queue: the node was told its catalog changed and applies it.
    Notify(u32),
    /// Time-series sample.
    Sample,
}

#[derive(Debug)]
struct Scheduled {
    at: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The future events, earliest first.
#[derive(Debug, Default)]
pub struct Events {
    heap: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    handled: u64,
}

impl Events {
    /// Schedules `event` at `at`.
    pub fn at(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// The next event if it is due no later than `until`.
    pub fn next_until(&mut self, until: Time) -> Option<(Time, Event)> {
        if self.heap.peek()?.0.at > until {
            return None;
        }
        let Reverse(s) = self.heap.pop()?;
        self.handled += 1;
        Some((s.at, s.event))
    }

    /// Events handled so far.
    pub fn handled(&self) -> u64 {
        self.handled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_ties_in_scheduling_order() {
        let mut e = Events::default();
        e.at(Time::from_secs(5), Event::Sample);
        e.at(Time::from_secs(1), Event::Run(1));
        e.at(Time::from_secs(1), Event::Run(2));
        e.at(Time::from_secs(9), Event::LoadTick);
        let got: Vec<_> = std::iter::from_fn(|| e.next_until(Time::from_secs(6))).collect();
        assert_eq!(
            got,
            vec![
                (Time::from_secs(1), Event::Run(1)),
                (Time::from_secs(1), Event::Run(2)),
                (Time::from_secs(5), Event::Sample)
            ]
        );
        assert_eq!(e.handled(), 3);
        assert_eq!(
            e.next_until(Time::from_secs(100)),
            Some((Time::from_secs(9), Event::LoadTick))
        );
    }
}
