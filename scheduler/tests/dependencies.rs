//! What a catalog depends on, against the real thing: the analysis over
//! every module of Debian's `puppet-module-*` packages, its soundness
//! checked by compiling through the real Puppet Server, and exported
//! resources travelling through a real PuppetDB to their collector.
//! Run by `scripts/test` (`cargo test --features e2e`).

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{facts_body, host, metric, serial, Notes, Pcq, PcqConfig, Via};
use reqwest::Method;
use scheduler::daemon::analyze::{default_ruby, verify, Analysis, Query};
use scheduler::daemon::backend::puppetserver::PuppetServer;
use scheduler::daemon::certname::Certname;
use scheduler::daemon::tls::PuppetSsl;
use serde_json::{json, Map, Value};

const ENV: &str = "/etc/puppet/code/environments/production";

fn modulepath() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/etc/puppet/code/modules"),
        PathBuf::from("/usr/share/puppet/modules"),
    ]
}

fn analysis() -> Analysis {
    Analysis::run(&default_ruby(), Path::new(ENV), &modulepath(), &[])
        .unwrap_or_else(|e| panic!("analysis: {e}"))
}

#[test]
fn the_code_snapshot_says_what_each_file_gives_and_catalogs_reach_it() {
    let a = Analysis::run_with_snapshot(&default_ruby(), Path::new(ENV), &modulepath(), &[], None)
        .unwrap_or_else(|e| panic!("analysis: {e}"));
    let snapshot = a.snapshot.clone().expect("a snapshot");
    let gives = |path: &str| -> Vec<String> {
        snapshot
            .files
            .get(path)
            .map(|f| f.gives.clone())
            .unwrap_or_else(|| panic!("{path} not in the snapshot"))
    };
    let m = "/usr/share/puppet/modules";
    assert_eq!(
        gives(&format!("{m}/ntp/templates/ntp.conf.epp")),
        ["template:ntp/ntp.conf.epp"]
    );
    assert_eq!(gives(&format!("{m}/ntp/manifests/init.pp")), ["class:ntp"]);
    assert_eq!(
        gives(&format!("{m}/host_core/lib/puppet/type/host.rb")),
        ["type:host"]
    );
    assert_eq!(
        gives(&format!(
            "{m}/stdlib/lib/puppet/functions/ensure_packages.rb"
        )),
        ["function:ensure_packages"]
    );
    assert!(gives(&format!("{m}/ntp/metadata.json")).contains(&"files:ntp".to_string()));
    assert_eq!(gives(&format!("{ENV}/manifests/site.pp")), ["global"]);
    assert_eq!(gives(&format!("{ENV}/data/common.yaml")), ["global"]);
    assert!(gives(&format!("{m}/apache/types/loglevel.pp"))[0].starts_with("alias:"));
    // nothing unknown or unparsable among Debian's modules and the test code
    for (path, f) in &snapshot.files {
        assert!(
            !f.gives.iter().any(|g| g == "unknown" || g == "unparsable"),
            "{path}: {:?}",
            f.gives
        );
    }
    // a node with ntp reaches its template, its data and its resource types
    let deps = a.for_catalog(
        &["ntp".into(), "ntp::config".into()],
        &["File".into(), "Service".into()],
        Some(&Default::default()),
    );
    for name in [
        "class:ntp",
        "template:ntp/ntp.conf.epp",
        "module_hiera:ntp",
        "type:file",
    ] {
        assert!(
            deps.code.names.contains(name),
            "{name}: {:?}",
            deps.code.names
        );
    }
    assert_eq!(deps.code.open, None);
    assert!(!deps.code.names.contains("class:apache"));
    // defined() in Puppet code: a definition added or removed moves it
    let info = a.for_catalog(
        &["apache::mod::info".into()],
        &[],
        Some(&Default::default()),
    );
    assert!(info.code.asks_defined);
    // a resource type nothing defines: code outside the analysis
    let stray = a.for_catalog(
        &["ntp".into()],
        &["Nosuch::Thing".into()],
        Some(&Default::default()),
    );
    assert!(
        stray
            .code
            .open
            .as_deref()
            .is_some_and(|o| o.contains("nosuch::thing")),
        "{:?}",
        stray.code.open
    );
}

