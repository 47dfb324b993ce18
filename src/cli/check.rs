//! `gatehouse check`: prints the offline validation of the home (config,
//! partner files, CA material; the checks are `crate::check`) and exits
//! non-zero when it finds a problem. When a broker runs on the home, it
//! also says which changed settings a reload would apply and which need a
//! restart (asked of the broker over `data/admin.sock`).

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
        against_running(home, &loaded);
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("gatehouse: check found {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Compares the files with what the running broker (if any) runs.
fn against_running(home: &Home, loaded: &config::Loaded) {
    let running = match crate::control::socket::running_settings(home) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            println!("note: the running broker could not be asked what it runs: {e}");
            return;
        }
    };
    let partners: Vec<&config::Partner> = loaded.partners.iter().collect();
    let files = config::settings::flatten(&loaded.gateway, &partners);
    let diff = config::settings::against_running(&running.started, &running.applied, &files);
    if diff.on_reload.is_empty() && diff.on_restart.is_empty() {
        println!("running broker: every setting in the files is in force");
        return;
    }
    if !diff.on_reload.is_empty() {
        println!(
            "running broker: a reload (SIGHUP) would apply: {}",
            diff.on_reload.join(", ")
        );
    }
    if !diff.on_restart.is_empty() {
        println!(
            "running broker: changed, takes effect at restart: {}",
            diff.on_restart.join(", ")
        );
    }
}
