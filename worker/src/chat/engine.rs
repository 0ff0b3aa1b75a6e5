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

impl Active {
    /// One step of the sequence (the first reads its prompt): its text and, when it
    /// ends, its outcome go to the request. Returns the tokens generated.
    fn step(&mut self, model: &ChatModel, stats: &Stats) -> u64 {
        let prefill = !self.sequence.started();
        let before = self.sequence.completion_tokens();
        match model.step(&mut self.sequence) {
            Ok(text) => {
                if prefill {
                    stats
                        .chat_prompt_tokens
                        .fetch_add(self.sequence.prompt_tokens() as u64, Ordering::Relaxed);
                }
                let generated = (self.sequence.completion_tokens() - before) as u64;
                if !text.is_empty() {
                    let _ = self
                        .events
                        .send(Event::Text(String::from_utf8_lossy(&text).into_owned()));
                }
                if let Some(finish) = self.sequence.finished() {
                    let _ = self.events.send(Event::Done(Outcome {
                        finish,
                        prompt_tokens: self.sequence.prompt_tokens(),
                        completion_tokens: self.sequence.completion_tokens(),
                        text: self.sequence.text(),
                    }));
                }
                generated
            }
            Err(e) => {
                let _ = self.events.send(Event::Failed(e.to_string()));
                self.failed = true;
                0
            }
        }
    }

    /// Whether it still has tokens to generate for a client that is still there.
    fn goes_on(&self) -> bool {
        self.sequence.finished().is_none() && !self.failed && !self.events.is_closed()
    }
}

/// The requests the thread holds: those waiting their turn, in arrival order, and
/// those generating.
#[derive(Default)]
struct Schedule {
    waiting: VecDeque<Generation>,
    active: Vec<Active>,
}

impl Schedule {
    /// Takes the requests that arrived: blocks for one when there is nothing to do.
    /// `false` when there is nothing to do and nothing will come.
    fn take_arrivals(&mut self, queue: &mut mpsc::Receiver<Generation>) -> bool {
        if self.active.is_empty() && self.waiting.is_empty() {
            match queue.blocking_recv() {
                Some(generation) => self.waiting.push_back(generation),
                None => return false,
            }
        }
        while let Ok(generation) = queue.try_recv() {
            self.waiting.push_back(generation);
        }
        true
    }

    /// Starts waiting requests, in order, while fewer than `max_active` generate;
    /// those whose client left while they waited are dropped.
    fn admit(&mut self, model: &ChatModel, max_active: usize) {
        while self.active.len() < max_active.max(1) {
            let Some(generation) = self.waiting.pop_front() else {
                break;
            };
            if generation.events.is_closed() {
                continue; // the client left while it waited
            }
            let sequence = model.start(generation.prompt, generation.limits, &generation.sampling);
            self.active.push(Active {
                sequence,
                events: generation.events,
                failed: false,
            });
        }
    }

    /// One step of each active sequence whose client is still there; the time and
    /// tokens go to `stats`, and the sequences that ended leave.
    fn round(&mut self, model: &ChatModel, stats: &Stats) {
        let started = Instant::now();
        let mut generated = 0u64;
        for entry in &mut self.active {
            if entry.events.is_closed() {
                continue; // dropped below, generation abandoned
            }
            generated += entry.step(model, stats);
        }
        stats
            .generation_tokens
            .fetch_add(generated, Ordering::Relaxed);
        stats.inference_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.active.retain(Active::goes_on);
        stats
            .chat_active
            .store(self.active.len() as u64, Ordering::Relaxed);
    }
}

/// Runs until every sender of `queue` is gone.
pub fn run(
    model: &ChatModel,
    stats: &Stats,
    max_active: usize,
    mut queue: mpsc::Receiver<Generation>,
) {
    let mut schedule = Schedule::default();
    // Idle: block for work. Busy: take what arrived without waiting.
    while schedule.take_arrivals(&mut queue) {
        schedule.admit(model, max_active);
        schedule.round(model, stats);
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
