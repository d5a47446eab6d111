//! What this daemon saw since it started, for `GET /v1/site` (`pcq site`):
//! the compile durations per master, the facts uploads and what they
//! changed, and deploys (export changes are counted by the router). `pcq-sim scenario` builds a
//! scenario from it, so a capacity plan starts from the site's own figures
//! rather than guesses.
//!
//! Bounded: the newest [`MAX_SAMPLES`] compile times per master and the
//! newest [`MAX_DEPLOYS`] deploys; counters are plain sums. Not stored:
//! a restart starts a new observation (the window says so).

use std::collections::{HashMap, VecDeque};

use crate::core::Time;
use crate::site::{push_newest, FactUploads, ObservedDeploy, MAX_DEPLOYS, MAX_SAMPLES};

/// The record.
#[derive(Debug)]
pub struct Observed {
    /// When the observation began.
    pub since: Time,
    compile_seconds: HashMap<usize, VecDeque<f64>>,
    /// Facts uploads.
    pub facts: FactUploads,
    deploys: VecDeque<ObservedDeploy>,
}

impl Observed {
    /// An empty record starting at `since`.
    pub fn new(since: Time) -> Observed {
        Observed {
            since,
            compile_seconds: HashMap::new(),
            facts: FactUploads::default(),
            deploys: VecDeque::new(),
        }
    }

    /// A compile held master `m` for `seconds`.
    pub fn compiled(&mut self, m: usize, seconds: f64) {
        push_newest(
            self.compile_seconds.entry(m).or_default(),
            seconds,
            MAX_SAMPLES,
        );
    }

    /// A facts upload, with its result label (`changed`: a used fact,
    /// `unused`: only facts no catalog uses, `unchanged`, `first`: the
    /// first facts of a node joining).
    pub fn upload(&mut self, label: &str) {
        self.facts.uploads += 1;
        match label {
            "changed" => self.facts.used_changes += 1,
            "first" => self.facts.first += 1,
            "unused" => self.facts.unused_changes += 1,
            _ => {}
        }
    }

    /// A deploy was decided.
    pub fn deploy(&mut self, deploy: ObservedDeploy) {
        push_newest(&mut self.deploys, deploy, MAX_DEPLOYS);
    }

    /// The compile seconds seen on master `m`, oldest first.
    pub fn compile_seconds(&self, m: usize) -> Vec<f64> {
        self.compile_seconds
            .get(&m)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The deploys kept, oldest first.
    pub fn deploys(&self) -> Vec<ObservedDeploy> {
        self.deploys.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_the_newest_and_uploads_count_by_result() {
        let mut o = Observed::new(Time::ZERO);
        for i in 0..MAX_SAMPLES + 5 {
            o.compiled(1, i as f64);
        }
        let s = o.compile_seconds(1);
        assert_eq!(s.len(), MAX_SAMPLES);
        assert_eq!(s[0], 5.0);
        assert!(o.compile_seconds(0).is_empty());
        for label in ["changed", "unused", "unchanged", "changed", "first"] {
            o.upload(label);
        }
        let f = &o.facts;
        assert_eq!(
            (f.uploads, f.used_changes, f.unused_changes, f.first),
            (5, 2, 1, 1)
        );
    }
}
