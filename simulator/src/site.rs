//! A scenario from what a site was seen to do (`pcq-sim scenario`).
//!
//! `pcq site` writes a [`Site`]: from a running pcq, or from PuppetDB for a
//! site that does not run pcq yet. This turns it into a scenario file with
//! the compile times as an empirical CSV beside it, every derived number
//! explained in a comment, and every number the source could not give
//! marked as assumed, so `pcq-sim plan` starts from the site's own figures
//! and the reader sees which ones are guesses.
//!
//! Where the observation is unsure the scenario leans to more work for the
//! masters, never less: a changed agent run counts as a changed catalog
//! (drift put back is counted too), a compile time seen by an agent
//! includes its wait for a JRuby.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use scheduler::core::CoreConfig;
use scheduler::site::{Site, MAX_DEPLOYS};

use crate::metrics::Summary;

/// What `scenario` writes: the scenario's text and the CSV files beside it.
#[derive(Debug)]
pub struct Built {
    /// The scenario (TOML).
    pub toml: String,
    /// (file name, seconds) of each CSV: `compile.csv` (every master's
    /// compiles, which the scenario reads) and one per master when there
    /// are several.
    pub csvs: Vec<(String, Vec<f64>)>,
}

/// Simulated time of the scenario.
const DURATION: Duration = Duration::from_secs(86_400);
/// Its warm-up.
const WARMUP: Duration = Duration::from_secs(3_600);

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() { s.max(0.0) } else { 0.0 })
}

