//! The `portcullis` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{Cli, Command};
use portcullis::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Check(args) => commands::check(args, &mut std::io::stdout().lock()),
        Command::Explain(args) => commands::explain(
            args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Run(_) => {
            eprintln!("portcullis run: not implemented yet");
            Ok(commands::exit::USAGE)
        }
    };
    match code {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::from(commands::exit::USAGE as u8)
        }
    }
}
