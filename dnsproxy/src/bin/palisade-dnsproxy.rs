//! `palisade-dnsproxy`: the transparent DNS proxy (see the library crate);
//! exits 64 on bad configuration.
fn main() {
    let args = match palisade_dnsproxy::parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("palisade-dnsproxy: {e:#}");
            std::process::exit(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = palisade_dnsproxy::run(args) {
        eprintln!("palisade-dnsproxy: {e:#}");
        std::process::exit(e.downcast_ref::<palisade_dnsproxy::ConfigError>().map_or(1, |_| 64));
    }
}
