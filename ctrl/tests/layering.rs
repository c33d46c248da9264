//! The crate's layering, checked from its sources: the import graph of
//! `ctrl/src` (every `crate::`, `super::` and child-module path a file
//! names, `use` trees expanded) has no cycle; the CLI side never reaches
//! into the agent side nor the agent into the CLI; `impl Daemon` lives only
//! in the daemon's module. These are the rules docs/architecture.md states;
//! a change that breaks one fails here, naming the files.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Module path (`agent::daemon`, `api`, `cli`) of every source file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            out.insert(parts.join("::"), p);
        }
    }
    out
}

/// The source without comments and string literals (a path in a doc
/// comment or a message is not an import).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // a char literal ('"', '\n'); lifetimes ('a) are left alone
            let end = text[i + 1..].find('\'').map_or(b.len(), |j| i + 2 + j);
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{self, D}}`) into paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let t = tree.split(" as ").next().unwrap().trim();
            if t == "self" {
                out.push(prefix.trim_end_matches("::").to_string());
            } else if !t.is_empty() {
                out.push(format!("{prefix}{t}"));
            }
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap()];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&format!("{prefix}{head}"), &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&format!("{prefix}{head}"), &inner[start..], out);
        }
    }
}

/// Every path the file at module `me` names, made absolute (`a::b::C`).
fn paths(me: &str, code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let parent = |m: &str| m.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
    let absolute = |p: &str| -> Option<String> {
        if let Some(rest) = p.strip_prefix("crate::") {
            return Some(rest.to_string());
        }
        if let Some(rest) = p.strip_prefix("super::") {
            // `super` of `agent::x` (agent/x.rs) and of `cli` (cli/mod.rs)
            // alike is the parent module.
            let base = parent(me);
            return Some(if base.is_empty() { rest.to_string() } else { format!("{base}::{rest}") });
        }
        let first = p.split("::").next().unwrap();
        children.contains(first).then(|| format!("{me}::{p}").trim_start_matches("::").to_string())
    };
    // `use` trees.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let tail = &rest[i + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if before_ok {
            let mut v = Vec::new();
            expand("", &tail[..end].replace(['\n', ' '], ""), &mut v);
            out.extend(v.iter().filter_map(|p| absolute(p)));
        }
        rest = &tail[end.min(tail.len())..];
    }
    // Paths in expressions and types (`crate::agent::view::View`, `flowlog::spawn`).
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("::") {
        let mut s = i;
        while s > 0 && (bytes[s - 1].is_ascii_alphanumeric() || bytes[s - 1] == b'_' || bytes[s - 1] == b':') {
            s -= 1;
        }
        if s > 0 && bytes[s - 1] == b'$' {
            continue;
        }
        let mut e = i + 2;
        while e < bytes.len() && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'_' || bytes[e] == b':') {
            e += 1;
        }
        if code[e..].starts_with('{') {
            continue; // the head of a `use` tree, expanded above
        }
        let p = code[s..e].trim_end_matches(':');
        if p.starts_with("crate::") || p.starts_with("super::") || children.contains(p.split("::").next().unwrap()) {
            out.extend(absolute(p));
        }
    }
    out
}

/// The import graph: module → the modules it uses (the longest module
/// prefix of each path it names; a module's re-exports of its children
/// count as uses of them).
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut texts = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests sit at the end of a file, in `mod tests` (whose
        // `super` is the file itself): not part of the graph.
        let text = text.split("#[cfg(test)]").next().unwrap();
        let code = code_only(text);
        let is_mod_file = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        let children: BTreeSet<String> = if is_mod_file {
            mods.keys()
                .filter_map(|k| {
                    let rest = if m.is_empty() { Some(k.as_str()) } else { k.strip_prefix(&format!("{m}::")) };
                    rest.filter(|r| !r.is_empty() && !r.contains("::")).map(str::to_string)
                })
                .collect()
        } else {
            BTreeSet::new()
        };
        let mut used = BTreeSet::new();
        for p in paths(m, &code, &children) {
            let segs: Vec<&str> = p.split("::").collect();
            let target = (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|cand| mods.contains_key(cand));
            if let Some(t) = target {
                if &t != m && !t.is_empty() {
                    used.insert(t);
                }
            }
        }
        g.insert(m.clone(), used);
        texts.insert(m.clone(), code);
    }
    (g, texts)
}

fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let (g, _) = graph();
    assert!(g.len() > 20, "found only {} modules: is the parser still reading ctrl/src?", g.len());
    assert!(g["agent::daemon"].contains("agent::enforcer"), "the parser misses edges: {:?}", g["agent::daemon"]);
    if let Some(c) = cycle(&g) {
        panic!("module cycle in ctrl: {}", c.join(" -> "));
    }
}

#[test]
fn the_sides_stay_apart() {
    let (g, _) = graph();
    for (m, used) in &g {
        let side = m.split("::").next().unwrap();
        for u in used {
            let other = u.split("::").next().unwrap();
            let bad = matches!((side, other), ("cli", "agent") | ("agent", "cli") | ("api", "agent") | ("api", "cli"));
            assert!(!bad, "{m} uses {u}: the CLI and the agent meet only in api/");
        }
    }
}

#[test]
fn impl_daemon_only_in_its_module() {
    let (_, texts) = graph();
    for (m, code) in &texts {
        let has = code.contains("impl Daemon") || code.contains("daemon::Daemon {");
        assert!(!has || m == "agent::daemon", "{m} has an `impl Daemon` block: verbs live in agent/daemon.rs");
    }
}

#[test]
fn the_parser_finds_a_planted_cycle() {
    // The checks above must be able to fail: two files naming each other.
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle(&g).map(|c| c.len()), Some(3));
    let mut v = Vec::new();
    expand("", "crate::agent::{cluster::{self,Cluster},state::Store}", &mut v);
    assert_eq!(v, ["crate::agent::cluster", "crate::agent::cluster::Cluster", "crate::agent::state::Store"]);
    let code = code_only("// crate::cli::x\nlet s = \"crate::cli::y\"; crate::api::z();");
    assert!(!code.contains("cli") && code.contains("crate::api::z"), "{code}");
}

#[test]
#[ignore]
fn print_graph() {
    for (m, u) in graph().0 {
        println!("{m} -> {}", u.into_iter().collect::<Vec<_>>().join(", "));
    }
}
