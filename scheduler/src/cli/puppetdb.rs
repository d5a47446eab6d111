//! `pcq site --from-puppetdb`: what a site that does not run pcq yet was
//! seen to do, read from PuppetDB.
//!
//! Every site with PuppetDB keeps its agents' reports (14 days by
//! default). From them: the nodes and their environments, how often each
//! node runs and how the runs spread over the interval, what an agent
//! waited for its catalog (the `config_retrieval` time of each run, per
//! master: the report's `producer`), how many runs changed nothing, and
//! when runs failed. From the resources: who exports and who collects
//! (a node holding a non-exported copy of an exported resource collected
//! it). The JRuby pools come from each Puppet Server's status API.
//!
//! The reading ([`summarize`]) is apart from the fetching, so it is tested
//! on rows without a PuppetDB.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::site::{
    push_newest, EnvironmentCount, ObservedAgents, ObservedExports, ObservedMaster, Runs, Site,
    MAX_SAMPLES,
};

/// Reports fetched per request.
const PAGE: usize = 5_000;

/// A node as `/pdb/query/v4/nodes` lists it (its environments only).
#[derive(Debug, Deserialize)]
pub struct NodeRow {
    /// Environment of its last catalog.
    #[serde(default)]
    pub catalog_environment: Option<String>,
    /// Environment of its last facts.
    #[serde(default)]
    pub facts_environment: Option<String>,
    /// Environment of its last report.
    #[serde(default)]
    pub report_environment: Option<String>,
}

/// A report, with the fields read.
#[derive(Debug, Deserialize)]
pub struct ReportRow {
    /// The node.
    pub certname: String,
    /// When the run started (ISO 8601).
    pub start_time: String,
    /// `changed`, `unchanged` or `failed`.
    pub status: Option<String>,
    /// A noop run.
    #[serde(default)]
    pub noop: Option<bool>,
    /// The Puppet Server that sent it.
    #[serde(default)]
    pub producer: Option<String>,
    /// `{"data": [{"category", "name", "value"}], "href"}`.
    #[serde(default)]
    pub metrics: Value,
}

/// Seconds since the epoch of an ISO 8601 time as PuppetDB writes it.
pub fn epoch(text: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(text))
        .ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The `config_retrieval` seconds of a report's metrics.
