//! `palisade-ctrl`: the node agent. Loads the datapath, restores state and
//! serves the API; exits 64 on bad configuration.
fn main() {
    let args = match palisade_ctrl::agent::parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("palisade-ctrl: {e:#}");
            std::process::exit(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = palisade_ctrl::agent::run(args) {
        eprintln!("palisade-ctrl: {e:#}");
        std::process::exit(e.downcast_ref::<palisade_ctrl::agent::ConfigError>().map_or(1, |_| 64));
    }
}
