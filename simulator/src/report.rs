//! The capacity report `pcq-sim plan` writes: `report.md` (recommendation
//! first), SVG plots, `points.csv` (every point with its intervals) and
//! `runs.csv` (every replication).
//!
//! The output depends only on the scenario and its seeds, never on the
//! machine or the clock, so CI can regenerate it and `git diff` shows what a
//! change to the scheduling core did to the advice.

use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::{Policy, RunResult};
use crate::plan::{Estimate, PlanResult, Point};
use crate::plot::{self, Axes, Line, Marker};
use crate::scenario::{Herd, Scenario};

/// Writes every file of the report into `dir` (created if missing).
pub fn write(dir: &Path, scenario: &Scenario, plan: &PlanResult) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let plots = write_plots(dir, scenario, plan);
    std::fs::write(dir.join("report.md"), markdown(scenario, plan, &plots))?;
    write_points_csv(&dir.join("points.csv"), plan)?;
    write_runs_csv(&dir.join("runs.csv"), plan)?;
    Ok(())
}

/// A duration in seconds, in the unit that reads best.
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        "∞".into()
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

fn human_est(e: &Estimate) -> String {
    if e.half_width.is_finite() && e.half_width > 0.0 {
        format!("{} ± {}", human(e.mean), human(e.half_width))
    } else {
        human(e.mean)
    }
}

fn pct_est(e: &Estimate) -> String {
    format!("{:.1}% ± {:.1}", e.mean * 100.0, e.half_width * 100.0)
}

fn masters_text(m: Option<u32>, tried: u32) -> String {
    match m {
        Some(1) => "**1 master**".into(),
        Some(m) => format!("**{m} masters**"),
        None => format!("none up to {tried} masters"),
    }
}

