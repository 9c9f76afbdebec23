//! The layer order of the workspace's module trees, and the test that keeps every
//! import pointing down it.
//!
//! A tree is a directory with a root file (`lib.rs`, `mod.rs`) and its direct child
//! modules, declared lowest first. A module may use the modules of lower layers and its
//! own submodules; an import of a higher or equal layer, or of an item defined in the
//! root file itself, is an upward import. With a strict order there can be no cycle.
//! Paths are read from the source (`crate::`, `super::` and, in the root file, `self::`),
//! with comments, strings and inline `mod` blocks taken into account. The tokenizer is
//! also that of the function-length rule (`source_rules.rs`).

use std::{fs, path::Path};

/// One module tree and its layers, lowest first. Modules on one layer are peers and may
/// not use each other either.
pub struct Tree {
    /// The tree's directory, relative to the workspace root.
    pub dir: &'static str,
    /// Its root file, in `dir`.
    pub root: &'static str,
    /// The root's module path in its crate (`[]` for a crate root, `["bench"]`).
    pub prefix: &'static [&'static str],
    pub layers: &'static [&'static [&'static str]],
    /// Files in `dir` that are the roots of other crates (a binary's `main.rs`).
    pub other_roots: &'static [&'static str],
}

/// `probe-user`'s library: output building blocks at the bottom, then who a count
/// belongs to, the kernel, the signals, the snapshot, the window over them, the knobs,
/// judging, the views and the fleet; the server's access control and privilege drop
/// are used by the CLI only; then the CLI (the binary's `main.rs` only calls it), and on
/// top the generated references' tests, which read everything.
pub const PROBE_USER: Tree = Tree {
    dir: "probe-user/src",
    root: "lib.rs",
    prefix: &[],
    layers: &[
        &["output"],
        &["workloads"],
        &["kernel"],
        &["signals"],
        &["report"],
        &["window"],
        &["tuning"],
        &["verify"],
        &["advise"],
        &["views"],
        &["fleet"],
        &["access", "privileges"],
        &["cli"],
        &["reference"],
    ],
    other_roots: &["main.rs"],
};

/// `cargo xtask bench` and `soak`: the lab they build, the loads in it, the agent under
/// test, the report, the soak; `mod.rs` (the benchmark itself) on top.
pub const XTASK_BENCH: Tree = Tree {
    dir: "xtask/src/bench",
    root: "mod.rs",
    prefix: &["bench"],
    layers: &[&["lab"], &["load"], &["agent"], &["report"], &["soak"]],
    other_roots: &[],
};

/// An import against the order: in `file`, `path` reaches `target` (`<root>` for an item
/// of the root file).
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: String,
    pub path: String,
    pub target: String,
}

impl Tree {
    fn layer_of(&self, module: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.contains(&module))
    }

    /// Every upward import in the tree, and every child module missing from the order
    /// (as a violation with target `<undeclared>`).
    pub fn check(&self, workspace: &Path) -> Vec<Violation> {
        let dir = workspace.join(self.dir);
        let mut out = Vec::new();
        for file in rust_files(&dir) {
            let rel = file
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if self.other_roots.contains(&rel.as_str()) {
                continue;
            }
            let module: Vec<String> = self
                .prefix
                .iter()
                .map(ToString::to_string)
                .chain(module_path(&rel, self.root))
                .collect();
            if let Some(top) = module.get(self.prefix.len())
                && self.layer_of(top).is_none()
            {
                out.push(Violation {
                    file: rel.clone(),
                    path: top.clone(),
                    target: "<undeclared>".into(),
                });
            }
            let source = fs::read_to_string(&file).unwrap();
            for (inline, path) in paths(&source) {
                let within: Vec<String> = module.iter().cloned().chain(inline).collect();
                if let Some(target) = self.upward(&within, &path) {
                    out.push(Violation {
                        file: rel.clone(),
                        path: path.join("::"),
                        target,
                    });
                }
            }
        }
        out
    }

    /// Where `path`, used inside module `within` (from the crate's root), points if that
    /// is not below it: a module of a higher or equal layer, or `<root>` for an item of
    /// the tree's root file. Paths leaving the tree are not its business.
    fn upward(&self, within: &[String], path: &[String]) -> Option<String> {
        let absolute = resolve(within, path)?;
        let inside = |p: &[String]| {
            p.starts_with(
                &self
                    .prefix
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        if !inside(&absolute) || !inside(within) {
            return None;
        }
        let from = within.get(self.prefix.len())?; // the root file may use anything
        let to = absolute.get(self.prefix.len()).map_or("*", String::as_str);
        match (self.layer_of(from), self.layer_of(to)) {
            _ if to == from => None,
            (Some(f), Some(t)) if t < f => None,
            (_, Some(_)) => Some(to.to_string()),
            (_, None) => Some("<root>".into()),
        }
    }
}

/// The absolute module path (from the crate's root) that `path` names inside `within`;
/// `None` for paths that do not start at the crate, a parent or `self`.
fn resolve(within: &[String], path: &[String]) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "super" => within.split_last()?.1.to_vec(),
        "self" => within.to_vec(),
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    while rest.peek().is_some_and(|s| *s == "super") {
        base.pop()?;
        rest.next();
    }
    base.extend(rest.cloned());
    Some(base)
}

