//! `pcq-sim`: simulate a Puppet fleet under Puppet Server's on-demand
//! compiles and under pcq's queue, and plan how many masters it needs.
//!
//! Thin on purpose: argument parsing and output; the work is in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use scheduler::calibration::Measurement;
use scheduler::exit;
use simulator::calibration;
use simulator::cli::{Cli, Command, Format};
use simulator::distribution::{csv_text, CompileTime};
use simulator::metrics::RunResult;
use simulator::plan::{plan, PlanOptions};
use simulator::policy::Policy;
use simulator::report::{self, human};
use simulator::run::{run, RunSpec};
use simulator::scenario::Scenario;
use simulator::site as pcq_site;

fn main() -> ExitCode {
    match execute(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pcq-sim: {e:#}");
            ExitCode::from(exit::of(e.chain()))
        }
    }
}

fn execute(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            scenario,
            seed,
            policy,
            format,
            masters,
            nodes,
            no_series,
        } => {
            let s = load(scenario.as_deref())?;
            let mut results = Vec::new();
            for p in policy.0 {
                let mut spec = RunSpec::of(&s, p);
                spec.seed = seed.unwrap_or(s.seed);
                spec.masters = masters.unwrap_or(spec.masters);
                spec.nodes = nodes.unwrap_or(spec.nodes);
                let mut r = run(&spec).context("running the scenario")?;
                if no_series {
                    r.series.clear();
                }
                results.push(r);
            }
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&results)?),
                Format::Table => print!("{}", table(&results)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            scenario,
            out,
            replications,
            policy,
            check,
            jobs,
        } => {
            let s = load(scenario.as_deref())?;
            let mut options = PlanOptions::new();
            options.policies = policy.0;
            options.replications = replications;
            if let Some(j) = jobs {
                options.jobs = j.max(1);
            }
            if check {
                options.extra_masters = Some(s.masters.count);
                if !options.policies.contains(&Policy::Queue) {
                    options.policies.insert(0, Policy::Queue);
                }
            }
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = ProgressBar::new(0);
                bar.set_style(
                    ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} runs, {eta} left")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_message(s.name.clone());
                bar
            });
            let progress = |done: usize, total: usize| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            };
            let result = plan(&s, &options, &progress).context("running the plan")?;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            report::write(&out, &s, &result)
                .with_context(|| format!("writing the report to {}", out.display()))?;
            for r in &result.recommendations {
                println!(
                    "{}: {} nodes, {}: {}",
                    s.name,
                    r.nodes,
                    r.policy.name(),
                    r.masters
                        .map_or("no count tried meets the SLOs".into(), |m| counted(
                            u64::from(m),
                            "master"
                        ))
                );
            }
            println!("report: {}", out.join("report.md").display());
            if check {
                let at = result.point(Policy::Queue, s.fleet.nodes, s.masters.count);
                let missed: Vec<String> = at
                    .map(|p| {
                        p.slos
                            .iter()
                            .filter(|c| !c.met)
                            .map(|c| {
                                // durations in minutes or hours, shares in percent
                                let shown = |v: f64| match c.slo.starts_with("failed") {
                                    true => format!("{:.2}%", v * 100.0),
                                    false => simulator::report::human(v),
                                };
                                format!(
                                    "{} (upper 95% bound {} > target {})",
                                    c.slo,
                                    shown(c.value.high()),
                                    shown(c.target)
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !missed.is_empty() {
                    eprintln!(
                        "pcq-sim: check failed: {} miss: {}",
                        counted(u64::from(s.masters.count), "master"),
                        missed.join("; ")
                    );
                    return Ok(ExitCode::from(exit::SLO_MISSED));
                }
                println!(
                    "check: {} meet every SLO (queue)",
                    counted(u64::from(s.masters.count), "master")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scenario { site, out, name } => {
            let text =
                std::fs::read(&site).with_context(|| format!("reading {}", site.display()))?;
            let observed: scheduler::site::Site = serde_json::from_slice(&text)
                .with_context(|| format!("{}: not an observation of pcq site", site.display()))?;
            let built = pcq_site::scenario(&observed, &name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", site.display()))?;
            std::fs::create_dir_all(&out).with_context(|| format!("making {}", out.display()))?;
            // written beside, loaded as pcq-sim will load it, then moved in
            // place: a scenario that does not load replaces nothing
            let staging = out.join(format!(".scenario-{}", std::process::id()));
            std::fs::create_dir_all(&staging)
                .with_context(|| format!("making {}", staging.display()))?;
            let staged = || -> Result<Vec<String>> {
                let mut files = Vec::new();
                for (file, rows) in &built.csvs {
                    std::fs::write(staging.join(file), csv_text(rows))
                        .with_context(|| format!("writing {file}"))?;
                    files.push(file.clone());
                }
                std::fs::write(staging.join("scenario.toml"), &built.toml)
                    .context("writing scenario.toml")?;
                Scenario::load(&staging.join("scenario.toml"))?;
                files.push("scenario.toml".into());
                Ok(files)
            };
            let moved = staged().and_then(|files| {
                for file in files {
                    std::fs::rename(staging.join(&file), out.join(&file))
                        .with_context(|| format!("moving {file} into {}", out.display()))?;
                }
                Ok(())
            });
            let _ = std::fs::remove_dir_all(&staging);
            moved?;
            let path = out.join("scenario.toml");
            println!("wrote {} (and its compile times beside it)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fit { measurement, out } => {
            let m = read_measurement(&measurement)?;
            let fit = calibration::fit(&m).with_context(|| format!("{}", measurement.display()))?;
            let text = calibration::tables(&fit, &m);
            match out {
                Some(out) => {
                    std::fs::write(&out, &text)
                        .with_context(|| format!("writing {}", out.display()))?;
                    if let CompileTime::Empirical { csv, .. } = &fit.model.compile {
                        let path = out.parent().unwrap_or(std::path::Path::new(".")).join(csv);
                        std::fs::write(&path, csv_text(&fit.samples))
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    println!("{}", calibration::table(&fit.rows));
                    println!("wrote {}", out.display());
                }
                None if matches!(fit.model.compile, CompileTime::Empirical { .. }) => {
                    anyhow::bail!(
                        "the compile times need an empirical distribution, whose CSV is written beside the tables: give --out"
                    );
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            scenario,
            measurement,
            tolerance,
        } => {
            let s = Scenario::load(&scenario)?;
            let m = read_measurement(&measurement)?;
            let model = calibration::MasterModel {
                compile: s.compile.clone(),
                slots: s.masters.slots,
                cores: s.masters.cores,
                background: s.masters.background_load,
            };
            let rows = calibration::check(&model, &m);
            print!("{}", calibration::table(&rows));
            // the curve's rows are the fit's residuals: with other runs
            // beside them, those are what is checked
            let checked = |r: &&calibration::Row| !r.curve || rows.iter().all(|r| r.curve);
            let off: Vec<String> = rows
                .iter()
                .filter(checked)
                .filter(|r| r.worst() > tolerance)
                .map(|r| format!("{} ({:.1}%)", r.experiment.label(), r.worst() * 100.0))
                .collect();
            if !off.is_empty() {
                eprintln!(
                    "pcq-sim: check failed: further than {:.0}% from the measured: {}",
                    tolerance * 100.0,
                    off.join(", ")
                );
                return Ok(ExitCode::from(exit::PREDICTION_OFF));
            }
            println!(
                "check: every prediction within {:.0}% of the measured",
                tolerance * 100.0
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A measurement `pcq calibrate` wrote.
fn read_measurement(path: &std::path::Path) -> Result<Measurement> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let m: Measurement = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a measurement of pcq calibrate", path.display()))?;
    m.check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(m)
}

/// The built-in scenario: the same text as scenarios/example.toml.
const EXAMPLE: &str = include_str!("../../scenarios/example.toml");

fn load(path: Option<&std::path::Path>) -> Result<Scenario> {
    Ok(match path {
        Some(p) => Scenario::load(p)?,
        None => Scenario::parse(
            EXAMPLE,
            std::path::Path::new("(built-in example.toml)"),
            std::path::Path::new("."),
        )?,
    })
}

/// `1 master`, `2 masters`.
fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let header: Vec<String> = results
        .iter()
        .map(|r| r.policy.name().to_string())
        .collect();
    let title = results.first().map_or(String::new(), |r| {
        format!(
            "{} ({}, {})",
            r.scenario,
            counted(u64::from(r.nodes), "node"),
            counted(u64::from(r.masters), "master")
        )
    });
    // the first column fits the longest label or the title, so the
    // columns stay aligned whatever the scenario's name
    let first = title.chars().count().max(34) + 2;
    let row = |name: &str, f: &dyn Fn(&RunResult) -> String| {
        let cells: Vec<String> = results.iter().map(f).collect();
        format!(
            "{name:<first$}{}\n",
            cells.iter().map(|c| format!("{c:>20}")).collect::<String>()
        )
    };
    out.push_str(&format!(
        "{title:<first$}{}\n",
        header
            .iter()
            .map(|h| format!("{h:>20}"))
            .collect::<String>()
    ));
    let two = |a: f64, b: f64| format!("{} / {}", human(a), human(b));
    out.push_str(&row("change -> compiled p50/p95", &|r| {
        two(r.staleness_compiled.p50, r.staleness_compiled.p95)
    }));
    out.push_str(&row("change -> applied p50/p95", &|r| {
        two(r.staleness_applied.p50, r.staleness_applied.p95)
    }));
    out.push_str(&row("change -> applied p99/max", &|r| {
        two(r.staleness_applied.p99, r.staleness_applied.max)
    }));
    out.push_str(&row("queue wait mean/p95", &|r| {
        two(r.queue_wait.mean, r.queue_wait.p95)
    }));
    out.push_str(&row("catalog latency p50/p95", &|r| {
        two(r.request_latency.p50, r.request_latency.p95)
    }));
    out.push_str(&row("agent runs (failed)", &|r| {
        format!("{} ({})", r.agent_runs, r.failed_runs.total)
    }));
    out.push_str(&row("failed: timeouts/503/errors", &|r| {
        format!(
            "{}/{}/{}",
            r.failed_runs.timeouts, r.failed_runs.rejected, r.failed_runs.errors
        )
    }));
    out.push_str(&row("master utilization", &|r| {
        format!("{:.1}%", r.utilization * 100.0)
    }));
    out.push_str(&row("compiles per hour", &|r| {
        format!("{:.0}", r.compiles.per_hour)
    }));
    out.push_str(&row("no-op compiles (same catalog)", &|r| {
        format!("{:.1}%", r.compiles.wasted_ratio * 100.0)
    }));
    out.push_str(&row("oldest queued age max", &|r| human(r.oldest_age.max)));
    out.push_str(&row("node CPU s per node per day", &|r| {
        format!("{:.1}", r.node_cpu_per_node_day)
    }));
    out.push_str(&row("used share of fact changes", &|r| {
        format!("{:.1}%", r.churn.used_share * 100.0)
    }));
    out.push_str(&row("events", &|r| r.events.to_string()));
    out
}
