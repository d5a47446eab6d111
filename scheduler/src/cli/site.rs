//! `pcq site`: what a site was seen to do, written as the file `pcq-sim
//! scenario` builds a scenario from.
//!
//! From a running pcq (its admin API, `GET /v1/site`: what the daemon saw
//! since it started) or, for a site that does not run pcq yet, from
//! PuppetDB and the Puppet Servers' status API ([`super::puppetdb`]).
//! The simulator does no I/O, so the reading is here.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use reqwest::Method;

use super::args::identity;
use super::args::SiteArgs;
use super::client;
use super::puppetdb;
use super::render::emit;
use crate::daemon::backend::puppetserver::PuppetServer;
use crate::private_file;
use crate::puppet_conf::PuppetSettings;
use crate::site::Site;

/// Reads the site and writes it.
pub async fn site(args: SiteArgs) -> Result<()> {
    let site = match &args.from_puppetdb {
        None => {
            let v = client::call(
                &client::base(&args.api),
                args.api.token_file.as_deref(),
                Method::GET,
                "/v1/site",
                None,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            serde_json::from_value::<Site>(v)
                .map_err(|e| anyhow!("pcq answered something this version cannot read: {e}"))?
        }
        Some(url) => from_puppetdb(&args, url).await?,
    };
    site.check().map_err(anyhow::Error::msg)?;
    let summary = format!(
        "{} nodes in {} environments, {} masters, {} compile times over {:.1} hours",
        site.nodes(),
        site.environments.len(),
        site.masters.len(),
        site.masters
            .iter()
            .map(|m| m.compile_seconds.len())
            .sum::<usize>(),
        site.days() * 24.0
    );
    let json = serde_json::to_string_pretty(&site)? + "\n";
    match &args.out {
        Some(path) => {
            private_file::write(path, json.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "pcq site: {summary}; wrote {}; next: pcq-sim scenario {} --out DIR",
                path.display(),
                path.display()
            );
        }
        None => {
            eprintln!("pcq site: {summary}");
            emit(&json);
        }
    }
    Ok(())
}

async fn from_puppetdb(args: &SiteArgs, url: &str) -> Result<Site> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.puppetservers.is_empty() {
        anyhow::bail!(
            "give --puppetserver URL for each Puppet Server (at least one): its JRuby pool sizes the masters"
        );
    }
    let puppet = PuppetSettings::discover();
    let ssl = identity(
        args.ssldir.as_deref(),
        args.as_certname.as_deref(),
        &puppet.ssldir,
    );
    let mut pools = BTreeMap::new();
    for server_url in &args.puppetservers {
        let server = PuppetServer::agent_like(server_url, &ssl)?;
        let pool = server.jruby_pool().await.map_err(anyhow::Error::msg)?;
        pools.insert(host_of(server_url), pool);
    }
    let client = match url.starts_with("https://") {
        true => reqwest::Client::builder()
            .tls_backend_preconfigured(ssl.client_config()?)
            .build()?,
        false => reqwest::Client::new(),
    };
    let (nodes, tally, exported, collecting) =
        puppetdb::fetch(&client, url, args.window, args.certnames.as_deref())
            .await
            .map_err(anyhow::Error::msg)?;
    let source = format!("PuppetDB at {}", without_userinfo(url));
    puppetdb::summarize(&source, &nodes, tally, &exported, &collecting, &pools)
        .map_err(anyhow::Error::msg)
}

/// `url` without a user name or password in it: the source named in a
/// site file (which a scenario quotes) must not carry a credential.
fn without_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// The host of a URL: the name a Puppet Server's reports carry as their
/// producer (its certname, when that is its host name).
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_servers_name_is_its_host() {
        assert_eq!(
            super::host_of("https://puppet.example.com:8140/"),
            "puppet.example.com"
        );
        assert_eq!(super::host_of("puppet"), "puppet");
        assert_eq!(
            super::without_userinfo("https://u:secret@pdb:8081/"),
            "https://pdb:8081/"
        );
    }
}