fn fleet_sizes(plan: &PlanResult) -> Vec<u32> {
    let mut sizes: Vec<u32> = plan.points.iter().map(|p| p.nodes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

fn policies(plan: &PlanResult) -> Vec<Policy> {
    Policy::BOTH
        .into_iter()
        .filter(|p| plan.points.iter().any(|x| x.policy == *p))
        .collect()
}

fn markdown(s: &Scenario, plan: &PlanResult, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let max_tried = plan.points.iter().map(|p| p.masters).max().unwrap_or(0);
    let _ = writeln!(md, "# Capacity report: {}\n", s.name);
    if !s.description.is_empty() {
        let _ = writeln!(md, "{}\n", s.description);
    }
    let _ = writeln!(md, "## Recommendation\n");
    let pols = policies(plan);
    let _ = write!(md, "| fleet |");
    for p in &pols {
        let _ = write!(md, " {} |", policy_title(*p));
    }
    let _ = write!(md, "\n|---|");
    for _ in &pols {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for nodes in fleet_sizes(plan) {
        let _ = write!(md, "| {nodes} nodes |");
        for p in &pols {
            let _ = write!(
                md,
                " {} |",
                masters_text(plan.recommended(*p, nodes), max_tried)
            );
        }
        md.push('\n');
    }
    md.push('\n');
    for nodes in fleet_sizes(plan) {
        md.push_str(&verdict(s, plan, nodes));
    }
    let _ = writeln!(
        md,
        "\nA master count meets an SLO when the upper end of the metric's 95% confidence interval \
         (Student t over {} replications with different seeds) is within the target, so the \
         advice errs towards one master too many. The SLOs of this scenario:\n",
        plan.replications
    );
    md.push_str(&slo_list(s));

    let _ = writeln!(md, "\n## The scenario\n");
    md.push_str(&scenario_summary(s));

    for nodes in fleet_sizes(plan) {
        for p in &pols {
            let _ = writeln!(md, "\n## {} — {} nodes\n", policy_title(*p), nodes);
            md.push_str(&point_table(plan, *p, nodes));
        }
    }

    let _ = writeln!(md, "\n## Plots\n");
    for (file, caption) in plots {
        let _ = writeln!(md, "**{caption}**\n\n![{caption}]({file})\n");
    }
    let _ = writeln!(
        md,
        "## Files\n\n- `points.csv`: every point (policy, nodes, masters) with means and 95% \
         half-widths.\n- `runs.csv`: every replication.\n\nRegenerate with `pcq-sim plan \
         scenarios/{}.toml --out reports/{}` (CI does, with `--check`).",
        s.name, s.name
    );
    md
}

fn policy_title(p: Policy) -> &'static str {
    match p {
        Policy::Queue => "pcq queue",
        Policy::OnDemand => "Puppet on demand",
    }
}

/// One paragraph comparing the policies at their recommended counts.
fn verdict(s: &Scenario, plan: &PlanResult, nodes: u32) -> String {
    let mut out = String::new();
    let q = plan.recommended(Policy::Queue, nodes);
    let o = plan.recommended(Policy::OnDemand, nodes);
    let _ = write!(out, "For {nodes} nodes: ");
    match (q, o) {
        (Some(q), Some(o)) if q < o => {
            let _ = write!(
                out,
                "the queue needs {} fewer master(s) than on-demand compiles ({q} vs {o}). ",
                o - q
            );
        }
        (Some(q), Some(o)) if q == o => {
            let _ = write!(out, "both need {q} master(s). ");
        }
        (Some(q), Some(o)) => {
            let _ = write!(
                out,
                "on-demand compiles need {o} master(s), the queue {q}. "
            );
        }
        (Some(q), None) => {
            let _ = write!(out, "the queue meets every SLO with {q} master(s); on-demand compiles meet them with none of the counts tried. ");
        }
        (None, Some(o)) => {
            let _ = write!(out, "on-demand compiles meet every SLO with {o} master(s); the queue with none of the counts tried. ");
        }
        (None, None) => {
            let _ = write!(
                out,
                "no master count tried meets every SLO; try larger counts. "
            );
        }
    }
    // each policy at the count recommended for it (or the scenario's)
    let pq = plan.point(Policy::Queue, nodes, q.unwrap_or(s.masters.count));
    let po = plan.point(Policy::OnDemand, nodes, o.unwrap_or(s.masters.count));
    if let (Some(pq), Some(po)) = (pq, po) {
        let _ = write!(
            out,
            "With {} master(s) the queue gives change-to-applied p95 {}, {:.2}% failed agent runs \
             and {:.0} s of node CPU per node per day; on demand with {} master(s): {}, {:.2}% and {:.0} s. \
             The queue compiles {:.0} catalogs an hour, on demand {:.0}.",
            pq.masters,
            human(pq.stats.staleness_applied_p95.mean),
            pq.stats.failed_runs.mean * 100.0,
            pq.stats.node_cpu_per_node_day.mean,
            po.masters,
            human(po.stats.staleness_applied_p95.mean),
            po.stats.failed_runs.mean * 100.0,
            po.stats.node_cpu_per_node_day.mean,
            pq.stats.compiles_per_hour.mean,
            po.stats.compiles_per_hour.mean,
        );
    }
    if let Some(f) = plan.filtering.iter().find(|f| f.nodes == nodes) {
        let saved = f.without.mean - f.with.mean;
        let _ = write!(
            out,
            " {:.1}% of fact changes touch a fact some catalog reads; filtering out the rest \
             (pcq's analysis of the code), the queue with {} master(s) compiles {:.0} catalogs an \
             hour, against {:.0} when any fact change recompiles: {:.0} compiles an hour saved \
             ({:.0}%), change-to-applied p95 {} without filtering.",
            f.used_share.mean * 100.0,
            f.masters,
            f.with.mean,
            f.without.mean,
            saved,
            100.0 * saved / f.without.mean.max(1e-9),
            human(f.applied_p95_without.mean),
        );
    }
    out.push_str("\n\n");
    out
}

fn slo_list(s: &Scenario) -> String {
    let mut out = String::new();
    let slo = &s.slo;
    if let Some(d) = slo.staleness_applied_p95 {
        let _ = writeln!(
            out,
            "- change -> applied on the node, p95 <= {}",
            human(d.as_secs_f64())
        );
    }
    if let Some(d) = slo.staleness_compiled_p95 {
        let _ = writeln!(
            out,
            "- change -> catalog compiled, p95 <= {}",
            human(d.as_secs_f64())
        );
    }
    if let Some(f) = slo.failed_runs {
        let _ = writeln!(out, "- failed agent runs <= {:.2}%", f * 100.0);
    }
    if let Some(d) = slo.oldest_age {
        let _ = writeln!(out, "- oldest queued job <= {}", human(d.as_secs_f64()));
    }
    if out.is_empty() {
        out.push_str("- none (every count meets them)\n");
    }
    out
}

fn scenario_summary(s: &Scenario) -> String {
    let mut out = String::new();
    let secs = |d: std::time::Duration| human(d.as_secs_f64());
    let _ = writeln!(
        out,
        "- {} nodes in {} environment(s); {} simulated, the first {} not counted",
        s.fleet.nodes,
        s.fleet.environments.len(),
        secs(s.duration),
        secs(s.warmup)
    );
    match s.agents.interval {
        Some(i) => {
            let _ = writeln!(
                out,
                "- agents every {} (splay {}); pcq sync every {}",
                secs(i),
                secs(s.agents.splay),
                s.sync_interval().map_or("never".into(), secs)
            );
        }
        None => {
            let _ = writeln!(out, "- no agent runs");
        }
    }
    let _ = writeln!(
        out,
        "- compiles: {}, mean {:.1} s",
        s.compile.sampler_name(),
        s.compile.mean_secs()
    );
    let _ = writeln!(
        out,
        "- facts: {} used and {} unused changes per node per day",
        s.facts.used_changes_per_node_day, s.facts.unused_changes_per_node_day
    );
    if s.external.changes_per_node_day > 0.0 {
        let _ = writeln!(
            out,
            "- external changes (no bump; the next compile picks them up): {} per node per day",
            s.external.changes_per_node_day
        );
    }
    if s.exports.exporters > 0 {
        let _ = writeln!(
            out,
            "- exports: {} exporters, {} collectors, {} changes per exporter per day",
            s.exports.exporters, s.exports.collectors, s.exports.changes_per_exporter_day
        );
    }
    for d in &s.deploys {
        let _ = writeln!(
            out,
            "- deploy to {} at {}{}, changing {:.0}% of its catalogs",
            d.environment,
            secs(d.at),
            d.every
                .map_or(String::new(), |e| format!(" and every {}", secs(e))),
            d.affects * 100.0
        );
    }
    for h in &s.herds {
        let _ = writeln!(out, "- herd at {}: {}", secs(h.at()), h.label());
    }
    let _ = writeln!(
        out,
        "- masters: {} compile slots, {} cores, background load {}; queue cycle pacing {}",
        s.masters.slots,
        s.masters.cores,
        s.masters.background_load,
        s.queue.core.min_cycle_interval.map_or("off".into(), secs)
    );
    out
}

fn point_table(plan: &PlanResult, policy: Policy, nodes: u32) -> String {
    let mut out = String::from(
        "| masters | applied p95 | compiled p95 | queue wait p95 | failed runs | oldest age | utilization | compiles/h | wasted | node CPU s/day | SLOs |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in plan
        .points
        .iter()
        .filter(|p| p.policy == policy && p.nodes == nodes)
    {
        let st = &p.stats;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0}% | {:.1} | {} |",
            p.masters,
            human_est(&st.staleness_applied_p95),
            human_est(&st.staleness_compiled_p95),
            human_est(&st.queue_wait_p95),
            pct_est(&st.failed_runs),
            human_est(&st.oldest_age_max),
            pct_est(&st.utilization),
            st.compiles_per_hour.mean,
            st.wasted.mean * 100.0,
            st.node_cpu_per_node_day.mean,
            slo_marks(p),
        );
    }
    out
}

fn slo_marks(p: &Point) -> String {
    if p.slos.is_empty() {
        return "-".into();
    }
    if p.meets_all() {
        return "all met".into();
    }
    let missed: Vec<&str> = p.slos.iter().filter(|c| !c.met).map(|c| c.slo).collect();
    format!("missed: {}", missed.join(", "))
}

/// Draws the plots; returns (file name, caption) of each drawn.
fn write_plots(dir: &Path, s: &Scenario, plan: &PlanResult) -> Vec<(String, String)> {
    let mut drawn = Vec::new();
    let nodes = fleet_sizes(plan).last().copied().unwrap_or(s.fleet.nodes);
    let pols = policies(plan);
    let mut keep = |file: &str, caption: String, result: Result<(), Box<dyn std::error::Error>>| {
        match result {
            Ok(()) => drawn.push((file.to_string(), caption)),
            Err(e) => eprintln!("pcq-sim: plot {file}: {e}"),
        }
    };

    // staleness percentiles against masters
    let mut lines = Vec::new();
    for (pi, p) in pols.iter().enumerate() {
        let pts = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
            plan.points
                .iter()
                .filter(|x| x.policy == *p && x.nodes == nodes)
                .map(|x| (f64::from(x.masters), f(x) / 60.0))
                .collect()
        };
        for (k, (name, f)) in [
            (
                "p50",
                &(|x: &Point| x.stats.staleness_applied_p50.mean) as &dyn Fn(&Point) -> f64,
            ),
            ("p95", &|x: &Point| x.stats.staleness_applied_p95.mean),
            ("p99", &|x: &Point| x.stats.staleness_applied_p99.mean),
        ]
        .into_iter()
        .enumerate()
        {
            lines.push(Line {
                label: format!("{} {name}", p.name()),
                points: pts(f),
                dashed: *p == Policy::OnDemand,
                color: k + 3 * pi,
            });
        }
    }
    keep(
        "staleness.svg",
        format!("Change -> applied on the node, by master count ({nodes} nodes)"),
        plot::lines(
            &dir.join("staleness.svg"),
            &Axes {
                title: "staleness (change -> applied)",
                x: "masters",
                y: "minutes (log)",
                log_y: true,
                whole_x: true,
            },
            &lines,
            &[],
        ),
    );

    // utilization against masters
    let lines: Vec<Line> = pols
        .iter()
        .enumerate()
        .map(|(i, p)| Line {
            label: p.name().into(),
            points: plan
                .points
                .iter()
                .filter(|x| x.policy == *p && x.nodes == nodes)
                .map(|x| (f64::from(x.masters), x.stats.utilization.mean * 100.0))
                .collect(),
            dashed: *p == Policy::OnDemand,
            color: i,
        })
        .collect();
    keep(
        "utilization.svg",
        format!("Compile slots busy, by master count ({nodes} nodes)"),
        plot::lines(
            &dir.join("utilization.svg"),
            &Axes {
                title: "master utilization",
                x: "masters",
                y: "% of compile slots busy",
                log_y: false,
                whole_x: true,
            },
            &lines,
            &[],
        ),
    );

    // oldest age over time, each policy at the count recommended for it
    let count = |p: Policy| plan.recommended(p, nodes).unwrap_or(s.masters.count);
    let series = |p: Policy, from: f64, to: f64| -> Option<Line> {
        let at = count(p);
        let run: &RunResult = plan.point(p, nodes, at)?.runs.first()?;
        Some(Line {
            label: format!("{} ({at} masters)", p.name()),
            points: run
                .series
                .iter()
                .filter(|pt| pt.t >= from && pt.t <= to)
                .map(|pt| (pt.t / 3600.0, pt.oldest_age / 60.0))
                .collect(),
            dashed: p == Policy::OnDemand,
            color: if p == Policy::Queue { 0 } else { 1 },
        })
    };
    let markers: Vec<Marker> = s
        .herds
        .iter()
        .map(|h| Marker {
            x: h.at().as_secs_f64() / 3600.0,
            label: h.label(),
        })
        .collect();
    let lines: Vec<Line> = pols
        .iter()
        .filter_map(|p| series(*p, 0.0, f64::MAX))
        .collect();
    keep(
        "oldest_age.svg",
        "Oldest queued job over time, each policy at its recommended master count (first replication)".to_string(),
        plot::lines(
            &dir.join("oldest_age.svg"),
            &Axes {
                title: "oldest queued job",
                x: "hours",
                y: "minutes",
                log_y: false,
                whole_x: false,
            },
            &lines,
            &markers,
        ),
    );

    // each herd's response
    for (i, h) in s.herds.iter().enumerate() {
        let start = h.at().as_secs_f64();
        let span = match h {
            Herd::NewCerts { window, .. } => window.as_secs_f64(),
            Herd::MasterOutage { duration, .. } => duration.as_secs_f64(),
            Herd::SynchronizedCron { .. } => 0.0,
        };
        let (from, to) = ((start - 900.0).max(0.0), start + span + 2.0 * 3600.0);
        let lines: Vec<Line> = pols.iter().filter_map(|p| series(*p, from, to)).collect();
        let file = format!("herd-{}.svg", i + 1);
        let marker = Marker {
            x: start / 3600.0,
            label: h.label(),
        };
        keep(
            &file,
            format!(
                "Response to herd {}: {} (oldest queued job, each policy at its recommended master count)",
                i + 1,
                h.label()
            ),
            plot::lines(
                &dir.join(&file),
                &Axes {
                    title: &format!("herd {}: {}", i + 1, h.label()),
                    x: "hours",
                    y: "oldest queued job, minutes",
                    log_y: false,
                    whole_x: false,
                },
                &lines,
                std::slice::from_ref(&marker),
            ),
        );
    }
    drawn
}