fn config_retrieval(metrics: &Value) -> Option<f64> {
    let data = metrics.get("data").unwrap_or(metrics).as_array()?;
    data.iter()
        .find(|m| m["category"] == "time" && m["name"] == "config_retrieval")
        .and_then(|m| m["value"].as_f64())
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// The nodes' run interval (the median of each node's median gap) and the
/// spread of their phases in it (the interval less the largest gap
/// between two phases on the circle).
fn agents_of(runs: &HashMap<String, Vec<f64>>) -> Option<ObservedAgents> {
    let mut gaps: Vec<f64> = runs
        .values()
        .filter_map(|starts| {
            let mut gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
            median(&mut gaps)
        })
        .filter(|g| *g > 0.0)
        .collect();
    let interval = median(&mut gaps)?;
    let mut phases: Vec<f64> = runs
        .values()
        .filter_map(|s| s.last())
        .map(|t| t.rem_euclid(interval))
        .collect();
    phases.sort_by(f64::total_cmp);
    let largest_gap = match phases.len() {
        0 | 1 => interval,
        n => {
            let inner = phases.windows(2).map(|w| w[1] - w[0]);
            inner
                .chain([phases[0] + interval - phases[n - 1]])
                .fold(0.0, f64::max)
        }
    };
    Some(ObservedAgents {
        interval_seconds: interval,
        splay_seconds: (interval - largest_gap).max(0.0),
    })
}

/// Pool sizes and borrow times per master name.
pub type Pools = BTreeMap<String, crate::daemon::backend::puppetserver::JrubyPool>;

/// What the reports say, summed up one page at a time: memory stays at
/// one start time per report (8 bytes, for each node's run interval) and
/// [`MAX_SAMPLES`] compile times per master, not the reports themselves.
#[derive(Debug, Default)]
pub struct Tally {
    runs: Runs,
    starts: HashMap<String, Vec<f64>>,
    samples: BTreeMap<String, VecDeque<f64>>,
    from: f64,
    to: f64,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            runs: Runs {
                failed_by_hour: vec![0; 24],
                ..Runs::default()
            },
            from: f64::INFINITY,
            to: f64::NEG_INFINITY,
            ..Tally::default()
        }
    }

    /// Counts one report (in start order, for the newest samples to win).
    pub fn add(&mut self, report: &ReportRow) -> Result<(), String> {
        let Some(t) = epoch(&report.start_time) else {
            return Err(format!(
                "report of {}: start_time {:?} is not a time",
                report.certname, report.start_time
            ));
        };
        self.from = self.from.min(t);
        self.to = self.to.max(t);
        self.starts
            .entry(report.certname.clone())
            .or_default()
            .push(t);
        let r = &mut self.runs;
        r.total += 1;
        match (report.status.as_deref(), report.noop) {
            // a noop run compiled a catalog and changed nothing
            (Some("changed"), Some(true)) | (Some("unchanged"), _) => r.unchanged += 1,
            (Some("changed"), _) => r.changed += 1,
            _ => {
                r.failed += 1;
                let hour = (t.rem_euclid(86_400.0) / 3_600.0) as usize;
                r.failed_by_hour[hour.min(23)] += 1;
            }
        }
        if let Some(s) = config_retrieval(&report.metrics) {
            let producer = report.producer.clone().unwrap_or_else(|| "unknown".into());
            push_newest(self.samples.entry(producer).or_default(), s, MAX_SAMPLES);
        }
        Ok(())
    }
}

/// What the rows say, as a [`Site`]. Masters are the reports' producers,
/// each with the pool of the Puppet Server of its name; a producer no
/// pool was read for is an error (its size would be a guess), unless
/// exactly one pool was read and the reports name one producer.
pub fn summarize(
    source: &str,
    nodes: &[NodeRow],
    tally: Tally,
    exported: &[String],
    collecting: &[String],
    pools: &Pools,
) -> Result<Site, String> {
    if pools.is_empty() {
        return Err("no Puppet Server's JRuby pool was read".into());
    }
    let environments = EnvironmentCount::tally(nodes.iter().map(|n| {
        [
            &n.catalog_environment,
            &n.facts_environment,
            &n.report_environment,
        ]
        .into_iter()
        .flatten()
        .next()
        .cloned()
        .unwrap_or_else(|| "production".into())
    }));

    let Tally {
        runs,
        mut starts,
        samples,
        from,
        mut to,
    } = tally;
    if runs.total == 0 {
        return Err("no report in the window: widen --window, or check --certnames".into());
    }
    for s in starts.values_mut() {
        s.sort_by(f64::total_cmp);
    }
    let agents = agents_of(&starts);
    if let Some(a) = &agents {
        // the window runs to one interval after the last run started: the
        // runs in it are every run of that time
        to += a.interval_seconds;
    }
    if to <= from {
        return Err(
            "every report started at the same time: no window to measure rates over (one run of each node?); widen --window"
                .into(),
        );
    }
    let only = (pools.len() == 1 && samples.len() <= 1)
        .then(|| pools.values().next())
        .flatten();
    let mut masters = Vec::new();
    for (name, s) in samples {
        let Some(pool) = pools.get(&name).or(only) else {
            return Err(format!(
                "reports name the Puppet Server {name:?}, and no --puppetserver of that host name was given (its JRuby pool would be a guess): give --puppetserver https://{name}:8140"
            ));
        };
        masters.push(ObservedMaster {
            name,
            slots: pool.size,
            jrubies: Some(pool.size),
            cores: None,
            compile_seconds: s.into_iter().collect(),
            average_borrow_seconds: pool.average_borrow_seconds,
            average_wait_seconds: pool.average_wait_seconds,
        });
    }
    if masters.is_empty() {
        return Err(
            "no report has a config_retrieval time: nothing says how long a compile takes".into(),
        );
    }
    let exporters: BTreeSet<&String> = exported.iter().collect();
    let collectors: BTreeSet<&String> = collecting.iter().collect();
    Ok(Site {
        source: source.to_string(),
        from,
        to,
        environments,
        masters,
        agents,
        runs: Some(runs),
        facts: None,
        exports: ObservedExports {
            exporters: u32::try_from(exporters.len()).unwrap_or(u32::MAX),
            collectors: u32::try_from(collectors.len()).unwrap_or(u32::MAX),
            changes: None,
        },
        deploys: Vec::new(),
        core: None,
    })
}

