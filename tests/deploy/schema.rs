//! A JSON Schema checker for the structural subsets of custom resource schemas in
//! tests/k8s-schemas/: `type` (one or several), `enum`, `properties`, `required`,
//! `additionalProperties` (false, or a schema for every other key), `items` and `minItems`. Any
//! other keyword in a schema is an error, so that a schema never asks for more than is checked.

use serde_json::Value;

/// The problems of `value` against `schema`, each with its path (`spec.rules[0].to`).
pub(crate) fn problems(schema: &Value, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    check(schema, value, "", &mut found);
    found
}

fn check(schema: &Value, value: &Value, path: &str, found: &mut Vec<String>) {
    let at = if path.is_empty() { "(top)" } else { path };
    let schema = schema.as_object().expect("a schema is an object");
    for keyword in schema.keys() {
        assert!(
            matches!(
                keyword.as_str(),
                "$comment"
                    | "type"
                    | "enum"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "minItems"
            ),
            "the checker does not know the schema keyword {keyword:?}"
        );
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("bad type {other}"),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            found.push(format!(
                "{at}: {value} is not of type {}",
                types.join(" or ")
            ));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        found.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(map) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(name) {
                found.push(format!("{at}: {name} is required"));
            }
        }
        for (key, v) in map {
            let sub = join(path, key);
            match (
                properties.and_then(|p| p.get(key)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => check(s, v, &sub, found),
                (None, Some(Value::Bool(false))) => {
                    found.push(format!("{at}: unknown field {key:?}"))
                }
                (None, Some(s @ Value::Object(_))) => check(s, v, &sub, found),
                (None, _) => {}
            }
        }
    }
    if let Value::Array(items) = value {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            found.push(format!("{at}: fewer than {min} items"));
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                check(item, v, &format!("{path}[{i}]"), found);
            }
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        other => panic!("unknown type {other}"),
    }
}

fn join(path: &str, key: &str) -> String {
    match path {
        "" => key.to_owned(),
        _ => format!("{path}.{key}"),
    }
}
