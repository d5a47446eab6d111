//! The report's SVG plots: staleness and utilization against the master
//! count, one line per policy (and percentile), at the largest fleet size;
//! the oldest queued job over time, each policy at the master count
//! recommended for it, over the whole run and around each herd.

use std::path::Path;

use crate::metrics::RunResult;
use crate::plan::{PlanResult, Point};
use crate::plot::{self, Axes, Line, Marker};
use crate::policy::Policy;
use crate::scenario::{Herd, Scenario};

/// Draws the plots; returns (file name, caption) of each drawn.
pub fn write_plots(dir: &Path, s: &Scenario, plan: &PlanResult) -> Vec<(String, String)> {
    let mut drawn = Vec::new();
    let nodes = plan.fleet_sizes().last().copied().unwrap_or(s.fleet.nodes);
    let pols = plan.policies();
    let mut keep = |file: &str, caption: String, result: Result<(), Box<dyn std::error::Error>>| {
        match result {
            Ok(()) => drawn.push((file.to_string(), caption)),
            Err(e) => eprintln!("pcq-sim: plot {file}: {e}"),
        }
    };

    // staleness percentiles against masters, with the SLO
    let slo_minutes = s.slo.staleness_applied_p95.map(|d| d.as_secs_f64() / 60.0);
    let slo_label = format!(
        "SLO: p95 <= {}",
        slo_minutes.map_or(String::new(), |m| format!("{m:.0} min"))
    );
    let mut lines = Vec::new();
    for (pi, p) in pols.iter().enumerate() {
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
                points: by_masters(plan, *p, nodes, |x| f(x) / 60.0),
                dashed: p.description().dashed,
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
                target: slo_minutes.map(|m| (m, slo_label.as_str())),
            },
            &lines,
            &[],
        ),
    );

    // file request waits against masters, beside staleness (scenarios
    // with file requests)
    if s.files.simulated() {
        let slo = s.slo.file_wait_p95.map(|d| d.as_secs_f64());
        let slo_label = format!(
            "SLO: p95 <= {}",
            slo.map_or(String::new(), |v| format!("{v} s"))
        );
        let mut lines: Vec<Line> = pols
            .iter()
            .enumerate()
            .map(|(i, p)| Line {
                label: format!("{} p95", p.name()),
                points: by_masters(plan, *p, nodes, |x| x.stats.file_wait_p95.mean),
                dashed: p.description().dashed,
                color: i,
            })
            .collect();
        if let Some(c) = plan.concurrency.iter().find(|c| c.nodes == nodes) {
            let mut per: Vec<u32> = c.tried.iter().map(|t| t.max_concurrency).collect();
            per.sort_unstable();
            per.dedup();
            let own = s.masters.slots - s.queue.reserve_for_files;
            for (k, mc) in per.into_iter().filter(|&mc| mc != own).enumerate() {
                lines.push(Line {
                    label: format!("queue p95, max_concurrency {mc}"),
                    points: c
                        .tried
                        .iter()
                        .filter(|t| t.max_concurrency == mc)
                        .map(|t| (f64::from(t.masters), t.file_wait_p95.mean))
                        .collect(),
                    dashed: false,
                    color: pols.len() + k,
                });
            }
        }
        keep(
            "file_wait.svg",
            format!("File requests (request to answer) by master count ({nodes} nodes)"),
            plot::lines(
                &dir.join("file_wait.svg"),
                &Axes {
                    title: "file request wait",
                    x: "masters",
                    y: "seconds (log)",
                    log_y: true,
                    whole_x: true,
                    target: slo.map(|v| (v, slo_label.as_str())),
                },
                &lines,
                &[],
            ),
        );
    }

    // utilization against masters
    let lines: Vec<Line> = pols
        .iter()
        .enumerate()
        .map(|(i, p)| Line {
            label: p.name().into(),
            points: by_masters(plan, *p, nodes, |x| x.stats.utilization.mean * 100.0),
            dashed: p.description().dashed,
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
                target: None,
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
            dashed: p.description().dashed,
            color: p.index(),
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
                target: None,
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
                    target: None,
                },
                &lines,
                std::slice::from_ref(&marker),
            ),
        );
    }
    drawn
}

/// A policy's points at `nodes` nodes, one per master count: (masters, `y`).
fn by_masters(
    plan: &PlanResult,
    policy: Policy,
    nodes: u32,
    y: impl Fn(&Point) -> f64,
) -> Vec<(f64, f64)> {
    plan.points
        .iter()
        .filter(|x| x.policy == policy && x.nodes == nodes)
        .map(|x| (f64::from(x.masters), y(x)))
        .collect()
}