/// Reads PuppetDB at `url` (`http://127.0.0.1:8080` on its host, or
/// `https://puppetdb:8081` with `client`'s certificate): the active
/// nodes, the agents' reports that started in the last `window` (tallied
/// a page at a time), the nodes exporting resources and the nodes holding
/// a collected copy; with `certnames`, of the nodes whose certname
/// matches that regular expression only.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    window: Duration,
    certnames: Option<&str>,
) -> Result<(Vec<NodeRow>, Tally, Vec<String>, Vec<String>), String> {
    let base = url.trim_end_matches('/');
    // every query narrowed to the certnames asked for (a regular
    // expression, as PuppetDB's ~ operator takes it)
    let only = |q: Value| match certnames {
        Some(re) => json!(["and", ["~", "certname", re], q]),
        None => q,
    };
    let nodes: Vec<NodeRow> = query(
        client,
        base,
        "nodes",
        &only(json!(["=", "node_state", "active"])),
        false,
    )
    .await?;
    // a fixed end, and pages that go on from the last start seen: reports
    // arriving or expiring meanwhile shift nothing
    let now = SystemTime::now();
    let since = humantime::format_rfc3339_millis(now.checked_sub(window).unwrap_or(UNIX_EPOCH));
    let until = humantime::format_rfc3339_millis(now).to_string();
    let mut tally = Tally::new();
    let mut lower = since.to_string();
    let mut seen_at_lower: HashSet<String> = HashSet::new();
    loop {
        let q = json!([
            "extract",
            [
                "certname",
                "start_time",
                "status",
                "noop",
                "producer",
                "metrics"
            ],
            only(json!([
                "and",
                [">=", "start_time", lower],
                ["<", "start_time", until],
                ["=", "type", "agent"]
            ]))
        ]);
        let page: Vec<ReportRow> = query(client, base, "reports", &q, true).await?;
        let mut added = 0;
        for row in &page {
            if row.start_time == lower && seen_at_lower.contains(&row.certname) {
                continue;
            }
            tally.add(row)?;
            added += 1;
        }
        let Some(last) = page.last() else { break };
        if page.len() < PAGE {
            break;
        }
        if added == 0 {
            return Err(format!(
                "more than {PAGE} reports started at {}: PuppetDB cannot page past them",
                last.start_time
            ));
        }
        if last.start_time != lower {
            seen_at_lower.clear();
            lower = last.start_time.clone();
        }
        seen_at_lower.extend(
            page.iter()
                .filter(|r| r.start_time == lower)
                .map(|r| r.certname.clone()),
        );
    }
    let exported_q = only(json!(["=", "exported", true]));
    let distinct = |q: Value| json!(["extract", ["certname"], q, ["group_by", "certname"]]);
    let exported: Vec<Value> = query(
        client,
        base,
        "resources",
        &distinct(exported_q.clone()),
        false,
    )
    .await?;
    let collecting: Vec<Value> = query(
        client,
        base,
        "resources",
        &distinct(only(json!([
            "and",
            ["=", "exported", false],
            [
                "in",
                ["type", "title"],
                [
                    "extract",
                    ["type", "title"],
                    ["select_resources", exported_q]
                ]
            ]
        ]))),
        false,
    )
    .await?;
    let names = |rows: Vec<Value>| -> Vec<String> {
        rows.into_iter()
            .filter_map(|r| r["certname"].as_str().map(String::from))
            .collect()
    };
    Ok((nodes, tally, names(exported), names(collecting)))
}

