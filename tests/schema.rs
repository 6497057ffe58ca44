//! The JSON Schemas of the policy file and of its test file (docs/schema/), checked against the
//! parsers: every example validates, and files the parsers refuse for their shape (unknown or
//! missing fields, wrong types, values outside an enumeration) fail the schema too.

mod common;

use std::path::Path;

use common::repo_path;
use rolegate::origin::policy_file;
use serde_json::Value;

fn validator(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_path(&format!("docs/schema/{name}"))).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| e.to_string()).collect()
}

#[test]
fn every_example_validates() {
    let policy = validator("policy.schema.json");
    let suite = validator("policy-test.schema.json");
    let text = common::example_policy();
    assert!(policy_file::parse(&text, "policy.yaml").is_ok());
    assert_eq!(errors(&policy, &yaml(&text)), Vec::<String>::new());
    let path = repo_path("deploy/examples/policy.test.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(policy_file::parse_suite(&text, &path).is_ok());
    assert_eq!(errors(&suite, &yaml(&text)), Vec::<String>::new());
}

// (An all-digit hash would be a number to a YAML reader that infers types, as editors do.)
const HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

/// A small valid policy with `extra` spliced into its key.
fn policy_with_key(fields: &str) -> String {
    format!("teams: [{{ id: acme }}]\nusers: [{{ id: dana }}]\nkeys:\n  - {{ {fields} }}\n")
}

#[test]
fn shapes_the_policy_parser_refuses_fail_the_schema() {
    let schema = validator("policy.schema.json");
    let key =
        format!("prefix: DanaKey1, secret_sha256: {HASH}, type: team, user: dana, team: acme");
    let good = policy_with_key(&key);
    assert!(policy_file::parse(&good, "p.yaml").is_ok());
    assert!(errors(&schema, &yaml(&good)).is_empty());
    let refused = [
        "tems: []\n".to_owned(),
        "teams: acme\n".to_owned(),
        "teams: [{ name: Acme }]\n".to_owned(),
        "teams: [{ id: acme, colour: red }]\n".to_owned(),
        "teams: [{ id: acme, status: paused }]\n".to_owned(),
        "roles: [{ id: R, type: user, grants: [{ entitlement: jobs.read }] }]\n".to_owned(),
        "roles: [{ id: R, type: user, grants: [{ entitlement: jobs.read, scope: EVERYTHING }] }]\n"
            .to_owned(),
        "roles: [{ id: R, type: user, override: maybe }]\n".to_owned(),
        "users: [{ id: dana, teams: acme }]\n".to_owned(),
        "projects: [{ id: p }]\n".to_owned(),
        "routes: [{ method: GET, path: /x }]\n".to_owned(),
        "routes: [{ method: GET, path: /x, entitlement: jobs.read, resource: { tenant: path.x } }]\n"
            .to_owned(),
        "entitlements: [{ id: a.b, owner: me }]\n".to_owned(),
        policy_with_key(&format!("prefix: DanaKey1, secret_sha256: {HASH}, user: dana, team: acme")),
        policy_with_key("prefix: DanaKey1, type: team, user: dana, team: acme"),
        policy_with_key(&format!("{key}, roles: DEVELOPER")),
        policy_with_key(&format!("{key}, status: sleeping")),
        policy_with_key(&format!("{key}, type2: team")),
        policy_with_key(&format!("prefix: DanaKey1, secret_sha256: {HASH}, type: robot, user: dana, team: acme")),
    ];
    for text in refused {
        assert!(
            policy_file::parse(&text, "p.yaml").is_err(),
            "the parser accepts {text}"
        );
        assert!(
            !errors(&schema, &yaml(&text)).is_empty(),
            "the schema accepts what the parser refuses: {text}"
        );
    }
}

#[test]
fn shapes_the_test_file_parser_refuses_fail_the_schema() {
    let schema = validator("policy-test.schema.json");
    let case = "key: DanaKey1, entitlement: jobs.read";
    let path = Path::new("p.test.yaml");
    let good = format!("policy: p.yaml\ncases:\n  - {{ {case}, expect: allowed, scope: OWN }}\n");
    assert!(policy_file::parse_suite(&good, path).is_ok());
    assert!(errors(&schema, &yaml(&good)).is_empty());
    let refused = [
        "cases: []\n".to_owned(),
        "policy: p.yaml\nextra: 1\n".to_owned(),
        "policy: p.yaml\ncases: {}\n".to_owned(),
        format!("policy: p.yaml\ncases:\n  - {{ {case} }}\n"),
        format!("policy: p.yaml\ncases:\n  - {{ {case}, expect: maybe }}\n"),
        format!("policy: p.yaml\ncases:\n  - {{ {case}, expect: allowed, scope: some }}\n"),
        format!("policy: p.yaml\ncases:\n  - {{ {case}, expect: denied, reason: NOPE }}\n"),
        format!("policy: p.yaml\ncases:\n  - {{ {case}, expect: denied, scope: OWN }}\n"),
        format!(
            "policy: p.yaml\ncases:\n  - {{ {case}, expect: allowed, resource: {{ tenant: a }} }}\n"
        ),
        format!("policy: p.yaml\ncases:\n  - {{ {case}, expect: allowed, when: now }}\n"),
        "policy: p.yaml\ncases:\n  - { entitlement: jobs.read, expect: allowed }\n".to_owned(),
    ];
    for text in refused {
        assert!(
            policy_file::parse_suite(&text, path).is_err(),
            "the parser accepts {text}"
        );
        assert!(
            !errors(&schema, &yaml(&text)).is_empty(),
            "the schema accepts what the parser refuses: {text}"
        );
    }
}
