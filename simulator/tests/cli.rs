//! `pcq-sim` as a user runs it: errors that name file, line and key; JSON
//! that parses and repeats per seed; plans that write their report and
//! `--check` that fails when the configured master count misses an SLO.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pcq_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pcq-sim"))
        .args(args)
        .output()
        .expect("pcq-sim runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pcq-sim-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/example.toml"))
        .expect("example scenario")
}

#[test]
fn bad_scenarios_are_refused_with_file_line_and_key() {
    let dir = scratch("bad");
    for (edit, key, marker) in [
        (
            ("slots = 2", "slots = 2\nsloths = 3"),
            "masters.sloths",
            "sloths",
        ),
        (("slots = 2", "slots = 0"), "masters.slots", "slots = 0"),
        (
            ("mean = \"6s\"", "mean = \"6 parsecs\""),
            "compile.mean",
            "parsecs",
        ),
        (("slots = 2", "slots = \"two\""), "masters.slots", "\"two\""),
    ] {
        let text = example().replacen(edit.0, edit.1, 1);
        let line = 1 + text
            .lines()
            .position(|l| l.contains(marker))
            .expect("edited line");
        let file = dir.join("bad.toml");
        std::fs::write(&file, text).expect("write");
        let out = pcq_sim(&["run", file.to_str().expect("utf-8 path")]);
        // 3: the scenario is at fault (2 is a wrong command line)
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("bad.toml:{line}:")) && err.contains(key),
            "expected line {line} and key {key}: {err}"
        );
    }
    let out = pcq_sim(&["run", "/no/such/scenario.toml"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file").count(), 1, "said once: {err}");
    assert!(err.contains("/no/such/scenario.toml"), "{err}");
    let out = pcq_sim(&["run", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage status");
}

#[test]
fn json_results_parse_and_repeat_per_seed() {
    let run = |seed: &str| {
        let out = pcq_sim(&["run", "--format", "json", "--seed", seed, "--no-series"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let a = run("7");
    assert_eq!(a, run("7"), "same seed, same bytes");
    assert_ne!(a, run("8"), "another seed, other results");
    let results: serde_json::Value = serde_json::from_slice(&a).expect("JSON");
    let results = results.as_array().expect("an array");
    assert_eq!(results.len(), 2);
    let policies: Vec<&str> = results
        .iter()
        .filter_map(|r| r["policy"].as_str())
        .collect();
    assert_eq!(policies, vec!["queue", "on-demand"]);
    for r in results {
        assert!(r["staleness_applied"]["p95"]
            .as_f64()
            .is_some_and(|v| v > 0.0));
        assert!(r["agent_runs"].as_u64().is_some_and(|v| v > 1000));
        assert!(r["utilization"]
            .as_f64()
            .is_some_and(|v| v > 0.0 && v <= 1.0));
    }
}

#[test]
fn plan_writes_the_report_and_check_fails_on_a_missed_slo() {
    let dir = scratch("plan");
    let out = dir.join("report");
    let ok = pcq_sim(&["plan", "--out", out.to_str().expect("utf-8"), "--check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for file in [
        "report.md",
        "points.csv",
        "runs.csv",
        "staleness.svg",
        "utilization.svg",
        "oldest_age.svg",
        "herd-1.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).expect("report");
    assert!(report.starts_with("# Capacity report: example\n"));
    let recommendation = report.find("## Recommendation").expect("recommendation");
    assert!(
        recommendation < report.find("## The scenario").expect("scenario"),
        "recommendation first"
    );
    assert!(
        report.contains("of fact changes touch a fact some catalog reads")
            && report.contains("compiles an hour saved"),
        "the report states what fact filtering saves"
    );
    // the recommendation states the freshness each count buys, and the
    // staleness plot draws the SLO
    assert!(
        report.contains("masters** (change-to-applied p95 "),
        "{report}"
    );
    let svg = std::fs::read_to_string(out.join("staleness.svg")).expect("svg");
    assert!(
        svg.contains("SLO: p95 &lt;= ") || svg.contains("SLO: p95 <= "),
        "no SLO line"
    );
    let points = std::fs::read_to_string(out.join("points.csv")).expect("csv");
    // header + 3 master counts x 2 policies
    assert_eq!(points.lines().count(), 7, "{points}");

    // one master cannot keep the oldest job under 30 s
    let strict = example()
        .replace("count = 2\nslots = 2", "count = 1\nslots = 2")
        .replace("oldest_age = \"30m\"", "oldest_age = \"30s\"");
    let file = dir.join("strict.toml");
    std::fs::write(&file, strict).expect("write");
    let failed = pcq_sim(&[
        "plan",
        file.to_str().expect("utf-8"),
        "--out",
        dir.join("strict").to_str().expect("utf-8"),
        "--check",
    ]);
    assert_eq!(failed.status.code(), Some(5), "an SLO missed, not a crash");
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(said.contains("oldest_age"), "{said}");
    // durations as people read them, not raw seconds
    assert!(said.contains("> target 30 s)"), "{said}");
}

#[test]
fn the_table_is_aligned_with_plurals_and_zero_masters_is_refused() {
    let out = pcq_sim(&["run", "--masters", "1", "--no-series"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines[0].contains(", 1 master)"), "{text}");
    let width = lines[0].chars().count();
    for l in &lines {
        assert_eq!(l.chars().count(), width, "misaligned: {l:?}\n{text}");
    }
    let out = pcq_sim(&["run", "--masters", "0"]);
    assert_eq!(out.status.code(), Some(2), "a wrong command line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--masters"), "{err}");
}