/// The scenario named `name` for `site`. Fails when the site says too
/// little to plan with (no node, no compile seen).
pub fn scenario(site: &Site, name: &str) -> Result<Built, String> {
    site.check()?;
    let nodes = site.nodes();
    if nodes == 0 {
        return Err("the site has no node: nothing to plan".into());
    }
    let nodes_u32 = u32::try_from(nodes).map_err(|_| format!("{nodes} nodes: too many"))?;
    // the CSV reader takes positive seconds only
    let positive = |s: &[f64]| -> Vec<f64> { s.iter().copied().filter(|s| *s > 0.0).collect() };
    let samples: Vec<f64> = site
        .masters
        .iter()
        .flat_map(|m| positive(&m.compile_seconds))
        .collect();
    if samples.is_empty() {
        return Err(
            "no compile time was observed (a daemon that has not compiled yet, or reports without config_retrieval): wait for compiles, or measure with pcq calibrate and pcq-sim fit"
                .into(),
        );
    }
    let days = site.days();
    // Puppet's environment names are word characters; a name from a
    // source that is not one (PuppetDB keeps what agents said) is renamed,
    // and names that become one are merged
    let mut environments: Vec<(String, u32, Vec<&str>)> = Vec::new();
    for e in &site.environments {
        let name = word(&e.name);
        match environments.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, nodes, from)) => {
                *nodes += e.nodes;
                from.push(&e.name);
            }
            None => environments.push((name, e.nodes, vec![&e.name])),
        }
    }
    let per_node_day = |count: f64| count / nodes as f64 / days;
    let mut out = String::new();
    let seen = Summary::of(&mut samples.clone());
    let mut csvs = vec![("compile.csv".to_string(), samples)];

    // --- what was seen -----------------------------------------------------
    let span = match days < 2.0 {
        true => format!("{:.1} hours", days * 24.0),
        false => format!("{days:.1} days"),
    };
    let _ = writeln!(
        out,
        "# Built by pcq-sim scenario from {} over {span} ({} to {}).",
        comment(&site.source),
        stamp(site.from),
        stamp(site.to)
    );
    out += "# Numbers marked \"assumed\" were not observed: check them.\n";
    if days < 1.0 / 24.0 {
        out += "# The window is under an hour: every rate below is rough.\n";
    }
    out += "#\n# Nodes per environment (the simulator spreads them round robin):\n";
    for (name, nodes, from) in &environments {
        let _ = write!(out, "#   {name}: {nodes}");
        if from.len() > 1 || from[0] != name {
            let shown: Vec<String> = from.iter().map(|f| comment(f)).collect();
            let _ = write!(
                out,
                " (from {}: renamed to word characters)",
                shown.join(", ")
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# Compiles seen: {} (mean {:.2} s, p50 {:.2} s, p95 {:.2} s, max {:.2} s).",
        seen.count, seen.mean, seen.p50, seen.p95, seen.max
    );
    for m in &site.masters {
        let _ = write!(
            out,
            "#   master {}: {} slots, {} compiles",
            comment(&m.name),
            m.slots,
            m.compile_seconds.len()
        );
        if let (Some(b), Some(w)) = (m.average_borrow_seconds, m.average_wait_seconds) {
            let _ = write!(
                out,
                "; Puppet Server says: a JRuby held {b:.2} s, waited for {w:.2} s on average"
            );
        }
        out.push('\n');
    }
    if let Some(r) = &site.runs {
        let _ = writeln!(
            out,
            "# Agent runs: {} ({} changed, {} unchanged, {} failed: {:.1}% failed).",
            r.total,
            r.changed,
            r.unchanged,
            r.failed,
            100.0 * r.failed as f64 / r.total.max(1) as f64
        );
        if let Some((hour, n)) = r
            .failed_by_hour
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .filter(|(_, n)| **n > 0)
        {
            let _ = writeln!(
                out,
                "#   most failures at {hour:02}:00-{hour:02}:59 UTC ({n}): a herd? add it under [[herds]]"
            );
        }
    }

    // --- top level ---------------------------------------------------------
    let _ = writeln!(
        out,
        "\nname = {}\ndescription = {}\nduration = \"{}\"\nwarmup = \"{}\"\nseed = 1",
        quoted(name),
        quoted(&format!("observed by {}", comment(&site.source))),
        human(DURATION),
        human(WARMUP)
    );

    // --- fleet ---------------------------------------------------------------
    let names: Vec<String> = environments.iter().map(|(n, _, _)| quoted(n)).collect();
    let _ = writeln!(
        out,
        "\n[fleet]\nnodes = {nodes}\nenvironments = [{}]",
        names.join(", ")
    );

    // --- agents --------------------------------------------------------------
    out += "\n[agents]\n";
    match &site.agents {
        Some(a) => {
            let interval = seconds(a.interval_seconds).max(Duration::from_secs(60));
            let splay = seconds(a.splay_seconds).min(interval);
            let _ = writeln!(
                out,
                "# observed: the median time between a node's runs, and the spread of their phases\ninterval = \"{}\"\nsplay = \"{}\"",
                human(interval),
                human(splay)
            );
        }
        None => {
            out += "# assumed (Puppet's defaults; the source does not see agent runs)\ninterval = \"30m\"\nsplay = \"30m\"\n";
        }
    }

    // --- compile -------------------------------------------------------------
    let what = if site.runs.is_some() {
        "agents' config_retrieval times (they include the wait for a JRuby, so they lean slow)"
    } else {
        "pcq's compiles, start to catalog (wall time on a loaded master, so they lean slow)"
    };
    let _ = writeln!(
        out,
        "\n[compile]\n# observed: {what}\ndistribution = \"empirical\"\ncsv = \"compile.csv\""
    );

    // --- facts ---------------------------------------------------------------
    out += "\n[facts]\n";
    if let Some(f) = &site.facts {
        let _ = writeln!(
            out,
            "# observed: {} uploads, {} changed a used fact, {} only unused facts ({} first facts of new nodes left out)\nused_changes_per_node_day = {}\nunused_changes_per_node_day = {}",
            f.uploads,
            f.used_changes,
            f.unused_changes,
            f.first,
            rate(per_node_day(f.used_changes as f64)),
            rate(per_node_day(f.unused_changes as f64))
        );
    } else if let Some(r) = &site.runs {
        let _ = writeln!(
            out,
            "# observed: each changed or failed run counts as a changed catalog (drift put back, a run\n# that failed: more compiles, never fewer); every unchanged or noop run uploaded facts\n# that changed nothing a catalog uses\nused_changes_per_node_day = {}\nunused_changes_per_node_day = {}",
            rate(per_node_day(r.changed as f64 + r.failed as f64)),
            rate(per_node_day(r.unchanged as f64))
        );
    } else {
        out += "# assumed (the source saw no facts uploads)\nused_changes_per_node_day = 0.5\nunused_changes_per_node_day = 48\n";
    }

    // --- exports -------------------------------------------------------------
    let x = &site.exports;
    if x.exporters > 0 || x.collectors > 0 {
        // the simulator's exporters and collectors are apart; where they
        // overlap (every node exports and collects), the collectors are
        // kept and the exporters take the rest with their changes among
        // them: as many export changes, each reaching every collector
        let collectors = x
            .collectors
            .min(nodes_u32.saturating_sub(u32::from(x.exporters > 0)));
        let exporters = x.exporters.min(nodes_u32 - collectors);
        out += "\n[exports]\n";
        if exporters < x.exporters {
            let _ = writeln!(
                out,
                "# {} exporters and {} collectors seen among {nodes} nodes: the simulator's are apart, so\n# {exporters} exporters carry every export change",
                x.exporters, x.collectors
            );
        }
        let _ = writeln!(out, "exporters = {exporters}\ncollectors = {collectors}");
        let per_exporter = |total: f64| rate(total / f64::from(exporters.max(1)));
        match x.changes {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "# observed: {c} compiles changed their exports\nchanges_per_exporter_day = {}",
                    per_exporter(c as f64 / days)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "# assumed: one change per exporter a day (PuppetDB keeps no history of exports)\nchanges_per_exporter_day = {}",
                    per_exporter(f64::from(x.exporters))
                );
            }
        }
    }

    // --- deploys -------------------------------------------------------------
    // when the oldest deploys were dropped, rates are over the span of
    // the ones kept
    let deploys_from = match site.deploys.len() >= MAX_DEPLOYS {
        true => site
            .deploys
            .first()
            .map_or(site.from, |d| d.at.max(site.from)),
        false => site.from,
    };
    let mut by_env: BTreeMap<String, Vec<&scheduler::site::ObservedDeploy>> = BTreeMap::new();
    for d in &site.deploys {
        by_env.entry(word(&d.environment)).or_default().push(d);
    }
    for (env, list) in by_env {
        if !environments.iter().any(|(n, _, _)| *n == env) {
            let _ = writeln!(
                out,
                "\n# {} deploys to {env}, which has no node now: left out",
                list.len()
            );
            continue;
        }
        let window = (site.to - deploys_from).max(60.0);
        let every = seconds(window / list.len() as f64).max(Duration::from_secs(60));
        // the share a deploy moves, from the ones pcq could bound (an
        // unbounded one moves every node, whatever its change reached)
        let shares: Vec<f64> = list
            .iter()
            .filter(|d| d.members > 0 && d.unbounded == Some(false))
            .map(|d| f64::from(d.nodes) / f64::from(d.members))
            .collect();
        let decided: Vec<bool> = list.iter().filter_map(|d| d.unbounded).collect();
        let (affects, affects_said) = match shares.is_empty() {
            true => (
                1.0,
                "assumed: every node (no deploy pcq could bound)".to_string(),
            ),
            false => {
                let a = shares.iter().sum::<f64>() / shares.len() as f64;
                (
                    a,
                    format!(
                        "observed: the bounded ones moved {:.0}% of the environment on average",
                        a * 100.0
                    ),
                )
            }
        };
        let (unbounded, unbounded_said) = match decided.is_empty() {
            true => (
                1.0,
                "assumed: unbounded (pcq had nothing to bound them against)".to_string(),
            ),
            false => {
                let u = decided.iter().filter(|u| **u).count() as f64 / decided.len() as f64;
                (
                    u,
                    format!(
                        "observed: {} of {} could not be bounded",
                        decided.iter().filter(|u| **u).count(),
                        decided.len()
                    ),
                )
            }
        };
        let _ = writeln!(
            out,
            "\n[[deploys]]\n# observed: {} deploys in {:.1} hours\nat = \"{}\"\nevery = \"{}\"\nenvironment = {}\n# {affects_said}\naffects = {}\n# {unbounded_said}\nunbounded = {}",
            list.len(),
            window / 3600.0,
            human(WARMUP + Duration::from_secs(60)),
            human(every),
            quoted(&env),
            rate(affects),
            rate(unbounded)
        );
    }

    // --- masters -------------------------------------------------------------
    let count = site.masters.len().max(1);
    let slots = site
        .masters
        .iter()
        .map(|m| m.slots)
        .min()
        .unwrap_or(1)
        .max(1);
    let cores: Vec<f64> = site.masters.iter().filter_map(|m| m.cores).collect();
    // the pool, when every master's was read: pcq compiles on `slots` of
    // its JRubies and leaves the rest to file requests
    let pools: Vec<u32> = site.masters.iter().filter_map(|m| m.jrubies).collect();
    let jrubies = (pools.len() == site.masters.len())
        .then(|| pools.iter().copied().min())
        .flatten()
        .filter(|&j| j > slots);
    out += "\n[masters]\n";
    match jrubies {
        Some(j) => {
            let _ = writeln!(
                out,
                "# observed: {count} master(s) of {j} JRubies, pcq compiling on {slots} of them (the smallest seen: the simulator's masters are alike)\ncount = {count}\nslots = {j}"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# observed: {count} master(s), {slots} compile slots each (the smallest seen: the simulator's masters are alike)\ncount = {count}\nslots = {slots}"
            );
        }
    }
    if cores.len() == site.masters.len() && !cores.is_empty() {
        let c = cores.iter().sum::<f64>() / cores.len() as f64;
        let _ = writeln!(
            out,
            "# configured cores: what a master reaches is often less; measure it with\n# pcq calibrate and pcq-sim fit, and put the fitted value here\ncores = {}",
            rate(c)
        );
    } else {
        let _ = writeln!(
            out,
            "# assumed: one core per slot. A real server reaches less (a guessed cores was 30-55%\n# optimistic on our test master): measure with pcq calibrate and pcq-sim fit\ncores = {slots}"
        );
    }

    // --- queue ---------------------------------------------------------------
    if let Some(core) = &site.core {
        out += "\n# observed: pcq's own scheduling settings (gate.max_concurrency is masters.slots\n# less queue.reserve_for_files)\n";
        out += &core_table(core, jrubies.map(|j| j - slots))?;
    }

    // --- what to plan for ------------------------------------------------------
    let upto = (count * 2).clamp(4, 32);
    let masters: Vec<String> = (1..=upto).map(|m| m.to_string()).collect();
    let _ = writeln!(
        out,
        "\n[slo]\n# assumed: set your own\nstaleness_applied_p95 = \"1h\"\nfailed_runs = 0.01\noldest_age = \"30m\"\n\n[plan]\nmasters = [{}]\nreplications = 3",
        masters.join(", ")
    );
    if site.masters.len() > 1 {
        for (i, m) in site.masters.iter().enumerate() {
            let file = format!("compile-{i}-{}.csv", file_safe(&m.name));
            csvs.push((file, positive(&m.compile_seconds)));
        }
    }
    Ok(Built { toml: out, csvs })
}

