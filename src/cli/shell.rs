//! `gatehouse completions SHELL` and `gatehouse man`: shell completion
//! scripts and man pages generated from the clap definitions themselves, so
//! they never drift from the commands. Also the test that every argument of
//! every command has a help line.

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::Cli;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for. Install, e.g.: bash:
    /// `gatehouse completions bash > /etc/bash_completion.d/gatehouse`;
    /// zsh: into a folder on `$fpath` as `_gatehouse`; fish:
    /// `~/.config/fish/completions/gatehouse.fish`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per command (gatehouse.1, gatehouse-cert.1,
    /// gatehouse-cert-issue.1, ...) into this folder, instead of printing
    /// gatehouse(1) to standard output.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `a.shell`.
pub fn completions(a: CompletionsArgs) -> Result<ExitCode, Box<dyn Error>> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "gatehouse", &mut out);
    write_stdout(&out)
}

/// Prints gatehouse(1), or writes every command's page into `a.dir`.
pub fn man(a: ManArgs) -> Result<ExitCode, Box<dyn Error>> {
    let cmd = Cli::command();
    match a.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| format!("cannot write the man pages into {}: {e}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode, Box<dyn Error>> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // Piped into `head` and closed: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument (flag, option or positional) of every command, hidden
    /// ones aside, with no help line: `command path: arg`.
    fn args_without_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                out.push(format!("{path}: {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            args_without_help(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_has_a_help_line() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        args_without_help(&cmd, "gatehouse", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without a help line (add a /// doc comment):\n  {}",
            missing.join("\n  ")
        );
    }

    #[test]
    fn the_walk_finds_an_argument_without_help() {
        let cmd = clap::Command::new("t")
            .arg(
                clap::Arg::new("documented")
                    .long("documented")
                    .help("Says what it does."),
            )
            .subcommand(clap::Command::new("sub").arg(clap::Arg::new("bare").long("bare")));
        let mut missing = Vec::new();
        args_without_help(&cmd, "t", &mut missing);
        assert_eq!(missing, ["t sub: bare"]);
    }

    #[test]
    fn completions_and_man_page_name_the_commands() {
        let mut cmd = Cli::command();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "gatehouse", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(
            bash.contains("gatehouse__subcmd__cert__subcmd__issue"),
            "{bash}"
        );
        assert!(bash.contains("--days"));
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH gatehouse 1"), "{man}");
        assert!(man.contains("serve"));
    }
}
