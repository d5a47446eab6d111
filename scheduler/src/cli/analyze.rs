//! `pcq analyze`: what an environment's code can read, and `--verify`,
//! which checks that against Puppet Server.

use anyhow::{anyhow, bail, Result};

use super::args::AnalyzeArgs;
use super::render::emit;
use crate::daemon::analyze::{default_ruby, verify, Analysis};
use crate::daemon::backend::puppetserver::PuppetServer;
use crate::daemon::certname::Certname;
use crate::puppet_conf::PuppetSettings;

/// Runs the analysis, prints what was asked, then verifies the given nodes.
pub async fn analyze(args: AnalyzeArgs) -> Result<()> {
    // what is not given comes from this host's layout, as puppet.conf
    // says (the same place serve and sync read it)
    let puppet = PuppetSettings::discover();
    let envdir = args
        .envdir
        .clone()
        .unwrap_or_else(|| puppet.environments_dir.join("production"));
    let modulepath = match args.modulepath.is_empty() {
        true => puppet.basemodulepath.clone(),
        false => args.modulepath.clone(),
    };
    let ruby = args.ruby.clone().unwrap_or_else(default_ruby);
    let hiera: Vec<_> = Some(args.hiera.clone().unwrap_or(puppet.hiera_config.clone()))
        .filter(|h| h.is_file())
        .into_iter()
        .collect();
    let analysis = Analysis::run_with_snapshot(&ruby, &envdir, &modulepath, &hiera, None)?;
    emit(&report(&args, &analysis)?);
    if args.verify {
        verify_nodes(&args, &envdir, &puppet.ssldir, &analysis).await?;
    }
    Ok(())
}

/// The analyzer's JSON, the whole report, or what a node with the given
/// classes can read.
fn report(args: &AnalyzeArgs, analysis: &Analysis) -> Result<String> {
    let mut out = String::new();
    if args.json {
        out += &serde_json::to_string_pretty(&analysis.raw)?;
        out.push('\n');
    } else if args.classes.is_empty() && !args.verify {
        out += &analysis.report();
        if let Some(snapshot) = &analysis.snapshot {
            out += &snapshot.summary();
        }
    }
    if !args.classes.is_empty() {
        let deps = analysis.for_catalog(&args.classes, &[], None);
        if let Some(why) = &deps.widened_by {
            out += &format!("any fact, because of {why}\n");
        }
        for p in deps.facts.paths() {
            out += &format!("{p}\n");
        }
        for c in &deps.unknown_classes {
            out += &format!("unknown class: {c}\n");
        }
        for (kind, query) in &deps.collects {
            out += &format!("collects {kind} where {query}\n");
        }
    }
    Ok(out)
}

/// Compiles each `--certname` through Puppet Server (see
/// [`verify::verify`]); fails when the analysis missed a fact of any.
async fn verify_nodes(
    args: &AnalyzeArgs,
    envdir: &std::path::Path,
    default_ssldir: &std::path::Path,
    analysis: &Analysis,
) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let facts_file = args
        .facts
        .as_ref()
        .ok_or_else(|| anyhow!("--verify needs --facts"))?;
    let text = std::fs::read(facts_file).map_err(|e| anyhow!("{}: {e}", facts_file.display()))?;
    let facts = verify::facts_of(&text).map_err(|e| anyhow!("{}: {e}", facts_file.display()))?;
    // what-if compiles: the node need not have a certificate
    let identity = args.puppet.identity(default_ssldir);
    let server = PuppetServer::new(&args.puppet.server, &identity, false, false)?
        .allow_missing_certificates();
    let environment = envdir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: no environment name", envdir.display()))?
        .to_string();
    let mut unsound = 0;
    for name in &args.certnames {
        let certname = Certname::parse(name).map_err(|e| anyhow!("{name}: {e}"))?;
        if args.each {
            let precision =
                verify::each(analysis, &server, &certname, &environment, &facts).await?;
            emit(&format!("{precision}\n"));
            if !precision.missed.is_empty() {
                unsound += 1;
            }
            continue;
        }
        let verdict = verify::verify(analysis, &server, &certname, &environment, &facts).await?;
        emit(&format!("{verdict}\n"));
        if !verdict.sound() {
            unsound += 1;
        }
    }
    if unsound > 0 {
        bail!(
            "{unsound} of {} nodes: the analysis missed facts the catalog reads",
            args.certnames.len()
        );
    }
    Ok(())
}