/// `bench/agent.rs` -> `[agent]` (relative to the tree, whose root file is `mod.rs`);
/// `signals/dns/mod.rs` -> `[signals, dns]`; the root file -> `[]`.
fn module_path(rel: &str, root: &str) -> Vec<String> {
    if rel == root {
        return Vec::new();
    }
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

pub(crate) fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every path starting with `crate`, `super` or `self` in `source`, with `use` groups
/// expanded one level (`crate::{a, b::c}` gives `crate::a` and `crate::b::c`), each
/// with the inline modules (`mod tests { ... }`) it sits in.
fn paths(source: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let tokens = tokens(source);
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new(); // module, brace depth it opened at
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                inline.push((tokens[i + 1].clone(), depth));
            }
            "crate" | "super" | "self" if tokens.get(i + 1).is_some_and(|t| t == "::") => {
                let within: Vec<String> = inline.iter().map(|(m, _)| m.clone()).collect();
                let (prefix, next) = path_at(&tokens, i);
                if tokens.get(next).is_some_and(|t| t == "{") {
                    for name in group_heads(&tokens, next) {
                        let mut p = prefix.clone();
                        p.push(name);
                        out.push((within.clone(), p));
                    }
                } else {
                    out.push((within, prefix));
                }
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The segments of the path starting at `tokens[i]`, and the index after it (at a `{`
/// when a group follows).
fn path_at(tokens: &[String], mut i: usize) -> (Vec<String>, usize) {
    let mut segments = vec![tokens[i].clone()];
    while tokens.get(i + 1).is_some_and(|t| t == "::") {
        match tokens.get(i + 2) {
            Some(t) if t == "{" => return (segments, i + 2),
            Some(t) => segments.push(t.clone()),
            None => break,
        }
        i += 2;
    }
    (segments, i + 1)
}

/// The first segment of each path in the group opening at `tokens[open]`.
fn group_heads(tokens: &[String], open: usize) -> Vec<String> {
    let (mut depth, mut expect, mut out) = (0usize, true, Vec::new());
    for t in &tokens[open..] {
        match t.as_str() {
            "{" => {
                depth += 1;
                expect = depth == 1;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => expect = true,
            _ if expect && depth == 1 => {
                out.push(t.clone());
                expect = false;
            }
            _ => {}
        }
    }
    out
}

/// Identifiers, `::`, braces and other punctuation, without comments, strings and
/// character literals.
fn tokens(source: &str) -> Vec<String> {
    tokens_with_lines(source)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// The tokens of [`tokens`], each with the line (from 1) it starts on.
pub(crate) fn tokens_with_lines(source: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let (mut out, mut i, mut line, mut counted) = (Vec::new(), 0, 1, 0);
    while i < chars.len() {
        // Newlines skipped over (in comments, strings, whitespace) since the last token.
        line += chars[counted..i].iter().filter(|&&c| c == '\n').count();
        counted = i;
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        i = match c {
            '/' if next == Some('/') => skip_line(&chars, i),
            '/' if next == Some('*') => skip_block_comment(&chars, i),
            '"' => skip_string(&chars, i + 1),
            'r' if raw_string_hashes(&chars, i).is_some() => skip_raw_string(&chars, i),
            '\'' => skip_char(&chars, i),
            ':' if next == Some(':') => {
                out.push(("::".to_string(), line));
                i + 2
            }
            c if c.is_alphanumeric() || c == '_' => {
                let end = (i..chars.len())
                    .find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_'))
                    .unwrap_or(chars.len());
                out.push((chars[i..end].iter().collect(), line));
                end
            }
            c if c.is_whitespace() => i + 1,
            c => {
                out.push((c.to_string(), line));
                i + 1
            }
        };
    }
    out
}

fn skip_line(chars: &[char], i: usize) -> usize {
    (i..chars.len())
        .find(|&j| chars[j] == '\n')
        .unwrap_or(chars.len())
}

fn skip_block_comment(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => {
                depth += 1;
                i += 2;
            }
            ('*', '/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    chars.len()
}

/// From just after an opening quote to just after the closing one.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// `r"`, `r#"`, `br##"`...: how many `#`s, when `chars[i]` starts a raw string.
fn raw_string_hashes(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') && chars[i - 1] != 'b' {
        return None;
    }
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

fn skip_raw_string(chars: &[char], i: usize) -> usize {
    let hashes = raw_string_hashes(chars, i).unwrap_or(0);
    let body = i + hashes + 2;
    let close: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    (body..chars.len())
        .find(|&j| chars[j..].starts_with(&close))
        .map_or(chars.len(), |j| j + close.len())
}

/// A character literal (`'a'`, `'\n'`, `'\u{1F600}'`) or a lifetime (`'a`).
fn skip_char(chars: &[char], i: usize) -> usize {
    match (chars.get(i + 1), chars.get(i + 2)) {
        (Some('\\'), _) => (i + 2..chars.len())
            .find(|&j| chars[j] == '\'')
            .map_or(chars.len(), |j| j + 1),
        (Some(_), Some('\'')) => i + 3,
        _ => i + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    fn assert_clean(tree: &Tree) {
        let found = tree.check(workspace());
        let lines: Vec<String> = found
            .iter()
            .map(|v| format!("{}: {} -> {}", v.file, v.path, v.target))
            .collect();
        assert!(
            lines.is_empty(),
            "imports against the order of {} (lowest first: {:?}):\n{}",
            tree.dir,
            tree.layers,
            lines.join("\n")
        );
    }

    #[test]
    fn probe_user_imports_point_down() {
        assert_clean(&PROBE_USER);
    }

    #[test]
    fn bench_imports_point_down() {
        assert_clean(&XTASK_BENCH);
    }

    /// The checker itself, on sources that break the order in each way it knows.
    #[test]
    fn upward_imports_are_found() {
        let tree = Tree {
            dir: "",
            root: "lib.rs",
            prefix: &[],
            layers: &[&["low"], &["mid", "peer"], &["high"]],
            other_roots: &[],
        };
        let within = |m: &[&str]| m.iter().map(ToString::to_string).collect::<Vec<_>>();
        let found = |file: &[&str], src: &str| -> Vec<String> {
            paths(src)
                .into_iter()
                .filter_map(|(inline, p)| {
                    let w: Vec<String> = within(file).into_iter().chain(inline).collect();
                    tree.upward(&w, &p)
                })
                .collect()
        };
        assert_eq!(
            found(&["mid"], "use crate::{low::x, high::{y, z}};"),
            ["high"]
        );
        assert_eq!(found(&["mid", "a"], "use super::super::high::T;"), ["high"]);
        assert_eq!(found(&["mid"], "fn f() { crate::peer::g() }"), ["peer"]);
        assert_eq!(found(&["mid"], "use crate::RootItem;"), ["<root>"]);
        assert_eq!(found(&["low"], "use super::helper;"), ["<root>"]);
        // Below, inside, in comments and strings, and a test module's `super::*`: fine.
        let fine = "use crate::low::x; use super::sibling::y; // crate::high::z\n\
                    const S: &str = \"crate::high::q\"; fn f<'a>(c: char) -> bool { c == '{' }\n\
                    #[cfg(test)] mod tests { use super::*; }";
        assert!(
            found(&["mid", "sibling2"], fine).is_empty(),
            "{:?}",
            found(&["mid", "sibling2"], fine)
        );
        assert!(found(&["mid"], "use crate::mid::a;").is_empty());
        // A submodule using its parent's items stays inside the module.
        assert!(found(&["mid", "a"], "use super::Thing;").is_empty());
    }

    #[test]
    fn module_paths() {
        assert_eq!(module_path("lib.rs", "lib.rs"), Vec::<String>::new());
        assert_eq!(
            module_path("signals/dns/mod.rs", "lib.rs"),
            ["signals", "dns"]
        );
        assert_eq!(module_path("agent.rs", "mod.rs"), ["agent"]);
    }
}
