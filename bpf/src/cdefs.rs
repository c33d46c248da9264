//! Test support: the object-like `#define NAME VALUE` lines of the C
//! headers in `bpf/lib/`, for the tests that keep the Rust mirrors of C
//! constants in sync (drop reasons, identities, directions, flag bits).
use std::collections::BTreeMap;

/// `NAME -> value` of every `#define NAME VALUE` in `bpf/lib/<file>` whose
/// value is an integer literal (decimal or hex, optional `U`/`L` suffixes,
/// optional parentheses) or `(A << B)` of two such. Function-like macros
/// and other values (`bpf_htonl(..)`, expressions) are left out.
pub(crate) fn defines(file: &str) -> BTreeMap<String, u64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lib").join(file);
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse(&src)
}

fn parse(src: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#define") else { continue };
        let rest = rest.split("/*").next().unwrap_or("").split("//").next().unwrap_or("");
        let mut it = rest.split_whitespace();
        let Some(name) = it.next() else { continue };
        if name.contains('(') {
            continue; // function-like macro
        }
        let value: String = it.collect::<Vec<_>>().join(" ");
        if let Some(v) = value_of(&value) {
            assert!(out.insert(name.to_string(), v).is_none(), "`{name}` is defined twice");
        }
    }
    out
}

fn value_of(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or(s).trim();
    if let Some((a, b)) = s.split_once("<<") {
        return literal(a.trim())?.checked_shl(u32::try_from(literal(b.trim())?).ok()?);
    }
    literal(s)
}

fn literal(s: &str) -> Option<u64> {
    let s = s.trim_end_matches(['u', 'U', 'l', 'L']);
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[test]
fn parses_the_forms_the_headers_use() {
    let d = parse(
        "#define A 7\n#define B (1U << 5) /* c */\n #define C 0x0a00\n#define D 16 // x\n\
         #define E bpf_htonl(0x7f000001)\n#define F(x) (x)\n#define G\n#define H 21600ULL\n",
    );
    let want: BTreeMap<String, u64> =
        [("A", 7), ("B", 32), ("C", 0x0a00), ("D", 16), ("H", 21600)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(d, want);
}
