//! `rolegate test [PATH...]`: run a policy's test files offline: each case is decided from the
//! policy file as a server serving it would decide it, and compared with what it expects.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::Args;
use rolegate::{
    grpc::pb,
    origin::policy_file::{Case, load_suite},
    state::State,
};

use super::{
    check::{enum_name, explanation_lines, load_state, offline},
    output::say,
};

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Test files, or folders searched for `*.test.yaml` (default: the current folder).
    paths: Vec<PathBuf>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// The outcome of one case.
struct Outcome {
    case: Case,
    /// What went wrong, with the explanation; `None` when the case passed.
    failure: Option<String>,
}

/// Runs every case; prints each failure and a summary. Exits 0 when all pass, 1 when any fails
/// (2 when a file cannot be read or is invalid).
pub(crate) fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let roots = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut files = Vec::new();
    for root in &roots {
        collect(root, &mut files)?;
    }
    if files.is_empty() {
        anyhow::bail!("no test files (*.test.yaml) under {}", show(&roots));
    }
    let mut states: HashMap<PathBuf, State> = HashMap::new();
    let mut results: Vec<(PathBuf, Vec<Outcome>)> = Vec::new();
    for file in &files {
        let suite = load_suite(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !states.contains_key(&suite.policy) {
            let state = load_state(&suite.policy)
                .with_context(|| format!("the policy of {}", file.display()))?;
            states.insert(suite.policy.clone(), state);
        }
        let state = &states[&suite.policy];
        let outcomes = suite
            .cases
            .into_iter()
            .map(|case| {
                let failure = judge(state, &case);
                Outcome { case, failure }
            })
            .collect();
        results.push((file.clone(), outcomes));
    }
    let (mut passed, mut failed) = (0, 0);
    for (file, outcomes) in &results {
        for o in outcomes {
            match &o.failure {
                None => passed += 1,
                Some(why) => {
                    failed += 1;
                    say!("FAIL {}:{}: {}", file.display(), o.case.line, o.case.name);
                    for line in why.lines() {
                        say!("  {line}");
                    }
                }
            }
        }
    }
    say!(
        "{}: {passed} passed, {failed} failed ({} file(s))",
        if failed == 0 { "ok" } else { "FAILED" },
        results.len()
    );
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&results))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn show(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// `path` itself when it is a file, else every `*.test.yaml` under it, sorted.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let is_dir = entry.is_dir();
        let hidden = entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.') || n == "target");
        if is_dir && !hidden {
            collect(&entry, out)?;
        } else if !is_dir
            && entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".test.yaml"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

fn outcome_text(allowed: bool, scope: &str, reason: &str) -> String {
    if allowed {
        format!("allowed at {scope} ({reason})")
    } else {
        format!("denied ({reason})")
    }
}

/// Decides `case` and compares; the failure, with the explanation, or `None`.
fn judge(state: &State, case: &Case) -> Option<String> {
    let resource = pb::Resource {
        team_id: case.team.clone(),
        owner_key_prefix: case.owner_key.clone(),
        owner_user_id: case.owner_user.clone(),
    };
    let (r, explanation) = offline(state, &case.key, &case.entitlement, &resource, true);
    let scope = enum_name(r.scope().as_str_name(), "SCOPE_");
    let reason = enum_name(r.reason().as_str_name(), "REASON_");
    let ok = r.allowed == case.allowed
        && case.scope.as_ref().is_none_or(|s| *s == scope)
        && case.reason.as_ref().is_none_or(|x| *x == reason);
    if ok {
        return None;
    }
    let mut expected = if case.allowed { "allowed" } else { "denied" }.to_owned();
    if let Some(s) = &case.scope {
        let _ = write!(expected, " at {s}");
    }
    if let Some(x) = &case.reason {
        let _ = write!(expected, " ({x})");
    }
    let mut out = format!(
        "{} {}{}\nexpected: {expected}\nactual:   {}\n",
        case.key,
        case.entitlement,
        describe_resource(case),
        outcome_text(r.allowed, &scope, &reason)
    );
    for line in explanation.iter().flat_map(explanation_lines) {
        out.push_str(&line);
        out.push('\n');
    }
    Some(out)
}

fn describe_resource(case: &Case) -> String {
    let mut parts = Vec::new();
    for (what, value) in [
        ("team", &case.team),
        ("owner key", &case.owner_key),
        ("owner user", &case.owner_user),
    ] {
        if !value.is_empty() {
            parts.push(format!("{what} {value}"));
        }
    }
    if parts.is_empty() {
        " (collection)".to_owned()
    } else {
        format!(" on {}", parts.join(", "))
    }
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The results as JUnit XML: a suite per test file, a test case per case.
fn junit(results: &[(PathBuf, Vec<Outcome>)]) -> String {
    let tests: usize = results.iter().map(|(_, o)| o.len()).sum();
    let failures: usize = results
        .iter()
        .flat_map(|(_, o)| o)
        .filter(|o| o.failure.is_some())
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"rolegate test\" tests=\"{tests}\" failures=\"{failures}\">"
    );
    for (file, outcomes) in results {
        let name = xml(&file.display().to_string());
        let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failed}\">",
            outcomes.len()
        );
        for o in outcomes {
            let _ = write!(
                out,
                "    <testcase classname=\"{name}\" name=\"{}\"",
                xml(&o.case.name)
            );
            match &o.failure {
                None => out.push_str("/>\n"),
                Some(why) => {
                    let summary: Vec<&str> = why.lines().skip(1).take(2).collect();
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        xml(&summary.join("; ")),
                        xml(why)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
