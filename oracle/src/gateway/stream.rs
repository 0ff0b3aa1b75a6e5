//! Reading a streamed answer as it passes: the upstream's bytes are parsed as
//! server-sent events by a maintained parser (`sse-stream`: CRLF, CR or LF line ends,
//! `data:` with or without its space, events and UTF-8 characters split across
//! chunks), and each event is re-encoded for the client. Events that carry `usage`
//! (the usage chunk) and `[DONE]` are held back: the gateway sends them only once the
//! request's record is committed, so an answer a client received whole is always
//! billed.
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use sse_stream::{Sse, SseByteStream};

use super::request::{generated_text, usage_of};

/// What to do with one event of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Passage {
    /// Send it on now.
    Forward(Bytes),
    /// Send it only after the record is committed (the usage chunk, `[DONE]`).
    Hold(Bytes),
}

/// Bytes fed so far, read by the parser; `Pending` when empty until closed.
#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    closed: bool,
}

struct Source(Arc<Mutex<Inbox>>);

impl Stream for Source {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Ok(mut inbox) = self.0.lock() else {
            return Poll::Ready(None);
        };
        match inbox.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if inbox.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// What a streamed answer's events said so far: the upstream's response id, the usage
/// chunk's counts, whether `[DONE]` came, and each choice's generated text (to count
/// it when the upstream sends no usage). Fed the upstream's bytes as they arrive, in
/// any chunking.
pub struct StreamUsage {
    pub id: Option<String>,
    /// The model the server says it served (its events' `model`).
    pub model: Option<String>,
    pub usage: Option<(u64, u64)>,
    pub done: bool,
    pub generated: BTreeMap<u64, String>,
    /// Why the stream could not be parsed further, if it could not.
    pub broken: Option<String>,
    inbox: Arc<Mutex<Inbox>>,
    events: Pin<Box<SseByteStream<Source>>>,
}

impl Default for StreamUsage {
    fn default() -> Self {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        Self {
            id: None,
            model: None,
            usage: None,
            done: false,
            generated: BTreeMap::new(),
            broken: None,
            events: Box::pin(SseByteStream::new(Source(Arc::clone(&inbox)))),
            inbox,
        }
    }
}

impl std::fmt::Debug for StreamUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamUsage")
            .field("id", &self.id)
            .field("usage", &self.usage)
            .field("done", &self.done)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl StreamUsage {
    /// Feeds the next bytes of the stream; returns the events completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Passage> {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.chunks.push_back(Bytes::copy_from_slice(chunk));
        }
        self.drain()
    }

    /// The stream ended: an incomplete last event is dropped (as browsers do).
    pub fn finish(&mut self) -> Vec<Passage> {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.closed = true;
        }
        self.drain()
    }

    fn drain(&mut self) -> Vec<Passage> {
        let mut out = Vec::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while self.broken.is_none() {
            match self.events.as_mut().poll_next(&mut cx) {
                Poll::Ready(Some(Ok(event))) => {
                    if let Some(passage) = self.read(event) {
                        out.push(passage);
                    }
                }
                Poll::Ready(Some(Err(e))) => self.broken = Some(e.to_string()),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        out
    }

    fn read(&mut self, event: Sse) -> Option<Passage> {
        let mut hold = false;
        if let Some(data) = event.data.as_deref() {
            if data.trim() == "[DONE]" {
                self.done = true;
                hold = true;
            } else if let Ok(value) = serde_json::from_str::<Value>(data) {
                if self.model.is_none() {
                    self.model = value
                        .get("model")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                }
                if self.id.is_none() {
                    self.id = value.get("id").and_then(Value::as_str).map(str::to_string);
                }
                generated_text(&value, &mut self.generated);
                if let Some(usage) = usage_of(&value) {
                    self.usage = Some(usage);
                    hold = true;
                }
            }
        }
        let bytes = event.encode().ok()?;
        Some(if hold {
            Passage::Hold(bytes)
        } else {
            Passage::Forward(bytes)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn crlf_no_space_and_split_utf8_are_read_whatever_the_chunking() {
        let sse = concat!(
            "data: {\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hé\"}}],\"usage\":null}\r\n\r\n",
            ": keep-alive\r\n\r\n",
            "data:{\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo ✓\"}}]}\n\n",
            "data: {\"id\":\"cmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\r\n\r\n",
            "data: [DONE]\r\n\r\n"
        );
        for size in 1..=sse.len() {
            let mut seen = StreamUsage::default();
            let mut passages = Vec::new();
            for chunk in sse.as_bytes().chunks(size) {
                passages.extend(seen.feed(chunk));
            }
            passages.extend(seen.finish());
            assert_eq!(seen.usage, Some((3, 5)), "chunks of {size} bytes");
            assert_eq!(seen.id.as_deref(), Some("cmpl-1"));
            assert!(seen.done);
            assert_eq!(seen.generated[&0], "héllo ✓", "chunks of {size} bytes");
            let held: Vec<_> = passages
                .iter()
                .filter(|p| matches!(p, Passage::Hold(_)))
                .collect();
            assert_eq!(
                held.len(),
                2,
                "the usage chunk and [DONE] wait for the commit"
            );
            assert_eq!(passages.len(), 4);
        }
    }
}
