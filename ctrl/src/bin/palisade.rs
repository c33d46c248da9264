//! `palisade`: the operator CLI (see `palisade --help`).
use clap::Parser;

fn main() {
    palisade_node::print_man_page_if_asked(<palisade_ctrl::cli::Cli as clap::CommandFactory>::command(), "1");
    // `observe --not FLAG VALUE`: clap does not keep the order of
    // different flags, so the negations are rewritten first.
    let args = match palisade_ctrl::cli::observe::rewrite_not(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = palisade_ctrl::cli::Cli::parse_from(args);
    if let Err(e) = palisade_ctrl::cli::commands::run(cli) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
