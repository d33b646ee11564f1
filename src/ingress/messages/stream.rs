//! Anthropic's named server-sent events, and the translation of an OpenAI chunk
//! stream into them (for upstreams that do not speak Anthropic's protocol).
//!
//! The events follow Anthropic's order: `message_start`, `ping`, then per content
//! block `content_block_start`, `content_block_delta`…, `content_block_stop`, then
//! `message_delta` (stop reason and the whole usage) and `message_stop`.

use super::convert::{anthropic_usage, openai_to_anthropic_stop_reason};
use super::wire::{
    BlockDelta, ContentBlock, GeneratedText, Message, MessageDeltaBody, MessageType, Role,
    StartUsage, StreamEvent, UpstreamEvent,
};
use crate::ingress;
use crate::ingress::lenient::{self, Items};
use crate::ingress::openai_wire::{AnswerContent, AnswerToolCall, ChatAnswer};
use bytes::Bytes;
use domain::Usage;
use serde_json::{json, Value};
use std::collections::HashMap;

/// One event as Anthropic frames it: `event: <name>`, `data: <json>`, blank line.
pub(crate) fn event_frame(name: Option<&str>, data: &str) -> Bytes {
    let mut frame = name.map_or_else(String::new, |n| format!("event: {n}\n"));
    // A data field with line breaks is sent as several `data:` lines.
    for line in data.split('\n') {
        frame.push_str("data: ");
        frame.push_str(line);
        frame.push('\n');
    }
    frame.push('\n');
    Bytes::from(frame)
}

/// An event whose name is its `type`.
pub(crate) fn typed_frame(event: &StreamEvent) -> Bytes {
    event_frame(Some(event.name()), &ingress::to_json_text(event))
}

/// Bytes of generated text in one Anthropic stream event (for estimates only).
#[cfg(test)]
pub(crate) fn anthropic_event_output_bytes(data: &str) -> u64 {
    event_output_bytes(&lenient::parse(data.as_bytes()))
}

/// [`anthropic_event_output_bytes`] of an event already parsed.
pub(crate) fn event_output_bytes(event: &UpstreamEvent) -> u64 {
    event.delta.as_ref().map_or(0, GeneratedText::text_bytes)
}

/// The content block being streamed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its OpenAI `index`.
    Tool(u64),
}

/// Translates OpenAI `chat.completion.chunk`s, one at a time, into Anthropic events.
pub(crate) struct OpenAiToAnthropicStream {
    id: String,
    model: String,
    /// The open block and its Anthropic index.
    open: Option<(Block, u64)>,
    next_index: u64,
    /// Tool calls seen: OpenAI index → (call id, Anthropic block index).
    tools: HashMap<u64, (Option<String>, u64)>,
    finish_reason: Option<String>,
}

