//! text-generation, as Python's `TextGenerationPipeline` (transformers 4.46,
//! pipelines/text_generation.py): a prompt string or a chat (list of messages, rendered
//! with the chat template); `[{"generated_text": ...}]` per input — the prompt included
//! unless `return_full_text` is false, the chat with the assistant's reply appended for
//! chat input; `return_tensors` gives `generated_token_ids` (prompt included). As 5.25: a
//! chat ending in an assistant message is continued (`continue_final_message`, default:
//! whether the last role is `assistant`) and the reply is appended to that message;
//! `add_special_tokens` does not apply to chats; `chat_template` picks a named template;
//! `tools` and `documents` reach the template; the reply is the decode of the new tokens
//! alone (`skip_special_tokens`, default true); `stop_sequence` is `stop_strings`.
//! Generation options are `generate()`'s, over the model's generation_config.json.

use serde_json::{json, Value};

use rustformers_core::chat_template::ChatOptions;
use rustformers_core::{AutoTokenizer, EncodeOptions, Error, ModelFiles, Result, TextInput};
use rustformers_generation::{ContinuousBatcher, GenerationConfig, Generator, TextStreamer};
use rustformers_models::{AutoModelForCausalLM, CausalLanguageModel, LoadOptions, PreTrainedModel};

use crate::common::batch_size;
use crate::params::{ParamReader, Params};
use crate::Pipeline;

/// The text-generation pipeline.
pub struct TextGenerationPipeline {
    model: PreTrainedModel<dyn CausalLanguageModel>,
    tokenizer: AutoTokenizer,
    generation_config: GenerationConfig,
}

/// One prepared input.
struct Prompt {
    /// The text shown as the prompt (the rendered chat for chat input).
    text: String,
    ids: Vec<u32>,
    chat: Option<Value>,
    /// The chat's last message is continued (the reply extends it).
    continued: bool,
}

/// Pipeline options that are not generation options.
struct Options {
    return_full_text: bool,
    return_tensors: bool,
    add_special_tokens: Option<bool>,
    batch_size: usize,
    /// `None`: continue a chat whose last message is the assistant's.
    continue_final_message: Option<bool>,
    /// A named chat template of the tokenizer (or a whole template).
    chat_template: Option<String>,
    /// For chats: what the template gets as `tools` and `documents`.
    tools: Option<Value>,
    documents: Option<Value>,
    skip_special_tokens: bool,
}