/// Most bytes of one answer of PuppetDB read.
const MAX_ANSWER: usize = 256 << 20;

/// One query of PuppetDB's v4 API; `paged`: the first [`PAGE`] rows in
/// start order.
async fn query<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    base: &str,
    endpoint: &str,
    q: &Value,
    paged: bool,
) -> Result<Vec<T>, String> {
    let url = format!("{base}/pdb/query/v4/{endpoint}");
    let mut params = vec![("query", q.to_string())];
    if paged {
        params.push(("limit", PAGE.to_string()));
        params.push((
            "order_by",
            json!([{"field": "start_time"}, {"field": "certname"}]).to_string(),
        ));
    }
    let full = reqwest::Url::parse_with_params(&url, &params).map_err(|e| format!("{url}: {e}"))?;
    let mut response = client
        .get(full)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!(
                "{url}: an answer over {} MiB; narrow it with --certnames or --window",
                MAX_ANSWER >> 20
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{url}: {status}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not what PuppetDB answers: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::backend::puppetserver::JrubyPool;

    fn report(certname: &str, at: &str, status: &str, retrieval: f64, producer: &str) -> ReportRow {
        ReportRow {
            certname: certname.into(),
            start_time: at.into(),
            status: Some(status.into()),
            noop: Some(false),
            producer: Some(producer.into()),
            metrics: json!({"data": [
                {"category": "time", "name": "total", "value": 99.0},
                {"category": "time", "name": "config_retrieval", "value": retrieval},
            ], "href": "/pdb/query/v4/reports/x/metrics"}),
        }
    }

    fn pools2() -> Pools {
        let mut p = pools();
        p.insert(
            "m2".into(),
            JrubyPool {
                size: 2,
                free: None,
                average_borrow_seconds: None,
                average_wait_seconds: None,
            },
        );
        p
    }

    fn tally(reports: &[ReportRow]) -> Result<Tally, String> {
        let mut t = Tally::new();
        for r in reports {
            t.add(r)?;
        }
        Ok(t)
    }

    fn pools() -> Pools {
        let mut p = Pools::new();
        p.insert(
            "m1".into(),
            JrubyPool {
                size: 4,
                free: Some(4),
                average_borrow_seconds: Some(2.0),
                average_wait_seconds: Some(0.5),
            },
        );
        p
    }

    #[test]
    fn reports_give_runs_intervals_and_compile_times_per_master() {
        let node = |env: Option<&str>| NodeRow {
            catalog_environment: env.map(String::from),
            facts_environment: Some("production".into()),
            report_environment: None,
        };
        let nodes = [node(Some("dev")), node(None), node(None)];
        let reports = [
            report("a", "2026-12-04T10:00:00.000Z", "changed", 3.0, "m1"),
            report("a", "2026-12-04T10:30:00.000Z", "unchanged", 1.0, "m1"),
            report("a", "2026-12-04T11:00:00.000Z", "unchanged", 1.0, "m1"),
            report("b", "2026-12-04T10:15:00.000Z", "unchanged", 2.0, "m2"),
            report("b", "2026-12-04T10:45:00.000Z", "failed", 2.0, "m2"),
        ];
        let site = summarize(
            "pdb",
            &nodes,
            tally(&reports).expect("t"),
            &["a".into(), "a".into()],
            &["b".into()],
            &pools2(),
        )
        .expect("site");
        assert_eq!(site.nodes(), 3);
        assert_eq!(
            site.environments,
            [
                EnvironmentCount {
                    name: "production".into(),
                    nodes: 2
                },
                EnvironmentCount {
                    name: "dev".into(),
                    nodes: 1
                },
            ]
        );
        let r = site.runs.as_ref().expect("runs");
        assert_eq!((r.total, r.changed, r.unchanged, r.failed), (5, 1, 3, 1));
        assert_eq!(r.failed_by_hour[10], 1);
        let agents = site.agents.as_ref().expect("agents");
        assert_eq!(agents.interval_seconds, 1800.0);
        // last phases 0 (a at 11:00) and 900 (b at 10:45): largest gap 900
        assert_eq!(agents.splay_seconds, 900.0);
        let names: Vec<_> = site
            .masters
            .iter()
            .map(|m| (m.name.as_str(), m.slots))
            .collect();
        assert_eq!(names, [("m1", 4), ("m2", 2)]);
        assert_eq!(site.masters[0].compile_seconds, [3.0, 1.0, 1.0]);
        assert_eq!((site.exports.exporters, site.exports.collectors), (1, 1));
        // from the first run to an interval after the last
        assert_eq!(site.to - site.from, 3600.0 + 1800.0);
        site.check().expect("a valid site");
    }

    #[test]
    fn bad_rows_and_missing_pools_are_refused() {
        let bad = [report("a", "yesterday", "changed", 1.0, "m1")];
        assert!(tally(&bad).unwrap_err().contains("not a time"));
        let two = [
            report("a", "2026-12-04T10:00:00Z", "changed", 1.0, "m1"),
            report("a", "2026-12-04T10:30:00Z", "changed", 1.0, "m9"),
        ];
        let no_pools = summarize("pdb", &[], tally(&two).expect("t"), &[], &[], &Pools::new());
        assert!(no_pools.unwrap_err().contains("JRuby"));
        // a producer no pool was read for: its size would be a guess
        let unknown = summarize("pdb", &[], tally(&two).expect("t"), &[], &[], &pools());
        assert!(unknown.unwrap_err().contains("\"m9\""));
        let none = summarize("pdb", &[], Tally::new(), &[], &[], &pools());
        assert!(none.unwrap_err().contains("no report"));
        let one = [report("a", "2026-12-04T10:00:00Z", "changed", 1.0, "m1")];
        let once = summarize("pdb", &[], tally(&one).expect("t"), &[], &[], &pools());
        assert!(once.unwrap_err().contains("same time"));
        // one pool and one producer of another name (an IP address given):
        // that pool
        let mut other = pools();
        let pool = other.remove("m1").expect("m1");
        other.insert("10.0.0.1".into(), pool);
        let site = summarize("pdb", &[], tally(&two[..1]).expect("t"), &[], &[], &other);
        assert!(site.unwrap_err().contains("same time"));
        assert_eq!(
            epoch("2026-12-04T10:00:00Z"),
            epoch("2026-12-04T10:00:00.000Z")
        );
        assert!(config_retrieval(&json!({"data": "x"})).is_none());
    }

    #[test]
    fn noop_runs_count_as_unchanged_and_samples_keep_the_newest() {
        let mut noop = report("a", "2026-12-04T10:00:00Z", "changed", 5.0, "m1");
        noop.noop = Some(true);
        let mut t = tally(&[noop]).expect("t");
        for i in 0..MAX_SAMPLES {
            let at = format!("2026-12-04T11:{:02}:{:02}Z", (i / 60) % 60, i % 60);
            t.add(&report("b", &at, "unchanged", 1.0, "m1"))
                .expect("add");
        }
        assert_eq!(
            (t.runs.unchanged, t.runs.changed),
            (MAX_SAMPLES as u64 + 1, 0)
        );
        let kept = &t.samples["m1"];
        assert_eq!(kept.len(), MAX_SAMPLES);
        assert!(kept.iter().all(|s| *s == 1.0), "the oldest went first");
    }
}