/// The fact paths a unit reads, with the text of each source line.
fn reads(a: &Analysis, table: &str, name: &str) -> Vec<(String, String)> {
    let unit = match table {
        "classes" => a.raw.classes.get(name),
        "defines" => a.raw.defines.get(name),
        "functions" => a.raw.functions.get(name),
        _ => a.raw.module_hiera.get(name),
    }
    .unwrap_or_else(|| panic!("{table} {name} not in the analysis"));
    unit.facts
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f.file).unwrap_or_default();
            let line = text
                .lines()
                .nth((f.line as usize).saturating_sub(1))
                .unwrap_or("")
                .to_string();
            (f.path.clone(), line)
        })
        .collect()
}

/// `name` reads `path`, and the source line it names shows the read.
fn assert_reads(a: &Analysis, table: &str, name: &str, path: &str, shown_as: &str) {
    let found = reads(a, table, name);
    let hit = found.iter().find(|(p, _)| p == path);
    let Some((_, line)) = hit else {
        panic!("{table} {name}: {path} not found in {found:?}");
    };
    assert!(
        line.contains(shown_as),
        "{table} {name}: {path} points at a line without {shown_as:?}: {line:?}"
    );
}

#[test]
fn every_installed_module_is_analysed_and_known_reads_are_found() {
    let packages = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Status}\n", "puppet-module-*"])
        .output()
        .expect("dpkg-query");
    let installed = String::from_utf8_lossy(&packages.stdout)
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .count();
    assert!(
        installed >= 20,
        "only {installed} puppet-module-* packages installed"
    );

    let a = analysis();
    assert!(a.raw.errors.is_empty(), "unparsable: {:?}", a.raw.errors);
    // every module directory Puppet loads (its name rule: Debian's
    // saz-rsyslog is not one), and the test environment's own
    let dirs: Vec<String> = std::fs::read_dir("/usr/share/puppet/modules")
        .expect("modules")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let loadable: Vec<&String> = dirs
        .iter()
        .filter(|d| {
            d.starts_with(|c: char| c.is_ascii_lowercase())
                && d.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(
        loadable.len() + 1 >= installed,
        "{loadable:?} of {installed} packages"
    );
    for m in loadable.iter().map(|d| d.as_str()).chain(["pcq_test"]) {
        assert!(a.raw.modules.iter().any(|x| x == m), "{m} not analysed");
    }
    assert!(
        !a.raw.modules.iter().any(|x| x == "rsyslog"),
        "saz-rsyslog is not a module Puppet loads"
    );
    assert!(a.raw.files > 1000, "{} files", a.raw.files);

    // hand-verified against the sources of six modules: `$facts[...]`,
    // `$::x`, a class parameter's default, an unqualified top-scope
    // variable in a defined type, an interpolation, a nested path
    assert_reads(
        &a,
        "classes",
        "ntp::config",
        "operatingsystem",
        "$facts['operatingsystem']",
    );
    assert_reads(
        &a,
        "classes",
        "ntp::config",
        "operatingsystemmajrelease",
        "$facts['operatingsystemmajrelease']",
    );
    assert_reads(&a, "classes", "apache::params", "fqdn", "$::fqdn");
    assert_reads(&a, "classes", "apache::params", "hostname", "$::hostname");
    assert_reads(
        &a,
        "classes",
        "memcached",
        "processorcount",
        "$::processorcount",
    );
    assert_reads(
        &a,
        "defines",
        "concat::fragment",
        "clientversion",
        "$clientversion",
    );
    assert_reads(
        &a,
        "classes",
        "haproxy::params",
        "ipaddress",
        "${::ipaddress}",
    );
    // a key with a dot in it ('systemd-resolved.service') cannot be named
    // by a dotted path: the read is of its parent, whole
    assert_reads(
        &a,
        "classes",
        "systemd",
        "systemd_internal_services",
        "['systemd-resolved.service']",
    );
    assert!(
        reads(&a, "classes", "systemd")
            .iter()
            .all(|(p, _)| !p.contains("systemd-resolved")),
        "no path through a dotted key"
    );
    assert_reads(
        &a,
        "classes",
        "collectd",
        "collectd_version",
        "$facts['collectd_version']",
    );
    // a module's Hiera layer (ntp's hiera.yaml interpolates facts)
    assert_reads(&a, "module_hiera", "ntp", "os.name", "%{facts.os.name}");
    // every way the test code reads a fact
    let tricky = a.for_catalog(&["pcq_test::tricky".into()], &[], None);
    for path in [
        "pcq_site.zone",
        "pcq_legacy",
        "pcq_getvar",
        "pcq_erb",
        "pcq_scope",
        "pcq_tier",
        "pcq_role",
    ] {
        assert!(
            tricky.facts.paths().contains(&path.to_string()),
            "{path} missing: {:?}",
            tricky.facts.paths()
        );
    }
    assert!(!tricky.facts.all);
    // what a node of ntp alone reads: its code, its templates, its Hiera
    let ntp = a.for_catalog(&["ntp".into(), "ntp::config".into()], &[], None);
    assert!(!ntp.facts.all);
    assert!(ntp.facts.touches("operatingsystem") && ntp.facts.touches("os.release.full"));
    assert!(!ntp.facts.touches("uptime_seconds") && !ntp.facts.touches("networking.mac"));

    // Ruby functions, read with Ruby's parser: a local holding the scope,
    // a local holding the facts hash
    assert_reads(
        &a,
        "functions",
        "memcached::max_memory",
        "memorysize",
        "scope['facts']['memorysize']",
    );
    assert_reads(
        &a,
        "functions",
        "os_version_gte",
        "operatingsystemmajrelease",
        "facts['operatingsystemmajrelease']",
    );
    assert!(a.raw.functions["os_version_gte"].all.is_empty());
    // a scope handed to Puppet's own dispatcher or type lookup, a resource
    // read from the catalog: no widening (stdlib's ensure_resource is used
    // by most modules)
    for f in ["validate_string", "defined_with_params", "assert_private"] {
        let unit = &a.raw.functions[f];
        assert!(unit.all.is_empty(), "{f} widens: {:?}", unit.all);
    }
    // a variable read by a name computed at run time widens, with the form
    let dynamic = &a.raw.functions["has_interface_with"];
    assert!(
        dynamic.all.iter().any(|w| w.cause.contains("lookupvar")),
        "{:?}",
        dynamic.all
    );

    // widenings: a name computed at run time reads any fact
    let getvar = &a.raw.functions["postgresql::default"];
    assert!(
        getvar.all.iter().any(|w| w.cause.contains("getvar")),
        "postgresql::default's getvar($x) widens: {:?}",
        getvar.all
    );
    // collectors, with their queries
    let knownhosts = a
        .raw
        .collectors
        .iter()
        .find(|c| c.name == "ssh::knownhosts")
        .expect("ssh::knownhosts collects");
    assert_eq!(knownhosts.kind_of_resource, "Sshkey");
    assert!(matches!(knownhosts.query, Query::All { .. }));
    let haproxy = a
        .raw
        .collectors
        .iter()
        .find(|c| c.name == "haproxy::balancermember::collect_exported")
        .expect("haproxy collects");
    assert_eq!(haproxy.kind_of_resource, "Haproxy::Balancermember");
    assert!(
        matches!(haproxy.query, Query::Unknown { .. }),
        "its query uses a variable"
    );
    let lb = a
        .raw
        .collectors
        .iter()
        .find(|c| c.name == "pcq_test::lb")
        .expect("pcq_test::lb collects");
    assert_eq!(lb.query.to_string(), "tag == 'pcq_backend'");
    // the CLI prints the same, with sources
    let out = Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["analyze", ENV])
        .output()
        .expect("pcq analyze");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("class ntp::config:"), "{report}");
    assert!(report.contains("ntp/manifests/config.pp:9"), "{report}");
    assert!(
        report.contains("getvar() of a name computed at run time"),
        "{report}"
    );
    assert!(report.contains("class pcq_test::lb collects File where tag == 'pcq_backend'"));
}

