//! The per-upload decision "did a fact this node's catalog reads change?".
//!
//! Fixtures: `data/facts-upload.json` is a real upload body (this test
//! machine's `facter -p --json --show-legacy`, 119 facts, plus the test
//! code's custom facts); `data/used-paths.txt` is what `pcq analyze
//! --class ...` says a node with the 46 classes of the end-to-end verify
//! node (ntp, apache, saz-ssh, memcached, haproxy, concat, stdlib) can read:
//! 1,068 paths, most of them template variables that are not facts.
//!
//! `used_hash` is the decision itself (the set is looked up, the facts at
//! its paths hashed); `relevant_hash` is the ignore-list hash the API also
//! computes (deciding whether to store the facts; it is the decision too
//! for a node whose catalog reads every fact); `whole_upload` is all the
//! API does with an upload's body: parse it, both hashes.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use scheduler::daemon::analyze::{NodeDeps, UsedFacts};
use scheduler::daemon::certname::Certname;
use scheduler::daemon::config::{Analysis, Facts};
use scheduler::daemon::dependencies::Dependencies;
use scheduler::daemon::facts::{Ignore, Upload};

const UPLOAD: &str = include_str!("../data/facts-upload.json");
const USED: &str = include_str!("../data/used-paths.txt");

fn decision(c: &mut Criterion) {
    let ignore = Arc::new(Ignore::new(&Facts::default().ignore).expect("globs"));
    let deps = Dependencies::new(&Analysis::default(), ignore.clone());
    let certname = Certname::parse("verify-01.example.com").expect("certname");
    let paths: Vec<&str> = USED.lines().filter(|l| !l.is_empty()).collect();
    let set = UsedFacts::from_paths(&paths);
    deps.set_node(
        &certname,
        Some(Arc::new(NodeDeps {
            fingerprint: set.fingerprint(),
            facts: Arc::new(set),
            ..NodeDeps::default()
        })),
    );
    // what the leader's API does with a body: checked as sent, then the
    // values built into a tree to hash
    let values = |u: &Upload| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_slice(u.object().expect("an object")).expect("values")
    };
    let upload: Upload = serde_json::from_str(UPLOAD).expect("upload");
    let tree = values(&upload);

    let mut g = c.benchmark_group("facts_upload");
    g.bench_function("used_hash", |b| {
        b.iter(|| black_box(deps.used_hash(&certname, black_box(&tree), "")))
    });
    g.bench_function("whole_upload", |b| {
        b.iter(|| {
            let u: Upload = serde_json::from_str(black_box(UPLOAD)).expect("upload");
            let tree = values(&u);
            let relevant = ignore.relevant_hash(&tree);
            black_box(deps.used_hash(&certname, &tree, &relevant))
        })
    });
    g.bench_function("relevant_hash", |b| {
        b.iter(|| black_box(ignore.relevant_hash(black_box(&tree))))
    });
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
