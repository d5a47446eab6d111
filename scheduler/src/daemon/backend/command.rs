//! Compiles with `puppet catalog compile` (no Puppet Server needed).
//!
//! Before each compile the node's stored facts are written where Puppet's
//! YAML facts terminus reads them (`{vardir}/yaml/facts/<certname>.yaml`);
//! the command's standard output is the catalog JSON, possibly after a few
//! `Notice:` lines. One compile costs about a second of Ruby start-up.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::compiler::{agent_facts, BoxFuture, Compiler, Failure, Job};

/// Runs a compile command.
#[derive(Clone, Debug)]
pub struct CommandCompiler {
    argv: Vec<String>,
    vardir: PathBuf,
}

impl CommandCompiler {
    /// `argv` with `{certname}`, `{environment}`, `{vardir}` placeholders;
    /// `vardir` is created.
    pub fn new(argv: Vec<String>, vardir: &Path) -> std::io::Result<CommandCompiler> {
        std::fs::create_dir_all(vardir.join("yaml/facts"))?;
        Ok(CommandCompiler {
            argv,
            vardir: vardir.to_owned(),
        })
    }
}

/// The facts file Puppet's YAML terminus reads. JSON is YAML, so the values
/// go in as one flow mapping.
fn facts_yaml(certname: &str, values: &serde_json::Map<String, serde_json::Value>) -> String {
    format!(
        "--- !ruby/object:Puppet::Node::Facts\nname: {certname}\nvalues: {}\n",
        serde_json::Value::Object(values.clone())
    )
}

/// The catalog JSON in the command's output: from the first line that
/// starts with `{`.
fn catalog_part(stdout: &[u8]) -> Option<&[u8]> {
    let mut offset = 0;
    for line in stdout.split(|&b| b == b'\n') {
        if line.first() == Some(&b'{') {
            return Some(&stdout[offset..]);
        }
        offset += line.len() + 1;
    }
    None
}

impl Compiler for CommandCompiler {
    fn compile(&self, job: Job) -> BoxFuture<Result<Vec<u8>, Failure>> {
        let vardir = self.vardir.clone();
        let argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                a.replace("{certname}", job.certname.as_str())
                    .replace("{environment}", &job.environment)
                    .replace("{vardir}", &vardir.display().to_string())
            })
            .collect();
        Box::pin(async move {
            let mut values = job.facts.clone();
            agent_facts(&mut values, &job.certname, &job.environment);
            let file = vardir.join(format!("yaml/facts/{}.yaml", job.certname));
            tokio::fs::write(&file, facts_yaml(job.certname.as_str(), &values))
                .await
                .map_err(|e| Failure::Server(format!("{}: {e}", file.display())))?;
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| Failure::Server("no compile command".into()))?;
            let child = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Failure::Server(format!("{program}: {e}")))?;
            let output = tokio::time::timeout(job.timeout, child.wait_with_output())
                .await
                .map_err(|_| Failure::Timeout(job.timeout))?
                .map_err(|e| Failure::Server(format!("{program}: {e}")))?;
            if !output.status.success() {
                let err = String::from_utf8_lossy(&output.stderr);
                let out = String::from_utf8_lossy(&output.stdout);
                let text: String = format!("{}{}", err.trim(), out.trim())
                    .chars()
                    .take(2000)
                    .collect();
                return Err(Failure::Node(format!("{}: {text}", output.status)));
            }
            catalog_part(&output.stdout)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Failure::Node("no catalog in the command's output".into()))
        })
    }

    fn probe(&self) -> BoxFuture<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_catalog_after_notices() {
        let out = b"Notice: Compiled catalog for x in 0.1s\n{\"name\":\"x\"}\n";
        assert_eq!(catalog_part(out), Some(&b"{\"name\":\"x\"}\n"[..]));
        assert_eq!(catalog_part(b"Error: boom\n"), None);
    }

    #[test]
    fn facts_file_is_yaml_with_the_values() {
        let mut v = serde_json::Map::new();
        v.insert("os".into(), serde_json::json!({"family": "Debian"}));
        let y = facts_yaml("n1", &v);
        assert!(y.starts_with("--- !ruby/object:Puppet::Node::Facts\nname: n1\nvalues: {\"os\""));
    }
}
