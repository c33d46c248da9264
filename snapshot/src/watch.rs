//! Waiting for a snapshot to be replaced: inotify on its directory (the
//! writer renames a new file into place), so a reader reacts within
//! microseconds instead of a polling period; with a timeout, so a reader
//! also rechecks now and then (and works where inotify is unavailable).
use std::{path::PathBuf, time::Duration};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

pub struct DirWatch {
    dir: PathBuf,
    inotify: Option<Inotify>,
    watching: bool,
}

impl DirWatch {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), inotify: Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok(), watching: false }
    }

    /// Returns once a file in the directory was renamed into place or
    /// closed after writing, or after `timeout`.
    pub fn wait(&mut self, timeout: Duration) {
        if let (Some(i), false) = (&self.inotify, self.watching) {
            // The directory may not exist yet (writer not started).
            self.watching = i.add_watch(&self.dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE).is_ok();
        }
        match (&self.inotify, self.watching) {
            (Some(i), true) => {
                let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(i), nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, ms);
                let _ = i.read_events();
            }
            _ => std::thread::sleep(timeout),
        }
    }
}
