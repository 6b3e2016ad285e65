//! The `wasmpush` command: parses the arguments, sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match wasmpush::Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("wasmpush: {err:#}");
            ExitCode::FAILURE
        }
    }
}
