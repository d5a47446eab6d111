//! `pcq-package-docs OUT`: the man pages and shell completions of `pcq` and
//! `pcq-sim`, rendered from their clap definitions (`scheduler::cli::args`,
//! `simulator::cli`), so that what the package documents is what the
//! binaries parse.
//!
//! Writes `OUT/man/<command>[-<subcommand>].1` (one page per command and
//! per subcommand, as git and cargo have) and
//! `OUT/completions/{<bin>.bash, _<bin>, <bin>.fish}`. `scripts/package`
//! runs it before `cargo deb`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: pcq-package-docs OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&out)) {
        Ok(files) => {
            println!(
                "{} files written under {}",
                files.len(),
                out.to_string_lossy()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pcq-package-docs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Both commands' pages and completions under `out`; the files written.
pub fn write_all(out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for cmd in [
        scheduler::cli::args::Cli::command(),
        simulator::cli::Cli::command(),
    ] {
        files.extend(man_pages(cmd.clone(), &out.join("man"))?);
        files.extend(completions(cmd, &out.join("completions"))?);
    }
    Ok(files)
}

/// One page for the command and one per subcommand (`pcq-serve.1`), with
/// the subcommand's full name in its title.
fn man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let mut files = Vec::new();
    page(&cmd, cmd.get_name(), dir, &mut files)?;
    Ok(files)
}

fn page(cmd: &Command, name: &str, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let named = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(named)
        .render(&mut text)
        .with_context(|| format!("rendering {name}(1)"))?;
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    files.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        page(sub, &format!("{name}-{}", sub.get_name()), dir, files)?;
    }
    Ok(())
}

/// bash, zsh and fish completions, named as each shell's vendor directory
/// expects.
fn completions(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = cmd.get_name().to_string();
    let mut files = Vec::new();
    for (shell, file) in [
        (Shell::Bash, format!("{bin}.bash")),
        (Shell::Zsh, format!("_{bin}")),
        (Shell::Fish, format!("{bin}.fish")),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &bin, &mut text);
        if text.is_empty() {
            bail!("{shell} completion of {bin} came out empty");
        }
        let path = dir.join(file);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page_and_every_shell_a_completion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_all(dir.path()).expect("written");
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(String::from))
            .collect();
        for sub in scheduler::cli::args::Cli::command().get_subcommands() {
            let page = format!("pcq-{}.1", sub.get_name());
            assert!(names.contains(&page), "{page} missing from {names:?}");
        }
        for want in [
            "pcq.1",
            "pcq-sim.1",
            "pcq-sim-plan.1",
            "pcq.bash",
            "_pcq",
            "pcq.fish",
            "pcq-sim.bash",
            "_pcq-sim",
            "pcq-sim.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing");
        }
        let serve = fs::read_to_string(dir.path().join("man/pcq-serve.1")).expect("page");
        assert!(serve.contains(".TH pcq-serve 1"), "{serve}");
        assert!(serve.contains("config"), "the page names --config: {serve}");
        let bash = fs::read_to_string(dir.path().join("completions/pcq.bash")).expect("bash");
        assert!(bash.contains("check-config"), "subcommands complete");
    }
}
