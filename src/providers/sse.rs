//! A small incremental parser for server-sent events (the `text/event-stream`
//! format OpenAI-compatible streams use). Events are bounded so that a broken
//! upstream cannot make the hub buffer without limit.

use super::{SseEvent, UpstreamError};
use bytes::{Buf, BytesMut};

/// Longest event accepted by a parser made with `default()` (the hub's own use
/// takes `Limits::upstream_stream_event_max_bytes`).
pub(crate) const SSE_EVENT_MAX_BYTES_DEFAULT: usize = 16 * 1024 * 1024;

pub(crate) struct SseParser {
    buffer: BytesMut,
    event: Option<String>,
    data: Vec<String>,
    /// Bytes of `data` so far.
    data_bytes: usize,
    /// Most bytes of one event: its `data` lines and the line being read.
    event_max_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(SSE_EVENT_MAX_BYTES_DEFAULT)
    }
}

impl SseParser {
    pub(crate) fn new(event_max_bytes: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            event: None,
            data: Vec::new(),
            data_bytes: 0,
            event_max_bytes,
        }
    }

    fn too_large(&self) -> UpstreamError {
        UpstreamError::AnswerTooLarge {
            limit_bytes: self.event_max_bytes,
        }
    }

    /// Adds bytes; the caller takes every complete event before pushing more,
    /// so that what is held stays within one event and one chunk.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        self.buffer.extend_from_slice(chunk);
        // Only the new bytes are scanned: without a line end in them the line
        // being read grew by all of them.
        if !chunk.contains(&b'\n') && self.data_bytes + self.buffer.len() > self.event_max_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    /// The next complete event in what was pushed so far, if any.
    pub(crate) fn next_event(&mut self) -> Result<Option<SseEvent>, UpstreamError> {
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
                self.data_bytes = 0;
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
                "data" => {
                    self.data_bytes += value.len();
                    self.data.push(value.to_string());
                }
                "event" => self.event = Some(value.to_string()),
                _ => {}
            }
            if self.data_bytes > self.event_max_bytes {
                return Err(self.too_large());
            }
        }
        if self.data_bytes + self.buffer.len() > self.event_max_bytes {
            return Err(self.too_large());
        }
        Ok(None)
    }

    /// Whether bytes of an unfinished event remain (the stream ended mid-event).
    pub(crate) fn has_partial(&self) -> bool {
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

    #[test]
    fn an_event_past_the_limit_is_refused_as_it_grows() {
        fn too_large<T>(r: Result<T, UpstreamError>) -> bool {
            matches!(r, Err(UpstreamError::AnswerTooLarge { limit_bytes: 16 }))
        }
        // One long line, never ended.
        let mut p = SseParser::new(16);
        p.push(b"data: 0123456").unwrap();
        assert!(too_large(p.push(b"789abcdef")));
        // Many short data lines of one event.
        let mut p = SseParser::new(16);
        p.push(b"data: 012345\ndata: 6789ab\ndata: cdef01\n")
            .unwrap();
        assert!(too_large(p.next_event()));
        // Events within the limit pass, however many.
        let mut p = SseParser::new(16);
        for _ in 0..100 {
            p.push(b"data: 0123456789\n\n").unwrap();
            assert!(p.next_event().unwrap().is_some());
        }
    }
}
