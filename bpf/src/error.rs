//! The crate's error type, and the `ctx` shorthand that names the object an
//! underlying libbpf or I/O error was about. Its own module so every other
//! module can use it without importing the crate root.

/// Errors from loading, attaching and map access, each naming its object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Libbpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: value of {got} bytes, expected {expected}")]
    ValueSize { map: &'static str, got: usize, expected: usize },
    #[error("map {map} is full ({max} entries); nothing was changed — raise its size (palisade-ctrl --{map}-map-size; a restart resizes it in place, keeping its entries) or reduce the rules")]
    Full { map: &'static str, max: u32 },
    #[error("resizing map {map}: {detail}")]
    Resize { map: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, libbpf_rs::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Libbpf { what: what(), source })
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { what: what(), source })
    }
}
