//! A master's JRuby pool: the instances that compiles and file requests
//! borrow, and the one FIFO borrow queue they wait in.
//!
//! Puppet Server serves catalogs and files (`file_metadata`,
//! `file_content`, pluginsync) from the same pool: every request borrows a
//! JRuby for its whole Ruby part. On demand, catalog requests and file
//! requests queue behind each other in arrival order, so a herd of compiles
//! makes every agent's file resources wait. Under pcq the core starts at
//! most `max_concurrency` compiles per master and file requests get the
//! rest of the pool (`reserve_for_files`).
//!
//! The pool only counts and queues; the world decides what a granted borrow
//! starts on the master's CPU.

use std::collections::VecDeque;

use scheduler::core::Time;

/// Who waits for (or holds) a JRuby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Borrower {
    /// A compile: the model's key (on demand a request, in the queue a
    /// node).
    Catalog(u32),
    /// A file request of this node's agent.
    File(u32),
}

/// One master's JRuby pool.
#[derive(Clone, Debug)]
pub struct JRubyPool {
    size: u32,
    busy: u32,
    queue: VecDeque<(Time, Borrower)>,
}

impl JRubyPool {
    /// A pool of `size` instances (at least one).
    pub fn new(size: u32) -> JRubyPool {
        JRubyPool {
            size: size.max(1),
            busy: 0,
            queue: VecDeque::new(),
        }
    }

    /// Borrows an instance for `who` at `now`: true if it got one now,
    /// false if it waits in the queue (its turn comes from [`release`]).
    ///
    /// [`release`]: JRubyPool::release
    pub fn borrow(&mut self, now: Time, who: Borrower) -> bool {
        if self.busy < self.size {
            self.busy += 1;
            true
        } else {
            self.queue.push_back((now, who));
            false
        }
    }

    /// An instance comes back; the borrower whose turn it is now holds it.
    pub fn release(&mut self) -> Option<Borrower> {
        self.busy = self.busy.saturating_sub(1);
        let (_, who) = self.queue.pop_front()?;
        self.busy += 1;
        Some(who)
    }

    /// Instances lent out plus borrowers waiting (what a least-connections
    /// load balancer sees).
    pub fn outstanding(&self) -> usize {
        self.busy as usize + self.queue.len()
    }

    /// Instances nobody holds (what Puppet Server's status API reports as
    /// `num-free-jrubies`).
    pub fn free(&self) -> u32 {
        self.size.saturating_sub(self.busy)
    }

    /// Borrowers waiting.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Since when the longest waiter waits.
    pub fn oldest(&self) -> Option<Time> {
        self.queue.front().map(|&(t, _)| t)
    }

    /// The master died: nothing is lent out any more; returns who waited.
    pub fn drain(&mut self) -> Vec<Borrower> {
        self.busy = 0;
        self.queue.drain(..).map(|(_, who)| who).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowers_wait_in_arrival_order_whatever_they_are() {
        let mut pool = JRubyPool::new(1);
        let t = Time::ZERO;
        assert!(pool.borrow(t, Borrower::Catalog(1)));
        assert!(!pool.borrow(t, Borrower::File(7)));
        assert!(!pool.borrow(t, Borrower::Catalog(2)));
        assert_eq!(pool.outstanding(), 3);
        assert_eq!(pool.release(), Some(Borrower::File(7)));
        assert_eq!(pool.release(), Some(Borrower::Catalog(2)));
        assert_eq!(pool.release(), None);
        assert_eq!(pool.outstanding(), 0);
        assert!(
            pool.borrow(t, Borrower::File(3)),
            "a free instance is lent at once"
        );
    }

    #[test]
    fn a_dead_master_lends_nothing_and_returns_its_waiters() {
        let mut pool = JRubyPool::new(2);
        let t = Time::from_secs(1);
        pool.borrow(t, Borrower::Catalog(1));
        pool.borrow(t, Borrower::Catalog(2));
        pool.borrow(t, Borrower::File(3));
        assert_eq!(pool.oldest(), Some(t));
        assert_eq!(pool.drain(), vec![Borrower::File(3)]);
        assert_eq!(pool.outstanding(), 0);
    }
}
