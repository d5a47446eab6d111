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
use scheduler::site::Site;

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

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
    let mut samples: Vec<f64> = site
        .masters
        .iter()
        .flat_map(|m| m.compile_seconds.iter().copied())
        .filter(|s| *s > 0.0)
        .collect();
    if samples.is_empty() {
        return Err(
            "no compile time was observed (a daemon that has not compiled yet, or reports without config_retrieval): wait for compiles, or measure with pcq calibrate and pcq-sim fit"
                .into(),
        );
    }
    let days = site.days();
    let per_node_day = |count: f64| count / nodes as f64 / days;
    let mut out = String::new();
    let mut csvs = vec![("compile.csv".to_string(), samples.clone())];
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;

    // --- what was seen -----------------------------------------------------
    let span = match days < 2.0 {
        true => format!("{:.1} hours", days * 24.0),
        false => format!("{days:.1} days"),
    };
    let _ = writeln!(
        out,
        "# Built by pcq-sim scenario from {} over {span} ({} to {}).",
        site.source,
        stamp(site.from),
        stamp(site.to)
    );
    out += "# Numbers marked \"assumed\" were not observed: check them.\n";
    if days < 1.0 / 24.0 {
        out += "# The window is under an hour: every rate below is rough.\n";
    }
    out += "#\n# Nodes per environment (the simulator spreads them round robin):\n";
    for e in &site.environments {
        let _ = writeln!(out, "#   {}: {}", e.name, e.nodes);
    }
    let _ = writeln!(
        out,
        "# Compiles seen: {} (mean {:.2} s, p50 {:.2} s, p95 {:.2} s, max {:.2} s).",
        samples.len(),
        mean,
        quantile(&samples, 0.5),
        quantile(&samples, 0.95),
        quantile(&samples, 1.0)
    );
    for m in &site.masters {
        let _ = write!(
            out,
            "#   master {}: {} slots, {} compiles",
            m.name,
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
        quoted(&format!("observed by {}", site.source)),
        human(DURATION),
        human(WARMUP)
    );

    // --- fleet ---------------------------------------------------------------
    let environments: Vec<String> = site.environments.iter().map(|e| quoted(&e.name)).collect();
    let _ = writeln!(
        out,
        "\n[fleet]\nnodes = {nodes}\nenvironments = [{}]",
        environments.join(", ")
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
            "# observed: {} uploads, {} changed a used fact, {} only unused facts\nused_changes_per_node_day = {}\nunused_changes_per_node_day = {}",
            f.uploads,
            f.used_changes,
            f.unused_changes,
            rate(per_node_day(f.used_changes as f64)),
            rate(per_node_day(f.unused_changes as f64))
        );
    } else if let Some(r) = &site.runs {
        let unchanged = r.total.saturating_sub(r.changed + r.failed);
        let _ = writeln!(
            out,
            "# observed: each changed run counts as a changed catalog (drift put back too: more compiles,\n# never fewer); every other run uploaded facts that changed nothing a catalog uses\nused_changes_per_node_day = {}\nunused_changes_per_node_day = {}",
            rate(per_node_day(r.changed as f64)),
            rate(per_node_day(unchanged as f64))
        );
    } else {
        out += "# assumed (the source saw no facts uploads)\nused_changes_per_node_day = 0.5\nunused_changes_per_node_day = 48\n";
    }

    // --- exports -------------------------------------------------------------
    let x = &site.exports;
    if x.exporters > 0 || x.collectors > 0 {
        let exporters = x.exporters.min(nodes_u32);
        let collectors = x.collectors.min(nodes_u32 - exporters);
        out += "\n[exports]\n";
        if collectors < x.collectors {
            let _ = writeln!(
                out,
                "# {} collectors seen, some of them exporters too: the simulator's are apart",
                x.collectors
            );
        }
        let _ = writeln!(out, "exporters = {exporters}\ncollectors = {collectors}");
        match x.changes {
            Some(c) if exporters > 0 => {
                let _ = writeln!(
                    out,
                    "# observed: {c} compiles changed their exports\nchanges_per_exporter_day = {}",
                    rate(c as f64 / f64::from(exporters) / days)
                );
            }
            _ => {
                out += "# assumed: one change per exporter a day (PuppetDB keeps no history of exports)\nchanges_per_exporter_day = 1\n";
            }
        }
    }

    // --- deploys -------------------------------------------------------------
    let mut by_env: BTreeMap<&str, Vec<&scheduler::site::ObservedDeploy>> = BTreeMap::new();
    for d in &site.deploys {
        by_env.entry(&d.environment).or_default().push(d);
    }
    for (env, list) in by_env {
        if !site.environments.iter().any(|e| e.name == env) {
            let _ = writeln!(
                out,
                "\n# {} deploys to {env}, which has no node now: left out",
                list.len()
            );
            continue;
        }
        let window = site.to - site.from;
        let every = seconds(window / list.len() as f64).max(Duration::from_secs(60));
        let shares: Vec<f64> = list
            .iter()
            .filter(|d| d.members > 0)
            .map(|d| f64::from(d.nodes.min(d.members)) / f64::from(d.members))
            .collect();
        let affects = match shares.is_empty() {
            true => 1.0,
            false => shares.iter().sum::<f64>() / shares.len() as f64,
        };
        let unbounded = list.iter().filter(|d| d.unbounded).count() as f64 / list.len() as f64;
        let _ = writeln!(
            out,
            "\n[[deploys]]\n# observed: {} deploys in the window, each moving {:.0}% of the environment on average\nat = \"{}\"\nevery = \"{}\"\nenvironment = {}\naffects = {}\nunbounded = {}",
            list.len(),
            affects * 100.0,
            human(WARMUP + Duration::from_secs(60)),
            human(every),
            quoted(env),
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
        .max()
        .unwrap_or(1)
        .max(1);
    let cores: Vec<f64> = site.masters.iter().filter_map(|m| m.cores).collect();
    out += "\n[masters]\n";
    let _ = writeln!(
        out,
        "# observed: {count} master(s), {slots} compile slots each (the largest seen)\ncount = {count}\nslots = {slots}"
    );
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
        out += "\n# observed: pcq's own scheduling settings (gate.max_concurrency comes from masters.slots)\n";
        out += &core_table(core)?;
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
            csvs.push((file, m.compile_seconds.clone()));
        }
    }
    Ok(Built { toml: out, csvs })
}

