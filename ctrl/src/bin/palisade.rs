//! `palisade`: the operator CLI (see `palisade --help`).
use clap::Parser;

fn main() {
    let cli = palisade_ctrl::cli::Cli::parse();
    if let Err(e) = palisade_ctrl::cli::commands::run(cli) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
