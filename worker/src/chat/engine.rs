//! The generation thread: requests queue here and run interleaved — each admitted
//! sequence reads its prompt, then every active sequence takes one token per round
//! — so concurrent streams all advance, one slow request never blocks the others,
//! and the HTTP side never waits on the model. Up to `max_active` sequences run at
//! once; the rest wait in arrival order.
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::model::{ChatModel, Finish, Limits, Sampling, Sequence};
use crate::server::Stats;

/// What a request hears back, in order: pieces of text, then one `Done` (or `Failed`).
#[derive(Debug)]
pub enum Event {
    /// Text that may be sent now (whole UTF-8 characters, never part of a stop string).
    Text(String),
    Done(Outcome),
    Failed(String),
}

/// How a generation ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The whole completion text (what a non-streamed answer carries).
    pub text: String,
}

/// One generation request.
pub struct Generation {
    pub prompt: Vec<u32>,
    pub limits: Limits,
    pub sampling: Sampling,
    pub events: mpsc::UnboundedSender<Event>,
}

struct Active {
    sequence: Sequence,
    events: mpsc::UnboundedSender<Event>,
    failed: bool,
}

/// Runs until every sender of `queue` is gone.
pub fn run(
    model: &ChatModel,
    stats: &Stats,
    max_active: usize,
    mut queue: mpsc::Receiver<Generation>,
) {
    let mut waiting: VecDeque<Generation> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    loop {
        // Idle: block for work. Busy: take what arrived without waiting.
        if active.is_empty() && waiting.is_empty() {
            match queue.blocking_recv() {
                Some(generation) => waiting.push_back(generation),
                None => return,
            }
        }
        while let Ok(generation) = queue.try_recv() {
            waiting.push_back(generation);
        }
        while active.len() < max_active.max(1) {
            let Some(generation) = waiting.pop_front() else {
                break;
            };
            if generation.events.is_closed() {
                continue; // the client left while it waited
            }
            let sequence = model.start(generation.prompt, generation.limits, &generation.sampling);
            active.push(Active {
                sequence,
                events: generation.events,
                failed: false,
            });
        }
        // One step of each active sequence (the first reads its prompt).
        let started = Instant::now();
        let mut generated = 0u64;
        for entry in &mut active {
            if entry.events.is_closed() {
                continue; // dropped below, generation abandoned
            }
            let prefill = !entry.sequence.started();
            let before = entry.sequence.completion_tokens();
            match model.step(&mut entry.sequence) {
                Ok(text) => {
                    if prefill {
                        stats
                            .chat_prompt_tokens
                            .fetch_add(entry.sequence.prompt_tokens() as u64, Ordering::Relaxed);
                    }
                    generated += (entry.sequence.completion_tokens() - before) as u64;
                    if !text.is_empty() {
                        let _ = entry
                            .events
                            .send(Event::Text(String::from_utf8_lossy(&text).into_owned()));
                    }
                    if let Some(finish) = entry.sequence.finished() {
                        let _ = entry.events.send(Event::Done(Outcome {
                            finish,
                            prompt_tokens: entry.sequence.prompt_tokens(),
                            completion_tokens: entry.sequence.completion_tokens(),
                            text: entry.sequence.text(),
                        }));
                    }
                }
                Err(e) => {
                    let _ = entry.events.send(Event::Failed(e.to_string()));
                    entry.failed = true;
                }
            }
        }
        stats
            .generation_tokens
            .fetch_add(generated, Ordering::Relaxed);
        stats.inference_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        active.retain(|a| a.sequence.finished().is_none() && !a.failed && !a.events.is_closed());
        stats
            .chat_active
            .store(active.len() as u64, Ordering::Relaxed);
    }
}

/// Starts the generation thread for `model`.
pub fn spawn(
    model: Arc<ChatModel>,
    stats: Arc<Stats>,
    max_active: usize,
) -> std::io::Result<mpsc::Sender<Generation>> {
    let (queue, rx) = mpsc::channel::<Generation>(4096);
    std::thread::Builder::new()
        .name("tally-worker-generation".into())
        .spawn(move || run(&model, &stats, max_active, rx))?;
    Ok(queue)
}