/// This host's facts as Puppet 7's agent sends them, with the test code's
/// custom facts.
fn agent_facts() -> Map<String, Value> {
    let out = Command::new("facter")
        .args(["-p", "--json", "--show-legacy"])
        .output()
        .expect("facter");
    let mut facts = match serde_json::from_slice(&out.stdout) {
        Ok(Value::Object(m)) => m,
        other => panic!("facter: {other:?}"),
    };
    for (k, v) in [
        ("pcq_role", json!("web")),
        ("pcq_color", json!("blue")),
        ("pcq_address", json!("10.1.2.3")),
        ("pcq_tier", json!("gold")),
        ("pcq_legacy", json!("yes")),
        ("pcq_getvar", json!("by-name")),
        ("pcq_erb", json!("from-erb")),
        ("pcq_scope", json!("from-scope")),
        ("pcq_site", json!({"zone": "z1", "rack": "r7"})),
        ("clientversion", json!("7.23.0")),
    ] {
        facts.insert(k.into(), v);
    }
    facts
}

/// `pcq analyze ENV --verify [extra] --certname ...` through Puppet Server
/// with `facts`: its output, the command having succeeded.
fn verify_through_server(facts: &Map<String, Value>, extra: &[&str], certnames: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let facts_file = dir.path().join("facts.json");
    std::fs::write(&facts_file, serde_json::to_vec(facts).expect("json")).expect("facts");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pcq"));
    cmd.args(["analyze", ENV, "--verify"])
        .args(extra)
        .arg("--facts")
        .arg(&facts_file)
        .args(["--server", &harness::server_url(), "--as", &host()]);
    for n in certnames {
        cmd.args(["--certname", n]);
    }
    let out = cmd.output().expect("pcq analyze --verify");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The number right after `after` in `line` (None: there is none).
fn number_after(line: &str, after: &str) -> Option<usize> {
    line.split(after)
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn perturbing_every_unused_fact_never_moves_a_real_catalog() {
    let _serial = serial().await;
    let facts = agent_facts();
    // verify-*: ntp, apache + vhost, ssh, memcached, haproxy, concat,
    // stdlib and pcq_test::tricky; web-/lb-: exports and a collector;
    // e2e-: the default node (ntp, concat)
    let names = [
        "verify-01.example.com",
        "web-01.example.com",
        "lb-01.example.com",
        "e2e-01.example.com",
    ];
    let text = verify_through_server(&facts, &[], &names);
    for n in names {
        let line = text
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_else(|| panic!("no verdict for {n}: {text}"));
        assert!(line.contains("catalog unchanged (sound"), "{line}");
    }
    let verify_line = text
        .lines()
        .find(|l| l.starts_with("verify-01"))
        .unwrap_or("");
    let classes = number_after(verify_line, ": ").unwrap_or(0);
    assert!(
        classes >= 40,
        "the verify node uses the real modules: {verify_line}"
    );
    // precision: of this host's ~230 fact values the verify node's code
    // reads 27 (95 before template variables were resolved against their
    // callers and templates named by parameters against the catalog)
    let read = number_after(verify_line, "fact values, ").unwrap_or(usize::MAX);
    assert!(read <= 40, "too many facts count as read: {verify_line}");

    // and the check does catch a missing fact: an analysis that forgets
    // the Hiera interpolation of pcq_tier is called unsound, by name
    let mut raw = analysis().raw;
    raw.global.facts.retain(|f| f.path != "pcq_tier");
    let blind = Analysis::from_json(&serde_json::to_vec(&raw).expect("json")).expect("analysis");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = PuppetServer::new(
        &harness::server_url(),
        &PuppetSsl::new(Path::new(harness::SSL), &host()),
        false,
        false,
    )
    .expect("client")
    .allow_missing_certificates();
    let certname = Certname::parse("verify-01.example.com").expect("certname");
    let verdict = verify::verify(&blind, &server, &certname, "production", &facts)
        .await
        .expect("verify");
    assert_eq!(verdict.unsound, vec!["pcq_tier".to_string()], "{verdict}");
}

fn web_facts(certname: &str, address: &str, uptime: u64) -> Value {
    let mut body = facts_body(certname, "web", uptime);
    body["values"]["pcq_address"] = json!(address);
    body
}

/// The collected backend lines in the lb node's catalog.
async fn backends(pcq: &Pcq, lb: &str) -> Vec<String> {
    let catalog = pcq.catalog(lb).await.unwrap_or(Value::Null);
    let mut lines: Vec<String> = catalog["resources"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|r| r["title"].as_str().is_some_and(|t| t.contains("/backend-")))
                .filter_map(|r| r["parameters"]["content"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines
}

/// Within 60 s, the lb node's catalog collects `want`.
async fn assert_collects(pcq: &Pcq, lb: &str, want: &[String]) {
    assert!(
        pcq.wait(Duration::from_secs(60), || async {
            backends(pcq, lb).await == want
        })
        .await,
        "lb collected {:?}\n{}",
        backends(pcq, lb).await,
        pcq.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_export_reaches_its_collector_through_puppetdb() {
    let _serial = serial().await;
    let (web1, web2, lb) = (
        "web-01.example.com",
        "web-02.example.com",
        "lb-01.example.com",
    );
    let names = vec![web1.to_string(), web2.to_string(), lb.to_string()];
    let notes = Notes::in_tempdir();
    let config = PcqConfig::puppetserver()
        .persist_to_puppetdb()
        .cycle_every(Duration::from_secs(3600))
        .no_load_gate()
        .ca_poll(Duration::from_secs(1))
        .bump_delay(Duration::from_secs(2))
        .notify_command(&notes.command());
    // the web nodes export their addresses, lb collects them
    let facts = |n: &str| match n {
        n if n == lb => facts_body(n, "lb", 1),
        n if n == web1 => web_facts(n, "10.0.0.1", 1),
        n => web_facts(n, "10.0.0.2", 1),
    };
    let (pcq, _) = Pcq::start_compiled(&config, &names, facts, Duration::from_secs(120)).await;
    // whatever order they compiled in, the web nodes' exports reach lb
    let both = vec![
        format!("server {web1} 10.0.0.1:80\n"),
        format!("server {web2} 10.0.0.2:80\n"),
    ];
    assert_collects(&pcq, lb, &both).await;
    // the analysis is in use (it runs in the background from the start):
    // the web node's catalog reads these facts
    let want = vec!["pcq_address", "pcq_color", "pcq_role", "pcq_tier"];
    let fact_paths = |status: Option<Value>| -> Vec<String> {
        status
            .and_then(|s| s["fact_paths"].as_array().cloned())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        pcq.wait(Duration::from_secs(30), || async {
            fact_paths(pcq.status(web1).await) == want
        })
        .await,
        "{:?}\n{}",
        pcq.status(web1).await,
        pcq.log_text()
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // bumps of the first round done
    let lb_notes = notes.count(lb);
    let m = pcq.metrics().await;
    let export_bumps = metric(&m, "pcq_compiles_started_total{reason=\"exports\"}");
    let lb_hash = pcq.status(lb).await.expect("status")["catalog_hash"].clone();

    // web-01's address changes: web-01 recompiles, its export changed,
    // lb is bumped, recompiles, its catalog changed, it is notified
    let (status, answer) = pcq.put_facts(web1, &web_facts(web1, "10.9.9.9", 2)).await;
    assert_eq!((status, answer["result"].as_str()), (200, Some("changed")));
    let moved = vec![
        format!("server {web1} 10.9.9.9:80\n"),
        format!("server {web2} 10.0.0.2:80\n"),
    ];
    assert_collects(&pcq, lb, &moved).await;
    assert!(
        pcq.wait(Duration::from_secs(10), || async {
            notes.count(lb) == lb_notes + 1
        })
        .await,
        "lb notified"
    );
    assert_ne!(
        pcq.status(lb).await.expect("status")["catalog_hash"],
        lb_hash
    );
    let m = pcq.metrics().await;
    assert_eq!(
        metric(&m, "pcq_compiles_started_total{reason=\"exports\"}"),
        export_bumps + 1.0,
        "lb alone bumped for the export"
    );
    assert_eq!(notes.count(web2), 1, "web-02 untouched");

    // an uptime-only change, and a change of a fact no catalog reads:
    // nothing compiles out of turn
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for n in &names {
            v.push(pcq.status(n).await.expect("status")["last_compile"].clone());
        }
        v
    };
    let starts = harness::metric_sum(&pcq.metrics().await, "pcq_compiles_started_total");
    let (status, answer) = pcq.put_facts(web1, &web_facts(web1, "10.9.9.9", 999)).await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("unchanged"))
    );
    let mut unused = web_facts(web1, "10.9.9.9", 1000);
    unused["values"]["timezone"] = json!("Mars/Olympus_Mons");
    unused["values"]["kernelrelease"] = json!("9.9.9-pcq");
    let (status, answer) = pcq.put_facts(web1, &unused).await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("unchanged")),
        "unused facts"
    );
    tokio::time::sleep(Duration::from_secs(4)).await; // past the bump delay
    for (n, last) in names.iter().zip(&before) {
        assert_eq!(
            &pcq.status(n).await.expect("status")["last_compile"],
            last,
            "{n} compiled"
        );
    }
    let m = pcq.metrics().await;
    assert_eq!(
        harness::metric_sum(&m, "pcq_compiles_started_total"),
        starts
    );
    assert_eq!(
        metric(&m, "pcq_facts_uploads_total{result=\"unused\"}"),
        1.0
    );
}

/// Copies the test environment to a new one the test may change.
struct ScratchEnvironment {
    dir: PathBuf,
}

impl ScratchEnvironment {
    fn new(name: &str) -> ScratchEnvironment {
        let dir = Path::new("/etc/puppet/code/environments").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("cp")
            .args(["-r", ENV])
            .arg(&dir)
            .status()
            .expect("cp");
        assert!(status.success());
        ScratchEnvironment { dir }
    }
}

impl Drop for ScratchEnvironment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_reanalyses_the_code() {
    let _serial = serial().await;
    let env = ScratchEnvironment::new("pcq_deploy_test");
    let node = "sync-deploy.example.com".to_string();
    let config = PcqConfig::puppetserver()
        .cycle_every(Duration::from_secs(3600))
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    let (pcq, _) = Pcq::start_listed(&config, std::slice::from_ref(&node)).await;
    let upload = |extra: &str| {
        let mut body = facts_body(&node, "web", 1);
        body["values"]["pcq_extra"] = json!(extra);
        body
    };
    // the node uploads its facts to the scratch environment
    let put = |body: Value| {
        let (pcq, node) = (&pcq, &node);
        async move {
            let path = format!("/puppet/v3/facts/{node}?environment=pcq_deploy_test");
            let body = serde_json::to_vec(&body).expect("json");
            let (_, text) = pcq.request(Via::Tls(node), Method::PUT, &path, &body).await;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            v["result"].as_str().unwrap_or("").to_string()
        }
    };
    assert_eq!(put(upload("a")).await, "changed");
    pcq.wait_compiled(std::slice::from_ref(&node), Duration::from_secs(60))
        .await;
    // the code does not read pcq_extra: a change of it is no change
    assert!(
        pcq.wait_analysed(&node, Duration::from_secs(20)).await,
        "analysis done"
    );
    assert_eq!(put(upload("b")).await, "unchanged");
    // new code reads it; after the deploy, a change of it recompiles
    let files = env.dir.join("modules/pcq_test/manifests/files.pp");
    let code = std::fs::read_to_string(&files).expect("files.pp");
    std::fs::write(
        &files,
        code.replace(
            "$color = pick($facts['pcq_color'], 'grey')",
            "$color = pick($facts['pcq_color'], 'grey')\n  $extra = pick($facts['pcq_extra'], 'none')\n  notify { \"extra ${extra}\": }",
        ),
    )
    .expect("new code");
    let (status, _) = pcq
        .request(
            Via::Admin,
            Method::POST,
            "/v1/deploys",
            &serde_json::to_vec(&json!({"environment": "pcq_deploy_test"})).expect("json"),
        )
        .await;
    assert_eq!(status, 202, "deploy accepted");
    assert!(
        pcq.wait(Duration::from_secs(60), || async {
            pcq.status(&node).await.is_some_and(|s| {
                s["fact_paths"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x == "pcq_extra"))
            })
        })
        .await,
        "re-analysed after the deploy: {:?}\n{}",
        pcq.status(&node).await,
        pcq.log_text()
    );
    assert_eq!(put(upload("c")).await, "changed");
}

/// Seconds since the epoch, as pcq's status says times.
fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_recompiles_only_the_nodes_reaching_what_changed() {
    let _serial = serial().await;
    let env = ScratchEnvironment::new("pcq_narrow_test");
    // ntp from the environment's own modules, so the test may change it
    let ntp = env.dir.join("modules/ntp");
    let status = Command::new("cp")
        .args(["-rL", "/usr/share/puppet/modules/ntp"])
        .arg(&ntp)
        .status()
        .expect("cp");
    assert!(status.success());
    // node default: pcq_test (ntp, concat, files); sync-*: pcq_test::files
    let with_ntp = ["narrow-1.example.com", "narrow-2.example.com"];
    let without = "sync-narrow.example.com";
    let names: Vec<String> = with_ntp
        .iter()
        .copied()
        .chain([without])
        .map(String::from)
        .collect();
    let config = PcqConfig::puppetserver()
        .cycle_every(Duration::from_secs(3600))
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    let (pcq, _) = Pcq::start_listed(&config, &names).await;
    for n in &names {
        let body = serde_json::to_vec(&facts_body(n, "web", 1)).expect("json");
        let path = format!("/puppet/v3/facts/{n}?environment=pcq_narrow_test");
        let (status, text) = pcq.request(Via::Tls(n), Method::PUT, &path, &body).await;
        assert_eq!(status, 200, "{n}: {text}");
    }
    let status_of = |n: String| {
        let pcq = &pcq;
        async move { pcq.status(&n).await.unwrap_or(Value::Null) }
    };
    // waits until each of `nodes` compiled after `t`; their catalog hashes
    let recompiled = |nodes: Vec<String>, t: f64| {
        let pcq = &pcq;
        async move {
            let ok = pcq
                .wait(Duration::from_secs(120), || {
                    let nodes = nodes.clone();
                    async move {
                        for n in &nodes {
                            let s = pcq.status(n).await.unwrap_or(Value::Null);
                            if s["last_compile"].as_f64().is_none_or(|c| c <= t) {
                                return false;
                            }
                        }
                        true
                    }
                })
                .await;
            assert!(
                ok,
                "{nodes:?} not recompiled after {t}:\n{}",
                pcq.log_text()
            );
            let mut hashes = Vec::new();
            for n in &nodes {
                let s = pcq.status(n).await.unwrap_or(Value::Null);
                hashes.push(s["catalog_hash"].as_str().unwrap_or("").to_string());
            }
            hashes
        }
    };
    let deploy = || {
        let pcq = &pcq;
        async move {
            let body =
                serde_json::to_vec(&json!({"environment": "pcq_narrow_test"})).expect("json");
            let (status, text) = pcq
                .request(Via::Admin, Method::POST, "/v1/deploys", &body)
                .await;
            assert_eq!(status, 202, "{text}");
            let report: Value = serde_json::from_str(&text).expect("deploy report");
            eprintln!("deploy: {report}");
            report
        }
    };
    // the soundness check: every node a deploy spared compiles to the
    // catalog it had
    let spared_stay = |spared: Vec<String>| {
        let pcq = &pcq;
        async move {
            let mut before = Vec::new();
            for n in &spared {
                let s = pcq.status(n).await.unwrap_or(Value::Null);
                before.push(s["catalog_hash"].as_str().unwrap_or("").to_string());
            }
            let t = epoch_now();
            for n in &spared {
                let path = format!("/v1/nodes/{n}/bump");
                let (status, text) = pcq.request(Via::Admin, Method::POST, &path, b"").await;
                assert_eq!(status, 202, "bump {n}: {text}");
            }
            let after = recompiled(spared.clone(), t).await;
            assert_eq!(before, after, "a spared node's catalog moved: {spared:?}");
        }
    };
    recompiled(names.clone(), 0.0).await;
    let t = epoch_now();
    // 1. the first deploy pcq sees has nothing to diff against: every node
    let first = deploy().await;
    assert_eq!(first["narrowed"], false, "{first}");
    assert_eq!(first["affected"], 3, "{first}");
    assert!(
        first["reasons"][0][0]
            .as_str()
            .unwrap_or("")
            .contains("first deploy"),
        "{first}"
    );
    recompiled(names.clone(), t).await;
    for n in &names {
        assert!(
            pcq.wait_analysed(n, Duration::from_secs(30)).await,
            "{n} analysed"
        );
    }
    // 2. nothing changed: nothing recompiles; an inert file changes nothing
    let same = deploy().await;
    assert_eq!(
        (
            same["narrowed"].clone(),
            same["affected"].clone(),
            same["nodes"].clone(),
            same["changed_files"].clone()
        ),
        (json!(true), json!(0), json!(0), json!(0)),
        "{same}"
    );
    std::fs::write(ntp.join("README.md"), "changed by the test\n").expect("readme");
    let inert = deploy().await;
    assert_eq!(
        (inert["affected"].clone(), inert["changed_files"].clone()),
        (json!(0), json!(1)),
        "{inert}"
    );
    spared_stay(names.clone()).await;
    // 3. one module's template: only the nodes with that module's classes
    let template = ntp.join("templates/ntp.conf.epp");
    let mut text = std::fs::read_to_string(&template).expect("template");
    text.push_str("# changed by pcq's narrowed-deploy test\n");
    std::fs::write(&template, text).expect("template");
    let hashes_before: Vec<Value> = {
        let mut v = Vec::new();
        for n in &with_ntp {
            v.push(status_of(n.to_string()).await["catalog_hash"].clone());
        }
        v
    };
    let t = epoch_now();
    let narrowed = deploy().await;
    assert_eq!(narrowed["narrowed"], true, "{narrowed}");
    assert_eq!(narrowed["affected"], 2, "{narrowed}");
    assert_eq!(narrowed["members"], 3, "{narrowed}");
    assert!(
        narrowed["reasons"][0][0]
            .as_str()
            .unwrap_or("")
            .contains("ntp/ntp.conf.epp"),
        "{narrowed}"
    );
    let with: Vec<String> = with_ntp.iter().map(|n| n.to_string()).collect();
    let after = recompiled(with.clone(), t).await;
    for (b, a) in hashes_before.iter().zip(&after) {
        assert_ne!(
            b.as_str().unwrap_or(""),
            a,
            "the template changed their catalogs"
        );
    }
    assert!(
        status_of(without.to_string()).await["last_compile"]
            .as_f64()
            .is_some_and(|c| c <= t),
        "the node without ntp was not recompiled"
    );
    spared_stay(vec![without.to_string()]).await;
    // 4. common Hiera data: every node
    let common = env.dir.join("data/common.yaml");
    let mut data = std::fs::read_to_string(&common).expect("common.yaml");
    data.push_str("pcq_test::unused_key: 1\n");
    std::fs::write(&common, data).expect("common.yaml");
    let t = epoch_now();
    let every = deploy().await;
    assert_eq!(every["narrowed"], false, "{every}");
    assert_eq!(every["affected"], 3, "{every}");
    assert!(
        every["reasons"][0][0]
            .as_str()
            .unwrap_or("")
            .contains("common.yaml"),
        "{every}"
    );
    recompiled(names.clone(), t).await;
    let m = pcq.metrics().await;
    assert_eq!(metric(&m, "pcq_deploys_total{result=\"narrowed\"}"), 3.0);
    assert_eq!(metric(&m, "pcq_deploys_total{result=\"every_node\"}"), 2.0);
    assert_eq!(metric(&m, "pcq_deploy_nodes_total{result=\"spared\"}"), 7.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_each_fact_alone_finds_no_miss_and_measures_precision() {
    let _serial = serial().await;
    // collectd, rsync and xinetd from Debian's packages
    let node = "metrics-01.example.com";
    let text = verify_through_server(&agent_facts(), &["--each"], &[node]);
    let line = text
        .lines()
        .find(|l| l.starts_with(node))
        .unwrap_or_else(|| panic!("no line for {node}: {text}"));
    assert!(line.contains("(sound)"), "{line}");
    // "N move the catalog; the analysis calls M used": something moves it
    // (its code does read facts), and no more than the analysis calls used
    let moved = number_after(line, "fact values; ").unwrap_or(0);
    let used = number_after(line, "the analysis calls ").unwrap_or(0);
    assert!(moved >= 1 && moved <= used, "{line}");
    assert!(text.contains("surplus:"), "{text}");
}
