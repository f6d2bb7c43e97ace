//! Structured output requests → a [`GrammarSpec`]: OpenAI's `response_format` (`json_object`,
//! `json_schema`), vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar`) and its
//! older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` fields. At most one
//! may be given; a malformed one is a 400 naming the field. Compiling (and so a schema that
//! cannot compile) happens when the request starts (`tandem_engine::Generation`).

use serde_json::Value;
use tandem_engine::GrammarSpec;

use crate::error::ApiError;
use crate::openai::Common;

fn bad(param: &'static str, why: impl Into<String>) -> ApiError {
    ApiError::invalid(param, why.into())
}

/// A schema given as an object, or as JSON text (vLLM accepts both).
fn schema(param: &'static str, v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s).map_err(|e| bad(param, format!("not a JSON schema: {e}"))),
        _ => Err(bad(param, "expected a JSON schema (an object)")),
    }
}

fn string(param: &'static str, v: &Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_string).ok_or_else(|| bad(param, "expected a string"))
}

fn choices(param: &'static str, v: &Value) -> Result<Vec<String>, ApiError> {
    let items = v.as_array().ok_or_else(|| bad(param, "expected a list of strings"))?;
    let c: Vec<String> = items.iter().map(|x| string(param, x)).collect::<Result<_, _>>()?;
    if c.is_empty() {
        return Err(bad(param, "needs at least one choice"));
    }
    Ok(c)
}

/// OpenAI's `response_format`.
fn response_format(v: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "response_format";
    match v.get("type").and_then(Value::as_str) {
        None if v.is_null() => Ok(None),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let js = v.get("json_schema").ok_or_else(|| bad(P, "`json_schema` needs a `json_schema` object"))?;
            let s = js.get("schema").ok_or_else(|| bad(P, "`json_schema` needs a `schema`"))?;
            Ok(Some(GrammarSpec::JsonSchema(schema(P, s)?)))
        }
        Some(other) => Err(bad(P, format!("unknown type `{other}`: text, json_object or json_schema"))),
        None => Err(bad(P, "needs a `type`")),
    }
}

/// vLLM's `structured_outputs` object: exactly one of `json`, `regex`, `choice`, `grammar`
/// (and `json_object: true`).
fn structured_outputs(v: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "structured_outputs";
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(bad(P, "expected an object")),
    };
    let mut found = Vec::new();
    for (k, val) in obj {
        if val.is_null() {
            continue;
        }
        let spec = match k.as_str() {
            "json" => GrammarSpec::JsonSchema(schema(P, val)?),
            "regex" => GrammarSpec::Regex(string(P, val)?),
            "choice" => GrammarSpec::Choice(choices(P, val)?),
            "grammar" => GrammarSpec::Lark(string(P, val)?),
            "json_object" if val.as_bool() == Some(true) => GrammarSpec::JsonObject,
            "json_object" => continue,
            other => {
                return Err(bad(P, format!("`{other}` is not supported: json, regex, choice, grammar or json_object")))
            }
        };
        found.push(spec);
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(bad(P, "give only one of json, regex, choice, grammar")),
    }
}

/// The grammar a request asks for, if any.
pub fn grammar(c: &Common) -> Result<Option<GrammarSpec>, ApiError> {
    let mut asked: Vec<(&'static str, GrammarSpec)> = Vec::new();
    let mut add = |param: &'static str, spec: Option<GrammarSpec>| {
        if let Some(s) = spec {
            asked.push((param, s));
        }
    };
    add("response_format", c.response_format.as_ref().map(response_format).transpose()?.flatten());
    add("structured_outputs", c.structured_outputs.as_ref().map(structured_outputs).transpose()?.flatten());
    fn set(v: &Option<Value>) -> Option<&Value> {
        v.as_ref().filter(|x| !x.is_null())
    }
    if let Some(v) = set(&c.guided_json) {
        add("guided_json", Some(GrammarSpec::JsonSchema(schema("guided_json", v)?)));
    }
    if let Some(v) = set(&c.guided_regex) {
        add("guided_regex", Some(GrammarSpec::Regex(string("guided_regex", v)?)));
    }
    if let Some(v) = set(&c.guided_choice) {
        add("guided_choice", Some(GrammarSpec::Choice(choices("guided_choice", v)?)));
    }
    if let Some(v) = set(&c.guided_grammar) {
        add("guided_grammar", Some(GrammarSpec::Lark(string("guided_grammar", v)?)));
    }
    match asked.len() {
        0 | 1 => Ok(asked.pop().map(|a| a.1)),
        _ => Err(bad(
            asked[1].0,
            format!("give one structured-output field, not both `{}` and `{}`", asked[0].0, asked[1].0),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(v: Value) -> Common {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn each_field_maps_to_its_grammar_and_two_are_refused() {
        let g = |v| grammar(&common(v));
        assert_eq!(g(serde_json::json!({})).unwrap(), None);
        assert_eq!(g(serde_json::json!({"response_format": {"type": "text"}})).unwrap(), None);
        assert_eq!(
            g(serde_json::json!({"response_format": {"type": "json_object"}})).unwrap(),
            Some(GrammarSpec::JsonObject)
        );
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let rf = serde_json::json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
        assert_eq!(g(rf).unwrap(), Some(GrammarSpec::JsonSchema(schema.clone())));
        let so = serde_json::json!({"structured_outputs": {"choice": ["yes", "no"]}});
        assert_eq!(g(so).unwrap(), Some(GrammarSpec::Choice(vec!["yes".into(), "no".into()])));
        assert_eq!(
            g(serde_json::json!({"guided_regex": "[0-9]+"})).unwrap(),
            Some(GrammarSpec::Regex("[0-9]+".into()))
        );
        let two = g(serde_json::json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}));
        assert!(two.is_err());
        assert!(g(serde_json::json!({"response_format": {"type": "yaml"}})).is_err());
        assert!(g(serde_json::json!({"structured_outputs": {"xml": "x"}})).is_err());
    }
}