fn write_points_csv(path: &Path, plan: &PlanResult) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    let metrics = [
        "staleness_applied_p50",
        "staleness_applied_p95",
        "staleness_applied_p99",
        "staleness_compiled_p95",
        "queue_wait_p95",
        "failed_runs",
        "oldest_age_max",
        "utilization",
        "compiles_per_hour",
        "wasted",
        "node_cpu_per_node_day",
    ];
    let mut header = vec![
        "policy".to_string(),
        "nodes".into(),
        "masters".into(),
        "replications".into(),
        "meets_slos".into(),
    ];
    for m in metrics {
        header.push(format!("{m}_mean"));
        header.push(format!("{m}_ci95"));
    }
    w.write_record(&header)?;
    for p in &plan.points {
        let st = &p.stats;
        let values = [
            st.staleness_applied_p50,
            st.staleness_applied_p95,
            st.staleness_applied_p99,
            st.staleness_compiled_p95,
            st.queue_wait_p95,
            st.failed_runs,
            st.oldest_age_max,
            st.utilization,
            st.compiles_per_hour,
            st.wasted,
            st.node_cpu_per_node_day,
        ];
        let mut row = vec![
            p.policy.name().to_string(),
            p.nodes.to_string(),
            p.masters.to_string(),
            p.runs.len().to_string(),
            p.meets_all().to_string(),
        ];
        for v in values {
            row.push(format!("{:.6}", v.mean));
            row.push(format!("{:.6}", v.half_width));
        }
        w.write_record(&row)?;
    }
    w.flush()
}

fn write_runs_csv(path: &Path, plan: &PlanResult) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "policy",
        "nodes",
        "masters",
        "seed",
        "staleness_applied_p95",
        "staleness_compiled_p95",
        "queue_wait_p95",
        "failed_runs",
        "utilization",
        "compiles",
        "wasted_ratio",
        "node_cpu_per_node_day",
        "oldest_age_max",
        "events",
    ])?;
    for p in &plan.points {
        for r in &p.runs {
            w.write_record([
                r.policy.name().to_string(),
                r.nodes.to_string(),
                r.masters.to_string(),
                r.seed.to_string(),
                format!("{:.3}", r.staleness_applied.p95),
                format!("{:.3}", r.staleness_compiled.p95),
                format!("{:.3}", r.queue_wait.p95),
                format!("{:.6}", r.failed_runs.ratio),
                format!("{:.6}", r.utilization),
                r.compiles.total.to_string(),
                format!("{:.6}", r.compiles.wasted_ratio),
                format!("{:.3}", r.node_cpu_per_node_day),
                format!("{:.3}", r.oldest_age.max),
                r.events.to_string(),
            ])?;
        }
    }
    w.flush()
}