impl OpenAiToAnthropicStream {
    pub(crate) fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            open: None,
            next_index: 0,
            tools: HashMap::new(),
            finish_reason: None,
        }
    }

    /// `message_start` and a `ping`, sent before the upstream's first chunk. The
    /// usage is not known yet: it comes, whole, in `message_delta`.
    pub(crate) fn start(&self) -> Vec<StreamEvent> {
        vec![
            StreamEvent::MessageStart {
                message: Message {
                    id: self.id.clone(),
                    kind: MessageType::Message,
                    role: Role::Assistant,
                    model: self.model.clone(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: StartUsage {
                        input_tokens: 0,
                        output_tokens: 0,
                    },
                },
            },
            StreamEvent::Ping,
        ]
    }

    fn close(&mut self, events: &mut Vec<StreamEvent>) {
        if let Some((_, index)) = self.open.take() {
            events.push(StreamEvent::ContentBlockStop { index });
        }
    }

    /// Opens `block` (closing the open one) unless it is open; returns its index.
    fn open(
        &mut self,
        block: Block,
        content_block: impl FnOnce() -> ContentBlock,
        events: &mut Vec<StreamEvent>,
    ) -> u64 {
        if let Some((open, index)) = self.open {
            if open == block {
                return index;
            }
        }
        self.close(events);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((block, index));
        events.push(StreamEvent::ContentBlockStart {
            index,
            content_block: content_block(),
        });
        index
    }

    /// The events of one chunk (only its first choice: Anthropic has one).
    pub(crate) fn on_chunk(&mut self, chunk: &Value) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        let chunk: ChatAnswer = lenient::read(chunk);
        let Some(choice) = chunk.first_choice() else {
            return events;
        };
        let delta = choice.delta.as_ref();
        let text = |field: Option<&String>| field.filter(|t| !t.is_empty()).cloned();
        if let Some(thinking) = text(delta.and_then(|d| d.reasoning_content.as_ref())) {
            let thinking_block = || ContentBlock::Thinking {
                thinking: String::new(),
                signature: String::new(),
            };
            let index = self.open(Block::Thinking, thinking_block, &mut events);
            events.push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::Thinking { thinking },
            });
        }
        let content = delta
            .and_then(|d| d.content.as_ref())
            .and_then(|c| match c {
                AnswerContent::Text(text) => Some(text),
                AnswerContent::Parts(_) => None,
            });
        if let Some(content) = text(content) {
            let text_block = || ContentBlock::Text {
                text: String::new(),
            };
            let index = self.open(Block::Text, text_block, &mut events);
            events.push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::Text { text: content },
            });
        }
        let calls = delta.and_then(|d| d.tool_calls.as_ref());
        for (position, call) in calls.into_iter().flat_map(Items::iter).enumerate() {
            self.on_tool_call(position as u64, call, &mut events);
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish_reason = Some(reason.clone());
        }
        events
    }

    /// The events of one tool call's piece (the `position`th of its chunk).
    fn on_tool_call(
        &mut self,
        position: u64,
        call: &AnswerToolCall,
        events: &mut Vec<StreamEvent>,
    ) {
        let openai_index = call.index.unwrap_or(position);
        let id = call.id.as_deref().filter(|i| !i.is_empty());
        // A new call: an index not seen yet, or a new id at a known index.
        let known = self
            .tools
            .get(&openai_index)
            .filter(|(known_id, _)| id.is_none() || known_id.as_deref() == id);
        let index = match known {
            Some((_, index)) => *index,
            None => {
                let id = id.map_or_else(
                    || format!("toolu_{}_{openai_index}", self.id),
                    str::to_string,
                );
                // A new id at the index of the open call: that call is over.
                if self
                    .open
                    .is_some_and(|(b, _)| b == Block::Tool(openai_index))
                {
                    self.close(events);
                }
                let tool_block = || ContentBlock::ToolUse {
                    id: Some(id.clone()),
                    name: call.name().map(str::to_string),
                    input: json!({}),
                };
                let index = self.open(Block::Tool(openai_index), tool_block, events);
                self.tools.insert(openai_index, (Some(id), index));
                index
            }
        };
        if let Some(arguments) = call.arguments().filter(|a| !a.is_empty()) {
            events.push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJson {
                    partial_json: arguments.to_string(),
                },
            });
        }
    }

    /// After the upstream's last chunk: the open block's stop and `message_delta`
    /// with the stop reason and the usage charged. `message_stop` follows once the
    /// charge is committed ([`message_stop`]).
    pub(crate) fn finish(&mut self, usage: &Usage) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        self.close(&mut events);
        events.push(StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: openai_to_anthropic_stop_reason(self.finish_reason.as_deref()),
                stop_sequence: None,
            },
            usage: anthropic_usage(usage),
            aigne_hub: None,
        });
        events
    }

    /// Ends the translation early, the tenant's credit being spent (see
    /// [`credit_exhausted_events`]); the upstream's last chunk was not passed in.
    pub(crate) fn credit_exhausted(&mut self, usage: &Usage) -> Vec<StreamEvent> {
        credit_exhausted_events(self.open.take().map(|(_, index)| index), usage)
    }
}

