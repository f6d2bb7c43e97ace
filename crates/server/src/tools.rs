//! Tool calls on chat (OpenAI's `tools` + `tool_choice`), in the Hermes format that Qwen2.5's
//! and SmolLM2's templates use: the functions are described to the model in a system message
//! (`<tools>…</tools>`, the text Qwen2.5's own template renders), the model answers with
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, and the server turns those into
//! `tool_calls`.
//!
//! - `auto` (the default with tools): free generation; calls in the answer are parsed out.
//! - `required`, or a named function: the answer is **constrained** (llguidance, a Lark grammar
//!   embedding the functions' JSON schemas), so even a small model returns a call whose
//!   arguments validate.
//! - `none`: the tools are not offered.
//!
//! Earlier turns go back through the template: an assistant message's `tool_calls` as
//! `<tool_call>` blocks, a `tool` message's content as a `<tool_response>` (as Qwen2.5's template
//! renders them).

use serde_json::{json, Value};
use tandem_engine::GrammarSpec;

use crate::error::ApiError;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
}

/// A call parsed from (or constrained into) the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

fn bad(param: &'static str, why: impl Into<String>) -> ApiError {
    ApiError::invalid(param, why.into())
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Parses `tools` and `tool_choice`; `None` when no tool is offered.
pub fn parse(tools: Option<&Value>, choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("tools", "expected a list of tools")),
    };
    let mut functions = Vec::with_capacity(list.len());
    for t in &list {
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(bad("tools", "only tools of type `function` are supported"));
        }
        let f = t.get("function").ok_or_else(|| bad("tools", "a tool needs a `function`"))?;
        let name = f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| bad("tools", "a function needs a `name`"))?.to_string();
        let parameters = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if !parameters.is_object() {
            return Err(bad("tools", format!("`{name}`: parameters must be a JSON schema object")));
        }
        let description = f.get("description").and_then(Value::as_str).map(str::to_string);
        functions.push(Function { name, description, parameters });
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => return Err(bad("tool_choice", format!("`{other}`: none, auto, required or a named function"))),
        },
        Some(v) => {
            let name = v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            ToolChoice::Named(
                name.ok_or_else(|| {
                    bad("tool_choice", "expected {\"type\": \"function\", \"function\": {\"name\": …}}")
                })?
                .to_string(),
            )
        }
    };
    if functions.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(bad("tool_choice", "needs `tools`")),
        };
    }
    if let ToolChoice::Named(n) = &choice {
        if !functions.iter().any(|f| &f.name == n) {
            return Err(bad("tool_choice", format!("`{n}` is not one of the tools")));
        }
    }
    Ok(Some(Tools { functions, choice }))
}

impl Tools {
    /// Whether the model is offered the tools (and its answer parsed for calls).
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The system text that describes the functions (Qwen2.5's template's wording).
    pub fn system_text(&self) -> String {
        let mut s = String::from(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for f in &self.functions {
            let mut func = json!({"name": f.name, "parameters": f.parameters});
            if let Some(d) = &f.description {
                func["description"] = json!(d);
            }
            s.push('\n');
            s.push_str(&json!({"type": "function", "function": func}).to_string());
        }
        s.push_str(
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within \
             <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
        );
        s
    }

    /// For `required` and a named function: a grammar that admits exactly one call to one of
    /// the allowed functions, with arguments valid against its schema.
    pub fn grammar(&self) -> Option<GrammarSpec> {
        let allowed: Vec<&Function> = match &self.choice {
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
            ToolChoice::None | ToolChoice::Auto => return None,
        };
        let alternatives: Vec<Value> = allowed
            .iter()
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = json!({"anyOf": alternatives});
        Some(GrammarSpec::Lark(format!("start: \"{OPEN}\\n\" call \"\\n{CLOSE}\"\ncall: %json {schema}")))
    }
}

/// Splits a finished answer into its text and the calls in it (`<tool_call>` blocks whose JSON
/// has a `name`; a block that does not parse stays text).
/// With `parallel` false (OpenAI's `parallel_tool_calls: false`), only the first call is kept.
pub fn split_calls(text: &str, parallel: bool) -> (String, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        match parse_call(&after[..end]) {
            Some(call) => {
                content.push_str(&rest[..start]);
                calls.push(call);
            }
            None => content.push_str(&rest[..start + OPEN.len() + end + CLOSE.len()]),
        }
        rest = &after[end + CLOSE.len()..];
    }
    content.push_str(rest);
    if !parallel {
        calls.truncate(1);
    }
    (content.trim().to_string(), calls)
}

