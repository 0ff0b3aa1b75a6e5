//! Progress of long batches of transactions (a program deploy's ~1,250 buffer
//! writes, account upgrades) on stderr: a bar on a terminal, a line per tenth
//! elsewhere (CI logs, pipes), so a long `tally admin migrate` never looks hung.
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use tally_client::chain::Progress;

/// Batches smaller than this land too fast to need a bar.
const SHOW_FROM: usize = 20;

/// A [`Progress`] that draws on stderr.
pub fn to_stderr() -> Progress {
    let terminal = std::io::stderr().is_terminal();
    let state: Mutex<Option<(usize, Drawn)>> = Mutex::new(None);
    Arc::new(move |landed, total| {
        if total < SHOW_FROM {
            return;
        }
        let Ok(mut state) = state.lock() else {
            return;
        };
        // A new batch (another total, or counting from the start again).
        let fresh = !matches!(&*state, Some((t, d)) if *t == total && d.landed() <= landed);
        if fresh {
            *state = Some((total, Drawn::start(total, terminal)));
        }
        if let Some((_, drawn)) = state.as_mut() {
            drawn.update(landed, total);
        }
    })
}

enum Drawn {
    Bar(ProgressBar),
    /// The last tenth printed, and how many had landed.
    Lines {
        tenth: usize,
        landed: usize,
    },
}

impl Drawn {
    fn start(total: usize, terminal: bool) -> Self {
        if terminal {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "  sending {bar:40} {pos}/{len} transactions landed ({eta} left)",
            ) {
                bar.set_style(style);
            }
            Drawn::Bar(bar)
        } else {
            eprintln!("  sending {total} transactions…");
            Drawn::Lines {
                tenth: 0,
                landed: 0,
            }
        }
    }

    fn landed(&self) -> usize {
        match self {
            Drawn::Bar(bar) => usize::try_from(bar.position()).unwrap_or(usize::MAX),
            Drawn::Lines { landed, .. } => *landed,
        }
    }

    fn update(&mut self, landed: usize, total: usize) {
        match self {
            Drawn::Bar(bar) => {
                bar.set_position(landed as u64);
                if landed >= total {
                    bar.finish_and_clear();
                    eprintln!("  {total} transactions landed");
                }
            }
            Drawn::Lines {
                tenth,
                landed: seen,
            } => {
                *seen = landed;
                let now = landed * 10 / total;
                if now > *tenth {
                    *tenth = now;
                    eprintln!("  {landed}/{total} transactions landed ({}%)", now * 10);
                }
            }
        }
    }
}