pub(crate) fn message_stop() -> StreamEvent {
    StreamEvent::MessageStop
}

/// The events that end a stream the tenant's credit cannot pay for (the delta
/// that would have overspent is not sent): the open block's stop, then
/// `message_delta` with `stop_reason: "max_tokens"` (what clients already handle
/// for a token cap), the usage charged and, beside it, why, in the words of the
/// chat cutoff. `message_stop` follows once the charge is committed.
pub(crate) fn credit_exhausted_events(open_block: Option<u64>, usage: &Usage) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    if let Some(index) = open_block {
        events.push(StreamEvent::ContentBlockStop { index });
    }
    events.push(StreamEvent::MessageDelta {
        delta: MessageDeltaBody {
            stop_reason: "max_tokens",
            stop_sequence: None,
        },
        usage: anthropic_usage(usage),
        aigne_hub: Some(crate::pipeline::credit_exhausted_note()),
    });
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::to_json;

    /// Events as the client reads them.
    fn json_of(events: Vec<StreamEvent>) -> Vec<Value> {
        events.iter().map(to_json).collect()
    }

    fn chunk(delta: Value, finish_reason: Value) -> Value {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }

    #[test]
    fn text_then_tool_calls_become_blocks() {
        let mut t = OpenAiToAnthropicStream::new("msg_1".into(), "gpt-x".into());
        let mut events = json_of(t.start());
        for c in [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"reasoning_content": "hm"}), Value::Null),
            chunk(json!({"content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "now", "arguments": "{}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ] {
            events.extend(json_of(t.on_chunk(&c)));
        }
        events.extend(json_of(t.finish(&Usage {
            input_tokens: 8,
            output_tokens: 30,
            ..Usage::default()
        })));
        events.push(to_json(&message_stop()));
        let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[2]["content_block"]["type"], "thinking");
        assert_eq!(events[5]["index"], 1);
        assert_eq!(
            events[6]["delta"],
            json!({"type": "text_delta", "text": "Hel"})
        );
        assert_eq!(
            events[9]["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}})
        );
        assert_eq!(events[11]["delta"]["partial_json"], "\"Paris\"}");
        assert_eq!(events[13]["index"], 3);
        assert_eq!(events[13]["content_block"]["name"], "now");
        assert_eq!(
            events[16],
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 30}})
        );
    }

    #[test]
    fn a_stream_cut_for_credit_closes_its_block_and_says_why() {
        let mut t = OpenAiToAnthropicStream::new("msg_1".into(), "gpt-x".into());
        t.on_chunk(&chunk(json!({"content": "Hel"}), Value::Null));
        let usage = Usage {
            input_tokens: 8,
            output_tokens: 1,
            estimated: true,
            ..Usage::default()
        };
        let events = json_of(t.credit_exhausted(&usage));
        assert_eq!(events[0], json!({"type": "content_block_stop", "index": 0}));
        assert_eq!(events[1]["delta"]["stop_reason"], "max_tokens");
        assert_eq!(events[1]["usage"]["output_tokens"], 1);
        assert_eq!(events[1]["aigne_hub"]["stopped"], "insufficient_credits");
        assert_eq!(events.len(), 2);
        // Nothing open (between blocks): only the message's end.
        assert_eq!(credit_exhausted_events(None, &usage).len(), 1);
    }

    #[test]
    fn frames_are_named_and_output_is_counted() {
        assert_eq!(
            typed_frame(&StreamEvent::Ping),
            Bytes::from("event: ping\ndata: {\"type\":\"ping\"}\n\n")
        );
        assert_eq!(
            event_frame(Some("x"), "a\nb"),
            Bytes::from("event: x\ndata: a\ndata: b\n\n")
        );
        assert_eq!(
            anthropic_event_output_bytes(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abc"}}"#
            ),
            3
        );
    }
}
