//! Progress bars drawn from polling `larder::progress::Progress`, on a
//! terminal only; cron runs stay quiet.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use larder::Progress;

/// A bar that redraws until dropped.
pub struct Bar {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Bar {
    /// Starts a bar for `progress` if `enabled`; `label` names the activity.
    pub fn start(enabled: bool, label: &'static str, progress: Arc<Progress>) -> Option<Bar> {
        if !enabled {
            return None;
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} {bytes} ({binary_bytes_per_sec}) {elapsed_precise}",
            )
            .expect("static template"),
        );
        bar.set_message(label);
        let handle = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let done = Progress::get(&progress.bytes_processed);
                let total = Progress::get(&progress.bytes_total);
                if total > 0 && handle.length() != Some(total) {
                    handle.set_length(total);
                    handle.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta} left)",
                        )
                        .expect("static template"),
                    );
                }
                handle.set_position(done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Some(Bar { bar, task })
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
