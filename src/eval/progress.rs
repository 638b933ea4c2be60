//! A terminal progress bar for [`super::evaluate`]'s callback: an indicatif bar per stage on a TTY, nothing
//! otherwise (the daemon passes its own callback that forwards progress to its status reports).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Progress;

/// Draws `[stage i/n] name ▕████  ▏ done/total eta` on stderr when it is a terminal.
pub struct TerminalProgress {
    bar: ProgressBar,
    stage_index: usize,
}

impl TerminalProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} {msg:<18} {wide_bar} {pos}/{len} {eta}")
        {
            bar.set_style(style);
        }
        Self {
            bar,
            stage_index: 0,
        }
    }

    /// The callback to hand to `evaluate`.
    pub fn update(&mut self, p: &Progress) {
        if p.stage_index != self.stage_index {
            self.stage_index = p.stage_index;
            self.bar.reset();
            self.bar.set_length(p.total as u64);
            self.bar
                .set_prefix(format!("[{}/{}]", p.stage_index, p.stages));
            self.bar.set_message(p.stage.to_string());
        }
        self.bar.set_position(p.done as u64);
        if p.stage_index == p.stages && p.done >= p.total {
            self.bar.finish_and_clear();
        }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}
