//! A small incremental parser for server-sent events (the `text/event-stream`
//! format OpenAI-compatible streams use). Lines are bounded so that a broken
//! upstream cannot make the hub buffer without limit.

use super::{SseEvent, UpstreamError};
use bytes::{Buf, BytesMut};

/// Longest line accepted from an upstream stream.
pub const SSE_LINE_MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub struct SseParser {
    buffer: BytesMut,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() > SSE_LINE_MAX_BYTES && !self.buffer.contains(&b'\n') {
            return Err(UpstreamError::Protocol(
                "stream line longer than the limit".into(),
            ));
        }
        Ok(())
    }

    /// The next complete event in what was pushed so far, if any.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, UpstreamError> {
        while let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line = self.buffer.split_to(newline + 1);
            line.truncate(newline);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            let line = std::str::from_utf8(&line)
                .map_err(|_| UpstreamError::Protocol("stream is not UTF-8".into()))?;
            if line.is_empty() {
                if self.data.is_empty() && self.event.is_none() {
                    continue;
                }
                let data = std::mem::take(&mut self.data).join("\n");
                return Ok(Some(SseEvent {
                    event: self.event.take(),
                    data,
                }));
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_string()),
                "event" => self.event = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Whether bytes of an unfinished event remain (the stream ended mid-event).
    pub fn has_partial(&self) -> bool {
        self.buffer.has_remaining() || !self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut p = SseParser::default();
        p.push(b"data: {\"a\":").unwrap();
        assert_eq!(p.next_event().unwrap(), None);
        p.push(b"1}\r\n\r\n: comment\n\nevent: x\ndata: [DONE]\n\n")
            .unwrap();
        assert_eq!(
            p.next_event().unwrap(),
            Some(SseEvent {
                event: None,
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            p.next_event().unwrap(),
            Some(SseEvent {
                event: Some("x".into()),
                data: "[DONE]".into()
            })
        );
        assert_eq!(p.next_event().unwrap(), None);
        assert!(!p.has_partial());
    }
}