impl TextGenerationPipeline {
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        let tokenizer = AutoTokenizer::from_files(&files)?;
        let model = AutoModelForCausalLM::from_files(files, opts)?;
        let generation_config = GenerationConfig::from_files(&model.files, model.config.base())?;
        Ok(Self {
            model,
            tokenizer,
            generation_config,
        })
    }

    /// The tokenizer (for chat front ends).
    pub fn tokenizer(&self) -> &AutoTokenizer {
        &self.tokenizer
    }

    /// The model's generation defaults.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation_config
    }

    fn prepare(&self, input: &Value, o: &Options) -> Result<Prompt> {
        let add_special_tokens = o.add_special_tokens;
        match input {
            Value::String(text) => {
                let enc = self.tokenizer.encode(
                    TextInput::Single(text),
                    &EncodeOptions {
                        add_special_tokens: add_special_tokens.unwrap_or(true),
                        ..Default::default()
                    },
                )?;
                Ok(Prompt {
                    text: text.clone(),
                    ids: enc.input_ids.into_iter().next().unwrap_or_default(),
                    chat: None,
                    continued: false,
                })
            }
            Value::Array(_) | Value::Object(_) => {
                // `{"messages": [...], "tools": [...]}` (as the server passes a chat with
                // tools), one message, or a list of messages.
                let (messages, tools) = match input {
                    Value::Object(obj) if obj.contains_key("messages") => (
                        obj["messages"].clone(),
                        obj.get("tools").filter(|t| !t.is_null()).cloned(),
                    ),
                    Value::Object(_) => (Value::Array(vec![input.clone()]), None),
                    _ => (input.clone(), None),
                };
                let tools = tools.or_else(|| o.tools.clone());
                // A chat ending in the assistant's message is a prefill to continue.
                let continued = o.continue_final_message.unwrap_or_else(|| {
                    messages
                        .as_array()
                        .and_then(|m| m.last())
                        .is_some_and(|m| m["role"] == "assistant")
                });
                let opts = ChatOptions {
                    add_generation_prompt: !continued,
                    continue_final_message: continued.then(|| "content".to_string()),
                    chat_template: o.chat_template.clone(),
                    tools,
                    documents: o.documents.clone(),
                    ..Default::default()
                };
                let enc = self
                    .tokenizer
                    .apply_chat_template_tokenized(&messages, &opts, false)?;
                Ok(Prompt {
                    text: enc.text,
                    ids: enc.input_ids,
                    chat: Some(messages),
                    continued,
                })
            }
            other => Err(Error::invalid(format!(
                "text-generation: an input is a prompt string or a list of chat messages, got {other}"
            ))),
        }
    }

    fn split_params(&self, params: &Params) -> Result<(Options, GenerationConfig)> {
        let pipeline_keys = [
            "return_full_text",
            "return_tensors",
            "return_text",
            "add_special_tokens",
            "batch_size",
            "continue_final_message",
            "chat_template",
            "tools",
            "documents",
            "skip_special_tokens",
            "stop_sequence",
        ];
        let own: Params = params
            .iter()
            .filter(|(k, _)| pipeline_keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut gen: Params = params
            .iter()
            .filter(|(k, _)| !pipeline_keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let r = ParamReader::new("text-generation", &own);
        let options = Options {
            return_full_text: r.bool("return_full_text")?.unwrap_or(true),
            return_tensors: r.bool("return_tensors")?.unwrap_or(false),
            add_special_tokens: r.bool("add_special_tokens")?,
            batch_size: batch_size(r.usize("batch_size")?)?,
            continue_final_message: r.bool("continue_final_message")?,
            chat_template: r.string("chat_template")?,
            tools: r.list("tools")?,
            documents: r.list("documents")?,
            skip_special_tokens: r.bool("skip_special_tokens")?.unwrap_or(true),
        };
        // Python's `stop_sequence`: generation's `stop_strings`, with the pipeline's
        // tokenizer.
        if let Some(stop) = r.strings("stop_sequence", false)? {
            gen.insert("stop_strings".into(), json!(stop));
        }
        let _ = r.bool("return_text")?;
        r.finish()?;
        let config = self.generation_config.with_overrides(&gen)?;
        config.validate()?;
        Ok((options, config))
    }

    fn output(
        &self,
        prompt: &Prompt,
        sequence: &[u32],
        new_tokens: &[u32],
        o: &Options,
    ) -> Result<Value> {
        if o.return_tensors {
            return Ok(json!({"generated_token_ids": sequence}));
        }
        // As 5.25: the new tokens decoded alone (4.46 cut the decoded prompt off the
        // decoded sequence).
        let text = self.tokenizer.decode(new_tokens, o.skip_special_tokens)?;
        Ok(match &prompt.chat {
            Some(messages) if o.return_full_text => {
                let mut m = messages.as_array().cloned().unwrap_or_default();
                match m.last_mut() {
                    // The prefill continued: the reply extends the last message.
                    Some(last) if prompt.continued => {
                        // Python adds the reply to the content string (a list of parts
                        // fails there too).
                        let Some(content) = last["content"].as_str() else {
                            return Err(Error::invalid(
                                "text-generation: a continued final message must have text content",
                            ));
                        };
                        *last =
                            json!({"role": last["role"], "content": format!("{content}{text}")});
                    }
                    _ => m.push(json!({"role": "assistant", "content": text})),
                }
                json!({"generated_text": m})
            }
            None if o.return_full_text => {
                json!({"generated_text": format!("{}{}", prompt.text, text)})
            }
            _ => json!({"generated_text": text}),
        })
    }

    /// The number of tokens `input` (a text, or a chat as a list of messages) takes as a
    /// prompt, chat template applied.
    pub fn prompt_tokens(&self, input: &Value) -> Result<usize> {
        let (o, _) = self.split_params(&Params::new())?;
        Ok(self.prepare(input, &o)?.ids.len())
    }

    /// One request for continuous batching: the prompt's ids (chat template applied for
    /// chat input) and the generation config `params` give (pipeline-only options such
    /// as `return_full_text` are checked and otherwise ignored).
    pub fn request(&self, input: &Value, params: &Params) -> Result<(Vec<u32>, GenerationConfig)> {
        let (o, config) = self.split_params(params)?;
        let prompt = self.prepare(input, &o)?;
        Ok((prompt.ids, config))
    }

    /// A continuous batcher over this pipeline's model, running up to `max_batch`
    /// sequences together (`stop_strings` decode with the pipeline's tokenizer).
    pub fn batcher(&self, max_batch: usize) -> ContinuousBatcher<'_> {
        ContinuousBatcher::new(self.model.model.as_ref(), &self.model.device, max_batch)
            .with_tokenizer(&self.tokenizer)
    }

    /// The model's context length.
    pub fn max_context(&self) -> usize {
        self.model.model.max_context()
    }

    /// Checks call parameters (pipeline and generation options) without generating.
    pub fn check_params(&self, params: &Params) -> Result<()> {
        self.split_params(params).map(|_| ())
    }

    /// Generates for one input, calling `on_text` with each new piece of text (valid
    /// UTF-8) as it is produced. Returns the reply text and the number of new tokens.
    pub fn stream(
        &self,
        input: &Value,
        params: &Params,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(String, usize)> {
        self.stream_until(input, params, &mut |t| {
            on_text(t);
            true
        })
    }

    /// [`Self::stream`] where `on_text` returning false stops generating (a client that
    /// went away): the generation and its cache end there.
    pub fn stream_until(
        &self,
        input: &Value,
        params: &Params,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(String, usize)> {
        let (o, config) = self.split_params(params)?;
        let prompt = self.prepare(input, &o)?;
        let mut streamer = TextStreamer::new(&self.tokenizer, true);
        let mut failure: Option<Error> = None;
        let mut cb = |_row: usize, token: u32| -> bool {
            match streamer.push(token) {
                Ok(piece) => piece.is_empty() || on_text(&piece),
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        };
        let out = Generator::new(
            self.model.model.as_ref(),
            std::slice::from_ref(&prompt.ids),
            &config,
            &self.model.device,
        )?
        .with_tokenizer(&self.tokenizer)
        .run(Some(&mut cb))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let rest = streamer.finish()?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        let new = out.new_tokens.first().cloned().unwrap_or_default();
        Ok((self.tokenizer.decode(&new, true)?, new.len()))
    }
}

impl Pipeline for TextGenerationPipeline {
    fn task(&self) -> &'static str {
        "text-generation"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let (o, config) = self.split_params(params)?;
        let prompts: Vec<Prompt> = inputs
            .iter()
            .map(|i| self.prepare(i, &o))
            .collect::<Result<_>>()?;
        // Sampling and beam search give num_return_sequences rows per prompt (greedy: 1).
        let copies = config.num_return_sequences;
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(o.batch_size) {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
            let g = Generator::new(self.model.model.as_ref(), &ids, &config, &self.model.device)?
                .with_tokenizer(&self.tokenizer)
                .run(None)?;
            for (i, p) in chunk.iter().enumerate() {
                let mut items = Vec::with_capacity(copies);
                for c in 0..copies {
                    let row = i * copies + c;
                    items.push(self.output(p, &g.sequences[row], &g.new_tokens[row], &o)?);
                }
                out.push(Value::Array(items));
            }
        }
        Ok(out)
    }
}
