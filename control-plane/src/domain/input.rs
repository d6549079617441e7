//! Reading what clients send: JSON into the services' input types, with errors that name the
//! field that was wrong. The HTTP API and the MCP tools both read their inputs through here.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Why an input could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum InputError {
    /// Not JSON at all.
    Syntax(String),
    /// JSON of the wrong shape. `field` is the dotted path of the wrong field (`.` when the
    /// input as a whole is wrong); `message` starts with it.
    Invalid { field: String, message: String },
}

/// Reads a JSON document into `T`.
pub fn from_slice<T: DeserializeOwned + JsonSchema>(bytes: &[u8]) -> Result<T, InputError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return InputError::Syntax(format!("the body is not valid JSON: {inner}"));
        }
        invalid::<T>(path, inner.to_string())
    })
}

/// Reads a JSON value (MCP tool arguments) into `T`.
pub fn from_value<T: DeserializeOwned + JsonSchema>(value: Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let path = err.path().to_string();
        invalid::<T>(path, err.into_inner().to_string())
    })
}

/// Names the field of a deserialization error. Inside a flattened group of fields serde knows no
/// path, so [`flattened`] puts it at the start of the message instead; unknown and missing
/// fields are named in the message too.
fn invalid<T: JsonSchema>(path: String, message: String) -> InputError {
    // serde_json ends its messages with where in the text the problem is; that stays last.
    let (message, position) = match message.rsplit_once(" at line ") {
        Some((message, position)) => (message.to_owned(), format!(" at line {position}")),
        None => (message, String::new()),
    };
    let (field, message) = match path.as_str() {
        "." | "" => match quoted_after(&message, "unknown field `")
            .or_else(|| quoted_after(&message, "missing field `"))
        {
            Some(name) => (name.to_owned(), message.clone()),
            None => match message.split_once(": ") {
                Some((inner_path, rest)) if is_path(inner_path) => {
                    (inner_path.to_owned(), rest.to_owned())
                }
                _ => (".".to_owned(), message.clone()),
            },
        },
        _ => (path, message),
    };
    let message = match message.strip_prefix("unknown field ") {
        Some(rest) => {
            // Serde lists the known fields, except where groups of fields are flattened in.
            let known = if rest.contains("expected") || field.contains('.') {
                String::new()
            } else {
                format!(", expected one of {}", field_names::<T>())
            };
            format!("unknown field; remove it. Found {rest}{known}")
        }
        None => message,
    };
    InputError::Invalid {
        message: format!("{field}: {message}{position}"),
        field,
    }
}

/// The name quoted after `prefix`: up to serde's "`, expected …" (or "`, there are no fields"),
/// else to the last backtick, since a client's field name may hold backticks itself.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    let end = rest.find("`, ").or_else(|| rest.rfind('`'))?;
    rest.get(..end)
}

fn is_path(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
}

/// The top-level fields of `T`, as serde lists them: `` `a`, `b` ``.
fn field_names<T: JsonSchema>() -> String {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    let names: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().map(|name| format!("`{name}`")).collect())
        .unwrap_or_default();
    names.join(", ")
}

/// Tells "absent" (outer `None`, via `#[serde(default)]`) from "null" (`Some(None)`) in a patch.
pub fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Deserializes a flattened group of fields (`#[serde(flatten, deserialize_with = …)]`) keeping
/// the path of a wrong field: serde loses it inside `flatten`, so it goes at the start of the
/// message (`max_turns: invalid type …`), where [`from_slice`] and [`from_value`] find it.
pub fn flattened<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        serde::de::Error::custom(format_args!("{path}: {}", err.into_inner()))
    })
}

/// A name as given (of a job or a webhook), trimmed: 1 to 100 characters, none of them control
/// characters.
pub fn validate_name(name: &str) -> super::ServiceResult<String> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(super::ServiceError::invalid(
            "name",
            "must be 1 to 100 characters",
        ));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(super::ServiceError::invalid(
            "name",
            format!("must not contain control characters (found {bad:?})"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::settings::RunSettingsInput;
    use serde_json::json;

    /// An input with its own fields and the run settings flattened in, like a job's.
    #[derive(Deserialize, Debug, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        name: String,
        #[serde(flatten, deserialize_with = "flattened")]
        #[allow(dead_code)]
        run: RunSettingsInput,
    }

    fn invalid(value: serde_json::Value) -> (String, String) {
        match from_value::<Sample>(value) {
            Err(InputError::Invalid { field, message }) => (field, message),
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_wrong_field_is_named_inside_and_outside_the_flattened_settings() {
        let (field, message) = invalid(json!({ "name": "a", "max_turns": "many" }));
        assert_eq!(field, "max_turns");
        assert!(message.starts_with("max_turns: invalid type"), "{message}");
        let (field, _) = invalid(json!({ "name": "a", "retry": { "count": 1, "bogus": 2 } }));
        assert_eq!(field, "retry.bogus");
        let (field, _) = invalid(json!({ "name": 5 }));
        assert_eq!(field, "name");
        let (field, message) = invalid(json!({ "run": "x" }));
        assert_eq!(field, "name", "{message}");
        assert!(message.contains("missing field"), "{message}");
    }

    #[test]
    fn an_unknown_field_is_named_with_every_field_there_is() {
        let (field, message) = invalid(json!({ "name": "a", "shedule": "x" }));
        assert_eq!(field, "shedule");
        assert!(message.contains("remove it"), "{message}");
        for known in ["`name`", "`max_turns`", "`sandbox`"] {
            assert!(message.contains(known), "{known} in {message}");
        }
    }

    /// Found by fuzzing (`fuzz/`, target `mcp_tool_args`): an unknown field named `` `pool ``
    /// was blamed as `` (the name was cut at its own backtick).
    #[test]
    fn an_unknown_field_with_a_backtick_in_its_name_is_named_whole() {
        let (field, _) = invalid(json!({ "name": "a", "`pool": "gpu" }));
        assert_eq!(field, "`pool");
        let (field, _) = invalid(json!({ "name": "a", "a`b`": 1 }));
        assert_eq!(field, "a`b`");
    }

    #[test]
    fn text_that_is_not_json_is_a_syntax_error() {
        assert!(matches!(
            from_slice::<Sample>(b"{not json"),
            Err(InputError::Syntax(_))
        ));
    }
}
