//! The test file of a policy (`rolegate test`): which policy, and cases of a key prefix, an
//! entitlement, an optional resource and the expected outcome (docs/policy-as-code.md).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{PolicyError, parse::first_problem};

/// A parsed test file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suite {
    /// The policy file, resolved against the test file's folder.
    pub policy: PathBuf,
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    /// The line of the case in the test file.
    pub line: u64,
    /// The key's prefix (or a whole key, whose secret is then checked too).
    pub key: String,
    pub entitlement: String,
    pub team: String,
    pub owner_key: String,
    pub owner_user: String,
    /// Allowed (true) or denied.
    pub allowed: bool,
    /// `OWN`, `TEAM` or `ALL`, when the case names the scope expected.
    pub scope: Option<String>,
    /// A reason as Check names it (`NO_GRANT`), when the case names one.
    pub reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteDoc {
    policy: String,
    #[serde(default)]
    cases: Vec<Spanned<CaseDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    name: Option<String>,
    key: String,
    entitlement: String,
    resource: Option<ResourceDoc>,
    expect: Expect,
    scope: Option<ScopeDoc>,
    reason: Option<ReasonDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceDoc {
    team: Option<String>,
    owner_key: Option<String>,
    owner_user: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allowed,
    Denied,
}

#[derive(Deserialize)]
enum ScopeDoc {
    #[serde(rename = "OWN")]
    Own,
    #[serde(rename = "TEAM")]
    Team,
    #[serde(rename = "ALL")]
    All,
}

/// The reasons a case may expect, as Check's `Reason` names them.
#[derive(Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ReasonDoc {
    Allowed,
    MalformedKey,
    UnknownKey,
    WrongSecret,
    KeyInactive,
    KeyExpired,
    TeamInactive,
    UnknownEntitlement,
    NoGrant,
    OutOfScope,
}

/// Parses a test file's text; `path` names it in errors and anchors its `policy`.
pub fn parse_suite(text: &str, path: &Path) -> Result<Suite, PolicyError> {
    let file = path.display().to_string();
    let doc: SuiteDoc = serde_saphyr::from_str(text).map_err(|e| first_problem(&e, &file))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut cases = Vec::with_capacity(doc.cases.len());
    for (i, c) in doc.cases.into_iter().enumerate() {
        let line = c.referenced.line();
        let c = c.value;
        let (scope, reason) = (c.scope, c.reason);
        if c.expect == Expect::Denied && scope.is_some() {
            return Err(PolicyError::at(
                &file,
                line,
                format!("cases[{i}]: a denied case has no scope"),
            ));
        }
        if let Some(r) = reason
            && matches!(r, ReasonDoc::Allowed) != (c.expect == Expect::Allowed)
        {
            return Err(PolicyError::at(
                &file,
                line,
                format!("cases[{i}]: reason {r:?} contradicts expect"),
            ));
        }
        let resource = c.resource.unwrap_or(ResourceDoc {
            team: None,
            owner_key: None,
            owner_user: None,
        });
        cases.push(Case {
            name: c
                .name
                .unwrap_or_else(|| format!("{} {} (line {line})", c.key, c.entitlement)),
            line,
            key: c.key,
            entitlement: c.entitlement,
            team: resource.team.unwrap_or_default(),
            owner_key: resource.owner_key.unwrap_or_default(),
            owner_user: resource.owner_user.unwrap_or_default(),
            allowed: c.expect == Expect::Allowed,
            scope: scope.map(|s| {
                match s {
                    ScopeDoc::Own => "OWN",
                    ScopeDoc::Team => "TEAM",
                    ScopeDoc::All => "ALL",
                }
                .to_owned()
            }),
            reason: reason.map(|r| reason_name(r).to_owned()),
        });
    }
    Ok(Suite {
        policy: dir.join(doc.policy),
        cases,
    })
}

fn reason_name(r: ReasonDoc) -> &'static str {
    match r {
        ReasonDoc::Allowed => "ALLOWED",
        ReasonDoc::MalformedKey => "MALFORMED_KEY",
        ReasonDoc::UnknownKey => "UNKNOWN_KEY",
        ReasonDoc::WrongSecret => "WRONG_SECRET",
        ReasonDoc::KeyInactive => "KEY_INACTIVE",
        ReasonDoc::KeyExpired => "KEY_EXPIRED",
        ReasonDoc::TeamInactive => "TEAM_INACTIVE",
        ReasonDoc::UnknownEntitlement => "UNKNOWN_ENTITLEMENT",
        ReasonDoc::NoGrant => "NO_GRANT",
        ReasonDoc::OutOfScope => "OUT_OF_SCOPE",
    }
}

/// Reads and parses the test file at `path`.
pub fn load_suite(path: &Path) -> Result<Suite, PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::whole_file(&file, format!("cannot read the file: {e}")))?;
    parse_suite(&text, path)
}
