//! `report.md`: the recommendation first (a table, then the verdict per
//! fleet size), the SLOs and the scenario, a table per policy and fleet
//! size, the plots.

use std::fmt::Write as _;

use super::format::{human, human_est, masters_text, pct_est};
use super::verdict::verdict;
use crate::plan::{PlanResult, Point};
use crate::policy::Policy;
use crate::scenario::Scenario;

/// The text of `report.md`; `plots` are the (file, caption) of the plots
/// drawn.
pub fn markdown(s: &Scenario, plan: &PlanResult, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let max_tried = plan.points.iter().map(|p| p.masters).max().unwrap_or(0);
    let _ = writeln!(md, "# Capacity report: {}\n", s.name);
    if !s.description.is_empty() {
        let _ = writeln!(md, "{}\n", s.description);
    }
    let _ = writeln!(md, "## Recommendation\n");
    let pols = plan.policies();
    let _ = write!(md, "| fleet |");
    for p in &pols {
        let _ = write!(md, " {} |", p.description().title);
    }
    let _ = write!(md, "\n|---|");
    for _ in &pols {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for nodes in plan.fleet_sizes() {
        let _ = write!(md, "| {nodes} nodes |");
        for p in &pols {
            let recommended = plan.recommended(*p, nodes);
            // the count and the freshness it buys, side by side
            let p95 = recommended
                .and_then(|m| plan.point(*p, nodes, m))
                .map(|x| {
                    format!(
                        " (change-to-applied p95 {})",
                        human(x.stats.staleness_applied_p95.mean)
                    )
                })
                .unwrap_or_default();
            let _ = write!(md, " {}{p95} |", masters_text(recommended, max_tried));
        }
        md.push('\n');
    }
    md.push('\n');
    for nodes in plan.fleet_sizes() {
        md.push_str(&verdict(s, plan, nodes));
    }
    md.push_str(&concurrency(s, plan));
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

    for nodes in plan.fleet_sizes() {
        for p in &pols {
            let _ = writeln!(md, "\n## {} — {} nodes\n", p.description().title, nodes);
            md.push_str(&point_table(s, plan, *p, nodes));
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
    if let Some(d) = slo.file_wait_p95.filter(|_| s.files.simulated()) {
        let _ = writeln!(
            out,
            "- file request (request to answer), p95 <= {}",
            human(d.as_secs_f64())
        );
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
            "- deploy to {} at {}{}, changing {:.0}% of its catalogs{}",
            d.environment,
            secs(d.at),
            d.every
                .map_or(String::new(), |e| format!(" and every {}", secs(e))),
            d.affects * 100.0,
            if d.unbounded > 0.0 {
                format!(
                    "; {:.0}% of deploys cannot be bounded (every node recompiles)",
                    d.unbounded * 100.0
                )
            } else {
                String::new()
            }
        );
    }
    for h in &s.herds {
        let _ = writeln!(out, "- herd at {}: {}", secs(h.at()), h.label());
    }
    if s.files.simulated() {
        let _ = writeln!(
            out,
            "- file requests: {} per apply, {} more per full agent run (pluginsync, on demand \
             only), {} of JRuby each; pcq leaves {} JRuby(s) per master to them",
            s.files.per_apply,
            s.files.per_run,
            secs(s.files.jruby_time),
            s.queue.reserve_for_files
        );
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

/// How many JRubies pcq may compile on: the plan's sweep of
/// `max_concurrency`, when the scenario has a file-wait SLO.
fn concurrency(s: &Scenario, plan: &PlanResult) -> String {
    let mut out = String::new();
    for c in &plan.concurrency {
        let _ = writeln!(out, "\n### JRubies left for files — {} nodes\n", c.nodes);
        let _ = match (c.masters, c.max_concurrency) {
            (Some(m), Some(k)) => writeln!(
                out,
                "pcq meets every SLO with **{m} master(s) compiling on at most {k} of their {} \
                 JRubies** (`max_concurrency = {k}`, `reserve_for_files = {}`): the largest \
                 value at the fewest masters.\n",
                s.masters.slots,
                s.masters.slots - k
            ),
            _ => writeln!(
                out,
                "No master count tried meets every SLO at any `max_concurrency`.\n"
            ),
        };
        out.push_str(
            "| masters | max_concurrency | file wait p95 | applied p95 | SLOs |\n|---|---|---|---|---|\n",
        );
        for p in &c.tried {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                p.masters,
                p.max_concurrency,
                human_est(&p.file_wait_p95),
                human_est(&p.staleness_applied_p95),
                if p.met { "all met" } else { "missed" }
            );
        }
    }
    out
}

fn point_table(s: &Scenario, plan: &PlanResult, policy: Policy, nodes: u32) -> String {
    let files = s.files.simulated();
    let mut out = String::from(if files {
        "| masters | applied p95 | compiled p95 | queue wait p95 | file wait p95 | apply with files p95 | failed runs | oldest age | utilization | compiles/h | no-op compiles | node CPU s/day | SLOs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    } else {
        "| masters | applied p95 | compiled p95 | queue wait p95 | failed runs | oldest age | utilization | compiles/h | no-op compiles | node CPU s/day | SLOs |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    });
    for p in plan
        .points
        .iter()
        .filter(|p| p.policy == policy && p.nodes == nodes)
    {
        let st = &p.stats;
        let file_columns = if files {
            format!(
                " {} | {} |",
                human_est(&st.file_wait_p95),
                human_est(&st.apply_time_p95)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |{file_columns} {} | {} | {} | {:.0} | {:.0}% | {:.1} | {} |",
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
    out.push_str(
        "\nNo-op compiles: the share of compiles that changed nothing for the node (the same \
         catalog as last time, or finished for an agent that had given up, or lost with a \
         master).\n",
    );
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