/// `[queue.core]` and its subtables, from the daemon's own settings.
fn core_table(core: &CoreConfig) -> Result<String, String> {
    let mut queue = toml::Table::new();
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

fn file_safe(name: &str) -> String {
    name.chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                true => c,
                false => '_',
            },
        )
        .collect()
}

fn stamp(epoch: f64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + seconds(epoch)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    nodes: 100,
                },
            ],
            masters: vec![
                ObservedMaster {
                    name: "m1".into(),
                    slots: 3,
                    cores: Some(4.0),
                    compile_seconds: vec![1.0, 2.0, 3.0],
                    average_borrow_seconds: None,
                    average_wait_seconds: None,
                },
                ObservedMaster {
                    name: "m/2".into(),
                    slots: 2,
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
                    unbounded: false,
                },
                ObservedDeploy {
                    at: 1_000_200.0,
                    environment: "production".into(),
                    nodes: 300,
                    members: 300,
                    unbounded: true,
                },
                ObservedDeploy {
                    at: 1_000_300.0,
                    environment: "gone".into(),
                    nodes: 1,
                    members: 1,
                    unbounded: false,
                },
            ],
            core: Some(CoreConfig::default()),
        }
    }

    fn parsed(built: &Built) -> Scenario {
        let dir = tempfile::tempdir().expect("tmp");
        for (file, rows) in &built.csvs {
            let text: String = rows.iter().map(|s| format!("{s}\n")).collect();
            std::fs::write(dir.path().join(file), format!("seconds\n{text}")).expect("csv");
        }
        let path = dir.path().join("s.toml");
        Scenario::parse(&built.toml, &path, dir.path())
            .unwrap_or_else(|e| panic!("{e}\n{}", built.toml))
    }

    #[test]
    fn a_pcq_site_becomes_a_scenario_with_its_own_figures() {
        let built = scenario(&site(), "observed").expect("scenario");
        let s = parsed(&built);
        assert_eq!(s.fleet.nodes, 400);
        assert_eq!(s.fleet.environments, ["production", "dev"]);
        assert_eq!((s.masters.count, s.masters.slots), (2, 3));
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
        assert!((d.affects - 0.55).abs() < 1e-9 && (d.unbounded - 0.5).abs() < 1e-9);
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
        assert!((parsed.facts.used_changes_per_node_day - 0.25).abs() < 1e-9);
        assert_eq!(parsed.agents.interval, Some(Duration::from_secs(1800)));
        assert_eq!(parsed.agents.splay, Duration::from_secs(900));
        // cores not known for every master: one per slot, said to be assumed
        assert!((parsed.masters.cores - 3.0).abs() < 1e-9);
        assert!(built.toml.contains("# assumed: one core per slot"));
        assert!(built
            .toml
            .contains("# assumed: one change per exporter a day"));
        assert!(built.toml.contains("03:00-03:59 UTC (20)"));
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
