//! The one file watcher: directories watched for changes, debounced by
//! `notify-debouncer-full`. The gateway reloads through it (config, plugins,
//! certificates) and the file-backed secret providers re-read through it.
//!
//! Directories are watched, not files: editors and deployment tools replace files by
//! renaming over them, and Kubernetes swaps a `..data` symlink in the mount directory; a
//! watch on the old inode would miss both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, NoCache, new_debouncer_opt};

/// What a batch of changes is reported as.
#[derive(Debug)]
pub enum Change {
    /// These paths changed (created, written, renamed or removed) and then stayed quiet
    /// for the debounce time.
    Paths(Vec<PathBuf>),
    /// The watcher lost events (queue overflow …): re-read everything to be safe.
    Lost,
}

/// A running watch; dropping it stops the watch.
pub struct DirWatcher {
    inner: Debouncer<RecommendedWatcher, NoCache>,
}

impl DirWatcher {
    /// Watch `dirs` (non-recursively). Once changes have been quiet for `quiet`, they
    /// are passed to `on_change` on the watcher's thread.
    pub fn new(
        dirs: &[PathBuf],
        quiet: Duration,
        on_change: impl Fn(Change) + Send + 'static,
    ) -> notify::Result<DirWatcher> {
        let handler = move |res: DebounceEventResult| match res {
            Ok(events) => {
                let paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|ev| mutates(&ev.kind))
                    .flat_map(|ev| ev.event.paths)
                    .collect();
                if !paths.is_empty() {
                    on_change(Change::Paths(paths));
                }
            }
            Err(_) => on_change(Change::Lost),
        };
        let inner = new_debouncer_opt::<_, RecommendedWatcher, NoCache>(
            quiet,
            None,
            handler,
            NoCache,
            notify::Config::default(),
        )?;
        let mut w = DirWatcher { inner };
        for d in dirs {
            w.watch(d)?;
        }
        Ok(w)
    }

    /// Add a directory.
    pub fn watch(&mut self, dir: &Path) -> notify::Result<()> {
        self.inner.watch(dir, RecursiveMode::NonRecursive)
    }
}

/// Whether an event can mean new content. Reading a watched file (which every reload and
/// re-read does) produces open and close-after-read events: counting those would loop.
fn mutates(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        _ => true,
    }
}
