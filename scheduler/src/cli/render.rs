//! What the CLI prints: `pcq queue` and `pcq status NODE` from the API's
//! typed views, to a stdout that may be a closed pipe.

use crate::daemon::driver::{DeployReport, NodeStatus, QueueView};

/// A duration for people: seconds, minutes or hours.
pub fn age(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else if secs < 7200.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

/// The lanes with their depth and oldest job, the masters, the compiles.
pub fn queue(q: &QueueView) -> String {
    let mut out = format!(
        "{}, {} waiting for facts; blocked: {}; cycle time: {}\n\n",
        counted(q.nodes, "node"),
        q.waiting_for_facts,
        q.blocked,
        q.cycle_time_seconds.map_or("-".into(), age)
    );
    if let Some(l) = &q.leader {
        let since =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(l.since_unix.max(0.0));
        out.insert_str(
            out.len() - 1,
            &format!(
                "leader: this pcq ({}), epoch {}, since {}\n",
                l.holder,
                l.epoch,
                humantime::format_rfc3339_seconds(since)
            ),
        );
    }
    let mut lanes = vec![vec!["lane".to_string(), "depth".into(), "oldest".into()]];
    for l in &q.lanes {
        lanes.push(vec![
            l.lane.clone(),
            l.depth.to_string(),
            age(l.oldest_age_seconds),
        ]);
    }
    out += &columns(&lanes, &[false, true, true]);
    let mut masters = vec![vec![
        "master".to_string(),
        "up".into(),
        "running".into(),
        "load/core".into(),
        "jrubies free".into(),
    ]];
    for m in &q.masters {
        masters.push(vec![
            m.name.clone(),
            if m.up { "yes" } else { "NO" }.into(),
            format!("{}/{}", m.in_flight, m.max_concurrency),
            format!("{:.2}", m.load_per_core),
            m.jrubies_free.map_or_else(|| "-".into(), |f| f.to_string()),
        ]);
    }
    out += "\n";
    out += &columns(&masters, &[false, false, true, true, true]);
    if !q.in_flight.is_empty() {
        out += "\ncompiling\n";
        for r in &q.in_flight {
            out += &format!("  {} on {} for {}\n", r.certname, r.master, age(r.seconds));
        }
    }
    out
}

/// `1 node`, `2 nodes`.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Rows as columns as wide as their widest cell, two spaces apart; a
/// column marked in `right` is right-aligned.
fn columns(rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths = vec![0; right.len()];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((cell, &w), &r)| match r {
                true => format!("{cell:>w$}"),
                false => format!("{cell:<w$}"),
            })
            .collect();
        out += cells.join("  ").trim_end();
        out += "\n";
    }
    out
}

/// One node: a `key value` line per known field, then the fact paths.
/// `pcq deploy`: what moved and why.
pub fn deploy(d: &DeployReport) -> String {
    let scope = if d.narrowed {
        "narrowed to the catalogs reaching the change"
    } else {
        "every node"
    };
    let mut out = format!(
        "{}: {} of {} nodes affected ({scope}); {} queued to recompile\n",
        d.environment, d.affected, d.members, d.nodes
    );
    for (why, n) in &d.reasons {
        out.push_str(&format!("  {n:>6}  {why}\n"));
    }
    if d.changed_files > 0 {
        out.push_str(&format!("{} files changed:\n", d.changed_files));
        for f in &d.changed {
            out.push_str(&format!("  {f}\n"));
        }
        if d.changed_files > d.changed.len() {
            out.push_str(&format!(
                "  ... {} more\n",
                d.changed_files - d.changed.len()
            ));
        }
    }
    out
}

pub fn status(s: &NodeStatus) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            out += &format!("{key:<20}{v}\n");
        }
    };
    let epoch = |t: f64| t.to_string();
    line("certname", Some(s.certname.clone()));
    line("environment", Some(s.environment.clone()));
    line("state", Some(s.state.clone()));
    line("reason", s.reason.clone());
    line("catalog_hash", s.catalog_hash.clone());
    line("catalog_changed_at", s.catalog_changed_at.map(epoch));
    line("last_compile", s.last_compile.map(epoch));
    line("failures", Some(s.failures.to_string()));
    line("last_error", s.last_error.clone());
    match &s.fact_paths {
        Some(paths) => {
            out += &format!(
                "{:<20}{} read by its catalog: {}\n",
                "fact_paths",
                paths.len(),
                paths.join(" ")
            );
        }
        None => {
            out += &format!(
                "{:<20}any (not known yet, or the code may read any fact)\n",
                "fact_paths"
            );
        }
    }
    out
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::driver::{LaneView, MasterView, RunningView};

    #[test]
    fn the_queue_shows_lanes_masters_and_compiles() {
        let q = QueueView {
            nodes: 20,
            lanes: vec![LaneView {
                lane: "urgent".into(),
                depth: 3,
                oldest_age_seconds: 600.0,
            }],
            in_flight: vec![RunningView {
                certname: "web-01.example.com".into(),
                master: "local".into(),
                seconds: 1.4,
            }],
            blocked: "concurrency".into(),
            cycle_time_seconds: None,
            masters: vec![MasterView {
                name: "local".into(),
                up: false,
                in_flight: 1,
                max_concurrency: 2,
                load_per_core: 0.5,
                jrubies_free: Some(0),
            }],
            waiting_for_facts: 4,
            leader: None,
        };
        let text = queue(&q);
        let led = queue(&QueueView {
            leader: Some(crate::daemon::driver::LeaderView {
                holder: "pcq1 pid 7".into(),
                epoch: 3,
                since_unix: 1_700_000_000.0,
            }),
            ..q.clone()
        });
        assert!(
            led.contains(
                "\nleader: this pcq (pcq1 pid 7), epoch 3, since 2023-11-14T22:13:20Z\n\n"
            ),
            "{led}"
        );
        assert!(text
            .starts_with("20 nodes, 4 waiting for facts; blocked: concurrency; cycle time: -\n"));
        // columns as wide as their widest cell, aligned with the header
        assert!(
            text.contains("lane    depth  oldest\nurgent      3   10.0m\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "master  up  running  load/core  jrubies free\n\
                 local   NO      1/2       0.50             0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  web-01.example.com on local for 1s\n"),
            "{text}"
        );
    }

    #[test]
    fn a_status_shows_known_fields_and_the_fact_paths() {
        let mut s = NodeStatus {
            certname: "web-01.example.com".into(),
            environment: "production".into(),
            state: "cycle".into(),
            reason: Some("cycle".into()),
            since: None,
            catalog_hash: Some("abc".into()),
            catalog_changed_at: None,
            last_compile: Some(12.5),
            failures: 0,
            last_error: None,
            fact_paths: Some(vec!["os.family".into(), "networking.fqdn".into()]),
            code_version: Some("1764000000.2".into()),
        };
        let text = status(&s);
        assert!(text.contains("catalog_hash        abc\n"), "{text}");
        assert!(text.contains("last_compile        12.5\n"), "{text}");
        assert!(!text.contains("last_error"), "unknown fields are left out");
        assert!(
            text.contains("fact_paths          2 read by its catalog: os.family networking.fqdn\n")
        );
        s.fact_paths = None;
        assert!(status(&s).contains("fact_paths          any"));
    }
}
