//! Compiles the BPF programs with clang through libbpf-cargo and generates
//! their Rust skeletons (and the map ABI types) into OUT_DIR, then adds the
//! zerocopy derives to the map ABI types (see [`ABI_STRUCTS`]).
use std::{env, path::Path, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["endpoint"];

/// The C structs (`bpf/lib/*.h`) that are map keys, map values or ring
/// buffer records: the generated Rust type of each gets zerocopy's derives,
/// so `src/abi.rs` converts them to and from bytes without `unsafe`.
/// zerocopy checks at compile time that each is a `repr(C)` struct of
/// integers without implicit padding (libbpf-cargo spells padding out as
/// `__pad_N` fields). A struct missing from the generated file (renamed in
/// C) fails the build here rather than silently losing its derives.
const ABI_STRUCTS: &[&str] = &[
    "ct6_key",
    "ct_entry",
    "ct_key",
    "endpoint_info",
    "endpoint_key",
    "flow_event",
    "flow_rl_key",
    "fqdn_entry",
    "fqdn_key",
    "ipcache_entry",
    "ipcache_host_key",
    "ipcache_lpm_key",
    "metrics_value",
    "policy_cache_key",
    "policy_entry",
    "policy_key",
    "policy_match",
    "proxy_tw_key",
];

const ZEROCOPY_DERIVE: &str = "#[derive(::zerocopy::FromBytes, ::zerocopy::IntoBytes, ::zerocopy::Immutable, ::zerocopy::KnownLayout)]";

/// Adds [`ZEROCOPY_DERIVE`] to each of [`ABI_STRUCTS`] in the generated
/// skeleton, which declares them as
/// `#[derive(..)] #[repr(C)] pub struct name {` on three lines.
fn add_abi_derives(skel: &Path) {
    let src = std::fs::read_to_string(skel).unwrap_or_else(|e| panic!("reading {}: {e}", skel.display()));
    let mut lines: Vec<String> = src.lines().map(str::to_string).collect();
    for name in ABI_STRUCTS {
        let decl = format!("pub struct {name} {{");
        let found: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim() == decl).map(|(i, _)| i).collect();
        let [i] = found[..] else {
            panic!(
                "{}: expected exactly one `{decl}` in the generated skeleton, found {} \
                 (renamed or removed in bpf/lib/*.h? update ABI_STRUCTS in build.rs and src/abi.rs)",
                skel.display(),
                found.len()
            );
        };
        let attrs_ok = i >= 2 && lines[i - 1].trim() == "#[repr(C)]" && lines[i - 2].trim().starts_with("#[derive(");
        assert!(attrs_ok, "{}: `{decl}` is not preceded by #[derive(..)] #[repr(C)]; libbpf-cargo's output changed", skel.display());
        let indent: String = lines[i].chars().take_while(|c| c.is_whitespace()).collect();
        lines.insert(i, format!("{indent}{ZEROCOPY_DERIVE}"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(skel, out).unwrap_or_else(|e| panic!("writing {}: {e}", skel.display()));
}

fn clang() -> PathBuf {
    // Debian 12 ships versioned clang only; PALISADE_CLANG overrides.
    if let Ok(c) = env::var("PALISADE_CLANG") {
        return c.into();
    }
    for c in ["clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-14"] {
        if let Some(path) = env::var_os("PATH").iter().flat_map(env::split_paths).map(|d| d.join(c)).find(|p| p.is_file()) {
            return path;
        }
    }
    panic!("no clang found on PATH: run scripts/setup.sh (installs clang-19) or set PALISADE_CLANG");
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("target arch is set by cargo");
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("unsupported target arch {other}"),
    };
    let clang = clang();
    for prog in PROGRAMS {
        let src = format!("{prog}.bpf.c");
        let skel = out.join(format!("{prog}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args([
                "-I".to_string(),
                "lib".to_string(),
                format!("-I/usr/include/{multiarch}"),
                "-Wall".to_string(),
                "-Werror".to_string(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {src}: {e:#}"));
        add_abi_derives(&skel);
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=lib");
    println!("cargo:rerun-if-env-changed=PALISADE_CLANG");
}
