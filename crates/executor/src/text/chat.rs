//! The model's own chat template (Jinja, from GGUF metadata or `tokenizer_config.json`),
//! rendered with `minijinja` as HF transformers' `apply_chat_template` does.

use minijinja::{context, Environment};

use crate::ExecError;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A parsed chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Parses the template now, so a broken one is reported at load.
    /// The template's Jinja source, as the model file carries it.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn new(source: String) -> Result<Self, ExecError> {
        let me = Self { source };
        me.env()?;
        Ok(me)
    }

    fn env(&self) -> Result<Environment<'_>, ExecError> {
        let mut env = Environment::new();
        env.add_function("raise_exception", raise_exception);
        env.add_template("chat", &self.source).map_err(|e| ExecError::Template(e.into()))?;
        Ok(env)
    }

    /// The prompt text for `messages`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String, ExecError> {
        let env = self.env()?;
        let t = env.get_template("chat").map_err(|e| ExecError::Template(e.into()))?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
        })
        .map_err(|e| ExecError::Template(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chatml_template_with_the_generation_prompt() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        )
        .unwrap();
        let s = t.render(&[ChatMessage::new("user", "Hi")], true, None, None).unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        assert!(ChatTemplate::new("{% for %}".into()).is_err());
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}".into()).unwrap();
        assert!(t.render(&[], true, None, None).is_err());
    }
}
