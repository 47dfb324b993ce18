//! The `gatehouse` binary: parse the command line, run, map errors to an exit status.

use std::process::ExitCode;

fn main() -> ExitCode {
    gatehouse::cli::main()
}