/// `[queue.core]` and its subtables, from the daemon's own settings.
fn core_table(core: &CoreConfig, reserve_for_files: Option<u32>) -> Result<String, String> {
    let mut queue = toml::Table::new();
    if let Some(r) = reserve_for_files {
        queue.insert("reserve_for_files".into(), toml::Value::Integer(r.into()));
    }
    let value = toml::Value::try_from(core).map_err(|e| format!("the core's settings: {e}"))?;
    queue.insert("core".into(), value);
    let mut root = toml::Table::new();
    root.insert("queue".into(), toml::Value::Table(queue));
    toml::to_string(&root).map_err(|e| format!("the core's settings: {e}"))
}

/// A number as TOML writes it, rounded to what a rate needs.
fn rate(x: f64) -> String {
    let x = if x.is_finite() { x.max(0.0) } else { 0.0 };
    let rounded = (x * 10_000.0).round() / 10_000.0;
    if rounded == rounded.trunc() {
        format!("{rounded:.1}")
    } else {
        format!("{rounded}")
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `name` with every character `keep` refuses replaced by `_`.
fn replaced(name: &str, keep: impl Fn(char) -> bool) -> String {
    name.chars()
        .map(|c| if keep(c) { c } else { '_' })
        .collect()
}

/// A name as an environment name may be: word characters.
fn word(name: &str) -> String {
    let w = replaced(name, |c| c.is_ascii_alphanumeric() || c == '_');
    if w.is_empty() {
        "_".into()
    } else {
        w
    }
}

/// Text as a comment may hold it: one line, no control characters.
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn file_safe(name: &str) -> String {
    replaced(name, |c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn stamp(epoch: f64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + seconds(epoch)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::csv_text;
    use crate::scenario::Scenario;
    use scheduler::site::{
        EnvironmentCount, FactUploads, ObservedDeploy, ObservedExports, ObservedMaster, Runs,
    };

    fn site() -> Site {
        Site {
            source: "pcq serve on test".into(),
            from: 1_000_000.0,
            to: 1_000_000.0 + 2.0 * 86_400.0,
            environments: vec![
                EnvironmentCount {
                    name: "production".into(),
                    nodes: 300,
                },
                EnvironmentCount {
                    name: "dev".into(),
                    nodes: 60,
                },
                EnvironmentCount {
                    name: "feature-x".into(),
                    nodes: 40,
                },
            ],
            masters: vec![
                ObservedMaster {
                    name: "m1".into(),
                    slots: 3,
                    jrubies: None,
                    cores: Some(4.0),
                    compile_seconds: vec![1.0, 2.0, 3.0],
                    average_borrow_seconds: None,
                    average_wait_seconds: None,
                },
                ObservedMaster {
                    name: "m/2".into(),
                    slots: 2,
                    jrubies: None,
                    cores: Some(2.0),
                    compile_seconds: vec![4.0],
                    average_borrow_seconds: Some(1.5),
                    average_wait_seconds: Some(0.25),
                },
            ],
            agents: None,
            runs: None,
            facts: Some(FactUploads {
                uploads: 1000,
                used_changes: 400,
                unused_changes: 500,
                first: 100,
            }),
            exports: ObservedExports {
                exporters: 10,
                collectors: 2,
                changes: Some(40),
            },
            deploys: vec![
                ObservedDeploy {
                    at: 1_000_100.0,
                    environment: "production".into(),
                    nodes: 30,
                    members: 300,
                    unbounded: Some(false),
                },
                ObservedDeploy {
                    at: 1_000_200.0,
                    environment: "production".into(),
                    nodes: 300,
                    members: 300,
                    unbounded: Some(true),
                },
                ObservedDeploy {
                    at: 1_000_300.0,
                    environment: "gone".into(),
                    nodes: 1,
                    members: 1,
                    unbounded: None,
                },
            ],
            core: Some(CoreConfig::default()),
        }
    }

    fn parsed(built: &Built) -> Scenario {
        let dir = tempfile::tempdir().expect("tmp");
        for (file, rows) in &built.csvs {
            std::fs::write(dir.path().join(file), csv_text(rows)).expect("csv");
        }
        let path = dir.path().join("s.toml");
        Scenario::parse(&built.toml, &path, dir.path())
            .unwrap_or_else(|e| panic!("{e}\n{}", built.toml))
    }

    #[test]
    fn a_pool_larger_than_pcq_uses_is_kept_apart_as_the_reserve() {
        let mut site = site();
        for m in &mut site.masters {
            m.slots = 2;
            m.jrubies = Some(3);
        }
        let s = parsed(&scenario(&site, "observed").expect("scenario"));
        assert_eq!((s.masters.slots, s.queue.reserve_for_files), (3, 1));
        assert_eq!(s.queue_core().gate.max_concurrency, 2);
        // one pool unknown: what pcq compiles on is all it knows
        site.masters[1].jrubies = None;
        let s = parsed(&scenario(&site, "observed").expect("scenario"));
        assert_eq!((s.masters.slots, s.queue.reserve_for_files), (2, 0));
    }

    #[test]
    fn a_pcq_site_becomes_a_scenario_with_its_own_figures() {
        let built = scenario(&site(), "observed").expect("scenario");
        let s = parsed(&built);
        assert_eq!(s.fleet.nodes, 400);
        assert_eq!(s.fleet.environments, ["production", "dev", "feature_x"]);
        assert!(built
            .toml
            .contains("#   feature_x: 40 (from feature-x: renamed"));
        // the smallest pool: the simulator's masters are alike
        assert_eq!((s.masters.count, s.masters.slots), (2, 2));
        assert!((s.masters.cores - 3.0).abs() < 1e-9);
        // 400 used changes over 400 nodes and 2 days
        assert!((s.facts.used_changes_per_node_day - 0.5).abs() < 1e-9);
        assert!((s.facts.unused_changes_per_node_day - 0.625).abs() < 1e-9);
        assert_eq!((s.exports.exporters, s.exports.collectors), (10, 2));
        assert!((s.exports.changes_per_exporter_day - 2.0).abs() < 1e-9);
        // the deploy to an environment without nodes is left out
        assert_eq!(s.deploys.len(), 1);
        let d = &s.deploys[0];
        assert_eq!(d.every, Some(Duration::from_secs(86_400)));
        // the share from the bounded deploy only; one of two unbounded
        assert!((d.affects - 0.1).abs() < 1e-9, "{}", d.affects);
        assert!((d.unbounded - 0.5).abs() < 1e-9);
        assert_eq!(
            built.csvs.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["compile.csv", "compile-0-m1.csv", "compile-1-m_2.csv"]
        );
        assert_eq!(built.csvs[0].1, [1.0, 2.0, 3.0, 4.0]);
        assert!(built.toml.contains("#   production: 300"));
        assert!(built
            .toml
            .contains("a JRuby held 1.50 s, waited for 0.25 s"));
    }

    #[test]
    fn a_puppetdb_site_counts_changed_runs_as_catalog_changes_and_marks_guesses() {
        let mut s = site();
        s.facts = None;
        s.core = None;
        s.masters[0].cores = None;
        s.exports.changes = None;
        s.runs = Some(Runs {
            total: 1000,
            changed: 200,
            unchanged: 780,
            failed: 20,
            failed_by_hour: (0..24).map(|h| u64::from(h == 3) * 20).collect(),
        });
        s.agents = Some(scheduler::site::ObservedAgents {
            interval_seconds: 1800.0,
            splay_seconds: 900.0,
        });
        let built = scenario(&s, "pdb").expect("scenario");
        let parsed = parsed(&built);
        assert!((parsed.facts.used_changes_per_node_day - 0.275).abs() < 1e-9);
        assert_eq!(parsed.agents.interval, Some(Duration::from_secs(1800)));
        assert_eq!(parsed.agents.splay, Duration::from_secs(900));
        // cores not known for every master: one per slot, said to be assumed
        assert!((parsed.masters.cores - 2.0).abs() < 1e-9);
        assert!(built.toml.contains("# assumed: one core per slot"));
        assert!(built
            .toml
            .contains("# assumed: one change per exporter a day"));
        assert!(built.toml.contains("03:00-03:59 UTC (20)"));
    }

    #[test]
    fn overlapping_exporters_and_collectors_keep_every_collector_and_change() {
        let mut s = site();
        s.exports = ObservedExports {
            exporters: 400,
            collectors: 400,
            changes: Some(800),
        };
        let parsed = parsed(&scenario(&s, "x").expect("scenario"));
        let x = &parsed.exports;
        assert_eq!((x.exporters, x.collectors), (1, 399));
        // 800 changes in 2 days, all on the one exporter
        assert!((x.changes_per_exporter_day - 400.0).abs() < 1e-9);
    }

    #[test]
    fn deploys_pcq_could_not_bound_are_said_to_be_assumed() {
        let mut s = site();
        for d in &mut s.deploys {
            d.unbounded = None;
        }
        let built = scenario(&s, "x").expect("scenario");
        let d = &parsed(&built).deploys[0];
        assert_eq!((d.affects, d.unbounded), (1.0, 1.0));
        assert!(built.toml.contains("# assumed: every node"));
        // a newline in a name cannot add a key
        s.source = "x\nexternal.changes_per_node_day = 9".into();
        let built = scenario(&s, "x").expect("scenario");
        assert_eq!(parsed(&built).external.changes_per_node_day, 0.0);
    }

    #[test]
    fn a_site_without_nodes_or_compiles_is_refused() {
        let mut s = site();
        for m in &mut s.masters {
            m.compile_seconds.clear();
        }
        assert!(scenario(&s, "x").unwrap_err().contains("no compile time"));
        s.environments.clear();
        assert!(scenario(&s, "x").unwrap_err().contains("no node"));
        let mut s = site();
        s.to = s.from;
        assert!(scenario(&s, "x").unwrap_err().contains("window"));
    }
}
