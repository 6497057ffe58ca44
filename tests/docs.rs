//! The user documentation holds together: every relative link in `README.md` and `docs/*.md`
//! names a file of the repository (and, for `file.md#anchor`, a heading of that file), the
//! README stays short and keeps the quick-start commands CI relies on, and no document carries
//! development history (session or issue numbers).
//!
//! `cargo test --test docs`

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

/// The most lines the README may have.
const README_MAX_LINES: usize = 200;

/// The two quick-start commands; `.ci/run` runs the second.
const QUICK_START: [&str; 2] = [
    "cargo run --release -- serve --policy deploy/examples/policy.yaml",
    "scripts/test.sh",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every `docs/*.md`, sorted.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root().join("README.md"));
    docs
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines of a document outside fenced code blocks, with their line numbers (from 1).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push((i + 1, line));
        }
    }
    lines
}

/// A line without its inline code spans (text between backticks).
fn without_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of the inline links (`[text](target)`, images too) of one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        // `[text](target "title")`: the target is the first word.
        let target = after[..end].split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        targets.push(target.to_string());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, `-`, `_`
/// and spaces kept), spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a document's headings; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn every_relative_link_names_a_file_and_heading_of_the_repository() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        let dir = doc.parent().expect("a document's directory");
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.is_empty() || is_external(&target) {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    doc.clone()
                } else {
                    dir.join(path)
                };
                let where_ = format!("{}:{number}: {target}", shown(&doc));
                if !file.exists() {
                    broken.push(format!("{where_}: no such file"));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if file.extension().is_none_or(|e| e != "md") {
                    continue;
                }
                if !anchors(&read(&file)).contains(anchor) {
                    broken.push(format!("{where_}: no heading with this anchor"));
                }
            }
        }
    }
    assert!(
        checked > 0,
        "no relative links found: is the link parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_short_and_keeps_the_quick_start() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES}: move details to docs/"
    );
    for command in QUICK_START {
        assert!(
            readme.contains(command),
            "README.md lost the quick-start command `{command}`"
        );
    }
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines()
            .any(|l| l.trim() == format!("exec {}", QUICK_START[1])),
        ".ci/run no longer runs the README's test command `{}`",
        QUICK_START[1]
    );
}

/// Whether `text` has `word`, a space, an optional `#` and a digit, ignoring ASCII case: the
/// regex `(?i)word #?[0-9]`.
fn has_numbered(text: &str, word: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let pattern = format!("{word} ");
    lower.match_indices(&pattern).any(|(at, _)| {
        let rest = &lower.as_bytes()[at + pattern.len()..];
        let rest = rest.strip_prefix(b"#").unwrap_or(rest);
        rest.first().is_some_and(u8::is_ascii_digit)
    })
}

#[test]
fn no_document_carries_session_or_issue_numbers() {
    let mut found = Vec::new();
    for doc in documents() {
        for (i, line) in read(&doc).lines().enumerate() {
            if has_numbered(line, "session") || has_numbered(line, "issue") {
                found.push(format!("{}:{}: {line}", shown(&doc), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "development history in the docs:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_themselves_work() {
    // Built at run time, so that this file does not match a search for the pattern itself.
    let numbered = |word: &str, rest: &str| format!("{word} {rest}");
    assert!(has_numbered(&numbered("Session", "4 changes"), "session"));
    assert!(has_numbered(&numbered("see issue", "#12"), "issue"));
    assert!(has_numbered(&numbered("(ISSUE", "2)"), "issue"));
    assert!(!has_numbered("a TLS session, 3 streams", "session"));
    assert!(!has_numbered("an issue with 2 keys", "issue"));

    assert_eq!(slug("Flags (`rolegate serve`)"), "flags-rolegate-serve");
    assert_eq!(
        slug("Readiness and --max-staleness"),
        "readiness-and---max-staleness"
    );
    assert_eq!(
        link_targets("see [a](a.md#x), `[b](not-a-link)` and [c](https://e.x \"t\")"),
        ["a.md#x", "https://e.x"]
    );
    let headings = anchors("# A\n## Same\n```\n## Not a heading\n```\n## Same\n");
    assert!(headings.contains("same") && headings.contains("same-1"));
    assert!(!headings.contains("not-a-heading"));
}
