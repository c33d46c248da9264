//! Compiles the BPF programs with clang through libbpf-cargo and generates
//! their Rust skeletons (and the map ABI types) into OUT_DIR.
use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["endpoint"];

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
            .build_and_generate(out.join(format!("{prog}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {src}: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=lib");
    println!("cargo:rerun-if-env-changed=PALISADE_CLANG");
}
