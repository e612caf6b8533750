//! `sat`: the Satellite command line. Parse, set up logging, build the runtime, run the
//! command, map its error to an exit code. The logic lives in the library crates.

mod admin;
mod args;
mod cli;
mod exit;
mod log;
mod relays;
mod ssh;

use std::process::ExitCode;

use clap::Parser;

// Every request allocates a stream's state and two HTTP connections' buffers, on whichever
// worker thread runs it; glibc's malloc spent a sixth of the relay's CPU on that under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = log::init(cli.command.default_log_level()) {
        eprintln!("sat: {e}");
        return ExitCode::from(exit::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sat: cannot start the async runtime: {e}");
            return ExitCode::from(exit::EXIT_SOFTWARE);
        }
    };
    let code = runtime.block_on(cli.command.run());
    // Tasks still running (a tunnel cut at the end of a drain grace) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}
