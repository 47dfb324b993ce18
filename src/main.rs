//! The `gatehouse` binary: parse the command line, run, map errors to an exit status.

use std::process::ExitCode;

/// mimalloc: the request path allocates and frees many small buffers across
/// threads, where glibc's malloc showed up at about 9 % of the broker's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gatehouse::cli::main()
}
