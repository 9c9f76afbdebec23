//! Rules on the workspace's source that no compiler lint states: no function longer than
//! [`MAX_LINES`] lines in `probe-user`, `probe-common` or `xtask` (issue 21).
//!
//! A function's span is counted from the line of its `fn` keyword to the line of its
//! closing brace, both included; free functions, methods, nested functions and tests
//! alike. The source is read with the tokenizer of the layer test, so braces in
//! comments, strings, raw strings and character literals do not count.

use std::{fs, path::Path};

use crate::layers::{rust_files, tokens_with_lines};

/// The longest a function may be, in lines.
const MAX_LINES: usize = 80;

/// The source trees the rule holds in, relative to the workspace root.
const DIRS: &[&str] = &["probe-user/src", "probe-common/src", "xtask/src"];

/// A function item with a body.
#[derive(Debug, PartialEq, Eq)]
struct Function {
    name: String,
    /// The line of its `fn` keyword, from 1.
    line: usize,
    /// Lines from the `fn` line to the closing brace, both included.
    lines: usize,
}

/// Every function with a body in `source`, nested ones included, in source order.
fn functions(source: &str) -> Vec<Function> {
    let tokens = tokens_with_lines(source);
    let mut out = Vec::new();
    for (i, (token, line)) in tokens.iter().enumerate() {
        // `fn` then a name: an item (a pointer type `fn(u8)` has no name).
        let Some((name, _)) = tokens.get(i + 1) else {
            continue;
        };
        if token != "fn" || !name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            continue;
        }
        let Some(open) = body_start(&tokens, i + 2) else {
            continue; // a declaration in a trait or an extern block
        };
        let close = matching_brace(&tokens, open);
        out.push(Function {
            name: name.clone(),
            line: *line,
            lines: tokens[close].1 - line + 1,
        });
    }
    out
}

/// The index of the `{` opening the body of the function whose signature starts at
/// `tokens[i]`, or `None` when a `;` ends it first (outside parentheses and brackets,
/// where array types have their own).
fn body_start(tokens: &[(String, usize)], mut i: usize) -> Option<usize> {
    let mut nesting = 0usize;
    while let Some((t, _)) = tokens.get(i) {
        match t.as_str() {
            "(" | "[" => nesting += 1,
            ")" | "]" => nesting = nesting.saturating_sub(1),
            "{" if nesting == 0 => return Some(i),
            ";" if nesting == 0 => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the `}` closing the `{` at `tokens[open]` (the last token if unclosed).
fn matching_brace(tokens: &[(String, usize)], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, (t, _)) in tokens.iter().enumerate().skip(open) {
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    tokens.len() - 1
}

/// The functions in `source` longer than [`MAX_LINES`].
fn over(source: &str) -> Vec<Function> {
    functions(source)
        .into_iter()
        .filter(|f| f.lines > MAX_LINES)
        .collect()
}

/// `file:line name (N lines)` for every function in the trees longer than [`MAX_LINES`],
/// with its file (relative to the workspace root) and name.
fn too_long(workspace: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in DIRS {
        for file in rust_files(&workspace.join(dir)) {
            let rel = file
                .strip_prefix(workspace)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let source = fs::read_to_string(&file).unwrap();
            for f in over(&source) {
                out.push(format!("{rel}:{} {} ({} lines)", f.line, f.name, f.lines));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    #[test]
    fn no_function_is_over_80_lines() {
        let shown = too_long(workspace());
        assert!(
            shown.is_empty(),
            "functions over {MAX_LINES} lines (split them into named steps):\n{}",
            shown.join("\n")
        );
    }

    /// A function whose body is `body_lines` copies of `line`: `body_lines + 2` lines.
    fn function(name: &str, body_lines: usize, line: &str) -> String {
        format!(
            "fn {name}() {{\n{}}}\n",
            format!("    {line}\n").repeat(body_lines)
        )
    }

    /// The checker itself: spans, nesting, and braces that are not code.
    #[test]
    fn long_functions_are_found() {
        let short = function("short", 1, "let x = 1;");
        assert_eq!(
            functions(&short),
            [Function {
                name: "short".into(),
                line: 1,
                lines: 3
            }]
        );
        assert!(over(&short).is_empty());
        let exactly = function("exactly", 78, "f();");
        assert_eq!(functions(&exactly)[0].lines, 80);
        assert!(over(&exactly).is_empty());
        // 81 lines; each body line opens or closes braces only in non-code.
        let tricky = [
            "let s = \"{{{\"; // }",
            "let r = r#\"}\" {\"#; /* { */",
            "let c = '{'; let l: &'static str = \"\\\"}\";",
        ];
        let body: String = (0..79)
            .map(|i| format!("    {}\n", tricky[i % 3]))
            .collect();
        // Lines skipped in comments and strings still count for the line numbers.
        let before =
            "// fn commented() {}\n/* a { block\n comment } */\nconst S: &str = r#\"{\n\"#;\n";
        let long = format!("{before}fn long() {{\n{body}}}\n");
        assert_eq!(
            functions(&long),
            [Function {
                name: "long".into(),
                line: 6,
                lines: 81
            }]
        );
        assert_eq!(over(&long).len(), 1);
        // Nested and methods, signatures with `;` in array types, declarations without
        // a body, function pointer types.
        let source = "trait T { fn decl(&self); }\n\
                      impl S {\n    fn method(a: [u8; 4]) -> fn(u8) {\n        fn inner() {}\n        g\n    }\n}\n";
        let found: Vec<(String, usize, usize)> = functions(source)
            .into_iter()
            .map(|f| (f.name, f.line, f.lines))
            .collect();
        assert_eq!(
            found,
            [("method".to_string(), 3, 4), ("inner".to_string(), 4, 1)]
        );
    }
}
