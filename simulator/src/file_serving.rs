//! The file-serving experiment on a simulated master: one client fetches
//! files one request after another while catalog clients keep compiles
//! going, as the end-to-end suite does on the real Puppet Server.
//!
//! The master is the one every run uses ([`SimMaster`], processor sharing)
//! behind its JRuby pool ([`JRubyPool`]: one FIFO borrow queue for
//! catalogs and files). Catalog clients run closed loops: each sends its
//! next request as soon as its catalog arrives. With more clients than
//! JRubies that is Puppet on demand under a herd; with fewer it is pcq
//! compiling continuously on `max_concurrency` JRubies and leaving the rest
//! to files.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scheduler::core::Time;

use crate::distribution::Sampler;
use crate::master::{Completion, SimMaster, Work};
use crate::metrics::Summary;
use crate::pool::{Borrower, JRubyPool};

/// A master and its load, as measured.
#[derive(Clone, Debug)]
pub struct FileExperiment {
    /// JRubies.
    pub slots: u32,
    /// Parallelism the master reaches (`masters.cores`).
    pub cores: f64,
    /// Compile CPU seconds on an idle master (drawn uniformly).
    pub compiles: Arc<Vec<f64>>,
    /// A file request's JRuby seconds on an idle master (drawn uniformly).
    pub files: Arc<Vec<f64>>,
    /// Catalog clients in closed loops (0: an idle master).
    pub catalog_clients: u32,
    /// File requests to time.
    pub file_requests: u32,
}

/// The key of the file client's requests (catalog clients are 0..).
const FILE_CLIENT: u32 = u32::MAX;

/// One run: the latency of each file request, seconds.
pub fn simulate(e: &FileExperiment, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut master = SimMaster::new(e.cores, 0.0, Time::ZERO);
    let mut pool = JRubyPool::new(e.slots);
    let compiles = Sampler::Empirical(e.compiles.clone());
    let files = Sampler::Empirical(e.files.clone());
    let mut out: Vec<Completion> = Vec::new();
    let mut events: BinaryHeap<Reverse<Completion>> = BinaryHeap::new();
    let start = |who: Borrower,
                 now: Time,
                 m: &mut SimMaster,
                 out: &mut Vec<Completion>,
                 r: &mut ChaCha8Rng| match who {
        Borrower::Catalog(c) => m.start(now, Work::Compile(c), compiles.draw(r), out),
        Borrower::File(f) => m.start(now, Work::File(f), files.draw(r), out),
    };
    for c in 0..e.catalog_clients {
        if pool.borrow(Time::ZERO, Borrower::Catalog(c)) {
            start(Borrower::Catalog(c), Time::ZERO, &mut master, &mut out, rng);
        }
    }
    // the file client starts once the catalog clients are in full swing
    // (on an idle master at once)
    let mut issued = if e.catalog_clients == 0 {
        Time::ZERO
    } else {
        Time::from_secs(30)
    };
    let mut file_started = false;
    let mut latencies = Vec::with_capacity(e.file_requests as usize);
    events.extend(out.drain(..).map(Reverse));
    while latencies.len() < e.file_requests as usize {
        let next = events.peek().map(|&Reverse((at, _, _))| at);
        if !file_started && next.is_none_or(|at| at >= issued) {
            // the file client's first request goes out before that event
            file_started = true;
            let who = Borrower::File(FILE_CLIENT);
            if pool.borrow(issued, who) {
                start(who, issued, &mut master, &mut out, rng);
            }
            events.extend(out.drain(..).map(Reverse));
            continue;
        }
        let Some(Reverse((at, generation, work))) = events.pop() else {
            break;
        };
        if master.complete(at, generation, work, &mut out).is_some() {
            if let Some(next) = pool.release() {
                start(next, at, &mut master, &mut out, rng);
            }
            // the client whose answer this was sends its next request
            let (who, again) = match work {
                Work::Compile(c) => (Borrower::Catalog(c), true),
                Work::File(_) => {
                    latencies.push(at.since(issued).as_secs_f64());
                    issued = at;
                    let more = latencies.len() < e.file_requests as usize;
                    (Borrower::File(FILE_CLIENT), more)
                }
            };
            if again && pool.borrow(at, who) {
                start(who, at, &mut master, &mut out, rng);
            }
        }
        events.extend(out.drain(..).map(Reverse));
    }
    latencies
}

/// The file requests' latency over `replications` runs pooled (seeded).
pub fn predict(e: &FileExperiment, replications: u32, seed: u64) -> Summary {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<f64> = (0..replications)
        .flat_map(|_| simulate(e, &mut rng))
        .collect();
    Summary::of(&mut all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(catalog_clients: u32) -> FileExperiment {
        FileExperiment {
            slots: 3,
            cores: 2.0,
            compiles: Arc::new(vec![1.0]),
            files: Arc::new(vec![0.01]),
            catalog_clients,
            file_requests: 200,
        }
    }

    #[test]
    fn an_idle_master_answers_in_the_request_time() {
        let s = predict(&experiment(0), 2, 1);
        assert_eq!(s.count, 400);
        assert!((s.p95 - 0.01).abs() < 1e-5, "{s:?}");
    }

    #[test]
    fn a_herd_makes_files_wait_and_a_reserve_does_not() {
        // 6 catalog clients on 3 JRubies: a file request waits behind
        // three catalogs, about a second each on 2 cores shared by 3
        let herd = predict(&experiment(6), 2, 1);
        assert!(herd.p50 > 1.0, "{herd:?}");
        // 2 clients (pcq at max_concurrency 2): one JRuby stays free; the
        // request only shares the CPU with two compiles (2 cores, 3
        // runnable: 1.5 times slower)
        let reserved = predict(&experiment(2), 2, 1);
        assert!(reserved.max < 0.02, "{reserved:?}");
        assert!(reserved.p50 > 0.014, "{reserved:?}");
    }
}
