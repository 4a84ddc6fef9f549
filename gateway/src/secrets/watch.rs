//! File-change notifications for the file-backed providers.
//!
//! We watch *directories*, not files: editors and deployment tools replace files by
//! renaming over them, and Kubernetes swaps a `..data` symlink in the mount directory; a
//! watch on the old inode would miss both. Any relevant event in a watched directory wakes
//! the provider, which re-reads and swaps only if a value actually changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// Quiet time after the last event before re-reading.
pub(super) const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watch `dirs` (non-recursively); every mutating event wakes `notify`. `None` when the
/// watcher could not be set up (logged; the caller falls back to polling and retries).
pub(super) fn watch_dirs(
    provider: &str,
    dirs: &[PathBuf],
    notify: Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            // Our own reads generate open/close(read) events: ignoring them avoids a loop.
            Ok(ev) => match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // A watcher error (queue overflow …): re-read to be safe.
            Err(_) => true,
        };
        if relevant {
            notify.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(provider, error = %e, "cannot create a file watcher; polling only");
            return None;
        }
    };
    for d in dirs {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(provider, dir = %d.display(), error = %e, "cannot watch directory; polling only");
            return None;
        }
    }
    Some(watcher)
}
