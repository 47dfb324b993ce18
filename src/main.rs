//! The `gatehouse` binary: parse the command line, run, map errors to an exit status.

use std::process::ExitCode;

/// mimalloc: the request path allocates and frees many small buffers across
/// threads, where glibc's malloc showed up at about 9 % of the broker's CPU
/// (keep-alive relay: +15-20 % responses per CPU-second). Built with
/// `no_thp`: with transparent huge pages its arenas grew the resident size
/// by 2 MiB steps (36 KiB per idle connection instead of 26).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gatehouse::cli::main()
}