fn parse_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// Streaming with tools: passes text through until a `<tool_call>` may be starting, then holds
/// the rest back for [`Self::finish`] to parse.
#[derive(Debug)]
pub struct ToolStream {
    held: String,
    holding: bool,
    /// `parallel_tool_calls`: false keeps the first call only.
    parallel: bool,
}

impl ToolStream {
    pub fn new(parallel: bool) -> Self {
        Self { held: String::new(), holding: false, parallel }
    }

    /// The part of `text` that can be streamed now.
    pub fn push(&mut self, text: &str) -> String {
        if self.holding {
            self.held.push_str(text);
            return String::new();
        }
        self.held.push_str(text);
        if let Some(at) = self.held.find(OPEN) {
            self.holding = true;
            let out = self.held[..at].to_string();
            self.held.drain(..at);
            return out;
        }
        // Keep back a tail that could be the start of `<tool_call>`.
        let keep = (1..OPEN.len().min(self.held.len() + 1))
            .rev()
            .find(|&k| {
                self.held.is_char_boundary(self.held.len() - k) && OPEN.starts_with(&self.held[self.held.len() - k..])
            })
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// At the end: the held-back text that is not a call, and the calls.
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        let held = std::mem::take(&mut self.held);
        let (text, calls) = split_calls(&held, self.parallel);
        // Text before the first call was streamed already; keep the spacing of what is left.
        let text = if calls.is_empty() { held } else { text };
        (text, calls)
    }
}

/// Earlier turns in the Hermes format: an assistant message's calls as `<tool_call>` blocks
/// after its text; a tool result as a `<tool_response>` block.
pub fn assistant_text(content: &str, tool_calls: Option<&Value>) -> String {
    let mut s = content.to_string();
    for c in tool_calls.and_then(Value::as_array).into_iter().flatten() {
        let f = c.get("function").unwrap_or(c);
        let name = f.get("name").cloned().unwrap_or(Value::Null);
        let args = match f.get("arguments") {
            Some(Value::String(a)) => serde_json::from_str(a).unwrap_or(Value::String(a.clone())),
            Some(a) => a.clone(),
            None => json!({}),
        };
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&format!("{OPEN}\n{}\n{CLOSE}", json!({"name": name, "arguments": args})));
    }
    s
}

/// A `tool` message's content as the model saw results in training.
pub fn tool_response_text(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn calls_are_split_from_the_text_and_bad_blocks_stay_text() {
        let (text, calls) =
            split_calls("Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", true);
        assert_eq!(text, "Let me check.");
        assert_eq!(calls, vec![ToolCall { name: "get_weather".into(), arguments: "{\"city\":\"Paris\"}".into() }]);
        let (text, calls) = split_calls("<tool_call>not json</tool_call> plain", true);
        assert!(calls.is_empty() && text.contains("not json"));
    }

    #[test]
    fn a_stream_holds_back_only_what_may_be_a_call() {
        let mut s = ToolStream::new(true);
        assert_eq!(s.push("Hello <to"), "Hello ");
        assert_eq!(s.push("day"), "<today");
        assert_eq!(s.push(" <tool_call>{\"name\": \"f\", "), " ");
        assert_eq!(s.push("\"arguments\": {}}</tool_call>"), "");
        let (text, calls) = s.finish();
        assert_eq!((text.as_str(), calls.len()), ("", 1));
    }

    #[test]
    fn choices_parse_and_required_or_named_choices_constrain() {
        let t = parse(Some(&weather()), None).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(t.grammar().is_none() && t.system_text().contains("\"get_weather\""));
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let t = parse(Some(&weather()), Some(&named)).unwrap().unwrap();
        let Some(GrammarSpec::Lark(g)) = t.grammar() else { panic!("a Lark grammar") };
        assert!(g.contains("%json") && g.contains("\"const\":\"get_weather\""), "{g}");
        assert!(parse(Some(&weather()), Some(&json!({"type": "function", "function": {"name": "nope"}}))).is_err());
        assert!(parse(None, Some(&json!("required"))).is_err());
        assert!(parse(None, None).unwrap().is_none());
        assert!(!parse(Some(&weather()), Some(&json!("none"))).unwrap().unwrap().active());
    }

    #[test]
    fn earlier_turns_render_in_the_hermes_format() {
        let calls = json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]);
        assert_eq!(
            assistant_text("", Some(&calls)),
            "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"
        );
        assert_eq!(tool_response_text("22C"), "<tool_response>\n22C\n</tool_response>");
    }
}
