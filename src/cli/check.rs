//! `gatehouse check`: prints the offline validation of the home (config,
//! partner files, CA material; the checks are `crate::check`) and exits
//! non-zero when it finds a problem.

use std::process::ExitCode;

use super::CliResult;
use crate::config;
use crate::home::Home;

pub(super) fn run(home: &Home) -> CliResult {
    let problems = crate::check::check_home(home);
    for line in crate::check::describe_pki(home) {
        println!("{line}");
    }
    if problems.is_empty() {
        let loaded = config::load_all(home)?;
        println!(
            "ok: {} and {} partner file(s) are valid; CA material checks out",
            home.config_file().display(),
            loaded.partners.len()
        );
        if loaded.gateway.upstreams.is_empty() {
            println!(
                "note: no [upstreams.NAME] is configured yet: the broker serves, but every partner call is denied until one is (see the commented example in gatehouse.toml)"
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("gatehouse: check found {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}
