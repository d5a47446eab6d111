//! What Puppet's own configuration says, read without starting Ruby.
//!
//! `pcq sync` on a node, the `pcq` CLI and the daemon's defaults all need
//! what `puppet config print ssldir certname ...` would answer, and the
//! host name Puppet takes as the certname when none is set. Starting Ruby
//! for that costs more CPU than a whole no-change sync, so this reads
//! puppet.conf itself, for Puppet's own packages and Debian's layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// This host's name (Puppet's default certname).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Puppet's settings as `puppet config print` would give them for the
/// agent, read from puppet.conf without starting Ruby (that alone costs
/// more CPU than a whole no-change sync).
#[derive(Clone, Debug, PartialEq)]
pub struct PuppetSettings {
    /// `ssldir`.
    pub ssldir: PathBuf,
    /// `certname`.
    pub certname: String,
    /// `client_datadir`.
    pub client_datadir: PathBuf,
    /// `vardir`.
    pub vardir: PathBuf,
    /// `environment`, if set.
    pub environment: Option<String>,
    /// The server's `environmentpath` (its first directory).
    pub environments_dir: PathBuf,
    /// The server's `basemodulepath`.
    pub basemodulepath: Vec<PathBuf>,
    /// The server's global `hiera_config`.
    pub hiera_config: PathBuf,
}

impl PuppetSettings {
    /// Reads `puppet.conf` (Puppet's own packages, then Debian's layout);
    /// unset keys get that layout's defaults.
    pub fn discover() -> PuppetSettings {
        let aio = Path::new("/etc/puppetlabs/puppet/puppet.conf");
        let (conf, confdir, vardir) = if aio.exists() {
            (
                aio.to_path_buf(),
                "/etc/puppetlabs/puppet",
                "/opt/puppetlabs/puppet/cache",
            )
        } else {
            (
                PathBuf::from("/etc/puppet/puppet.conf"),
                "/etc/puppet",
                "/var/cache/puppet",
            )
        };
        let text = std::fs::read_to_string(&conf).unwrap_or_default();
        PuppetSettings::from_conf(&text, confdir, vardir, aio.exists())
    }

    fn from_conf(text: &str, confdir: &str, default_vardir: &str, aio: bool) -> PuppetSettings {
        let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
        let mut section = "main".to_string();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                sections
                    .entry(section.clone())
                    .or_default()
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let get = |key: &str| -> Option<String> {
            ["agent", "main"]
                .iter()
                .find_map(|s| sections.get(*s).and_then(|m| m.get(key)).cloned())
        };
        // the server's settings: [server] (Puppet 7+; [master] before), [main]
        let server = |key: &str| -> Option<String> {
            ["server", "master", "main"]
                .iter()
                .find_map(|s| sections.get(*s).and_then(|m| m.get(key)).cloned())
        };
        let (default_codedir, default_modules) = if aio {
            (
                "/etc/puppetlabs/code",
                "$codedir/modules:/opt/puppetlabs/puppet/modules",
            )
        } else {
            (
                "/etc/puppet/code",
                "$codedir/modules:/usr/share/puppet/modules",
            )
        };
        let codedir = server("codedir").unwrap_or_else(|| default_codedir.to_string());
        let code = |v: String| v.replace("$codedir", &codedir).replace("$confdir", confdir);
        let vardir = get("vardir").unwrap_or_else(|| default_vardir.to_string());
        let default_ssldir = if aio {
            format!("{confdir}/ssl")
        } else {
            "/var/lib/puppet/ssl".to_string()
        };
        let expand = |v: String| {
            v.replace("$confdir", confdir)
                .replace("$vardir", &vardir)
                .replace(
                    "$ssldir",
                    &get("ssldir").unwrap_or_else(|| default_ssldir.clone()),
                )
        };
        PuppetSettings {
            ssldir: PathBuf::from(expand(
                get("ssldir").unwrap_or_else(|| default_ssldir.clone()),
            )),
            certname: get("certname").unwrap_or_else(hostname).to_lowercase(),
            client_datadir: PathBuf::from(expand(
                get("client_datadir").unwrap_or_else(|| format!("{vardir}/client_data")),
            )),
            vardir: PathBuf::from(&vardir),
            environment: get("environment"),
            environments_dir: PathBuf::from(code(
                server("environmentpath")
                    .and_then(|p| p.split(':').next().map(str::to_string))
                    .unwrap_or_else(|| "$codedir/environments".into()),
            )),
            basemodulepath: code(
                server("basemodulepath").unwrap_or_else(|| default_modules.to_string()),
            )
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
            hiera_config: PathBuf::from(code(
                server("hiera_config").unwrap_or_else(|| "$confdir/hiera.yaml".into()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_puppet_conf_like_puppet_does() {
        let conf = "[main]\nssldir = $vardir/ssl\nvardir = /srv/puppet\n\n[agent]\ncertname = Web01.Example.COM # comment\nenvironment = staging\n";
        let s = PuppetSettings::from_conf(conf, "/etc/puppet", "/var/cache/puppet", false);
        assert_eq!(s.ssldir, PathBuf::from("/srv/puppet/ssl"));
        assert_eq!(s.certname, "web01.example.com");
        assert_eq!(s.client_datadir, PathBuf::from("/srv/puppet/client_data"));
        assert_eq!(s.environment.as_deref(), Some("staging"));
        let d = PuppetSettings::from_conf("", "/etc/puppet", "/var/cache/puppet", false);
        assert_eq!(d.ssldir, PathBuf::from("/var/lib/puppet/ssl"));
        assert_eq!(
            d.client_datadir,
            PathBuf::from("/var/cache/puppet/client_data")
        );
        let a = PuppetSettings::from_conf(
            "",
            "/etc/puppetlabs/puppet",
            "/opt/puppetlabs/puppet/cache",
            true,
        );
        assert_eq!(a.ssldir, PathBuf::from("/etc/puppetlabs/puppet/ssl"));
        // the code, Puppet's own packages and Debian's
        assert_eq!(
            a.environments_dir,
            PathBuf::from("/etc/puppetlabs/code/environments")
        );
        assert_eq!(
            a.basemodulepath,
            vec![
                PathBuf::from("/etc/puppetlabs/code/modules"),
                PathBuf::from("/opt/puppetlabs/puppet/modules")
            ]
        );
        assert_eq!(
            a.hiera_config,
            PathBuf::from("/etc/puppetlabs/puppet/hiera.yaml")
        );
        assert_eq!(
            d.environments_dir,
            PathBuf::from("/etc/puppet/code/environments")
        );
        assert_eq!(
            d.basemodulepath,
            vec![
                PathBuf::from("/etc/puppet/code/modules"),
                PathBuf::from("/usr/share/puppet/modules")
            ]
        );
        assert_eq!(d.hiera_config, PathBuf::from("/etc/puppet/hiera.yaml"));
        // a server section moves them
        let conf = "[server]\nenvironmentpath = /srv/envs:/other\nbasemodulepath = $codedir/site\ncodedir = /srv/code\n";
        let c = PuppetSettings::from_conf(conf, "/etc/puppet", "/var/cache/puppet", false);
        assert_eq!(c.environments_dir, PathBuf::from("/srv/envs"));
        assert_eq!(c.basemodulepath, vec![PathBuf::from("/srv/code/site")]);
    }
}
