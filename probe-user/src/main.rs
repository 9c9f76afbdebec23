//! `tuneprobe`: per-pod kernel signals from eBPF. One module per subcommand in `cli`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return cli::usage_error(&err),
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level())
        .format_timestamp(None)
        .init();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tuneprobe: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
