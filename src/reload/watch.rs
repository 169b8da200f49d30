//! The policy watch: which directories to watch (the path's symlink chain,
//! re-resolved after every change; for a policy directory, the chain of
//! each of its policy files too) and which file events mean "the file is
//! complete, take it".

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Whether the platform's watcher reports a writer closing the file
/// (inotify's `IN_CLOSE_WRITE`). Without it, an in-place change is taken
/// once the file has been quiet for [`SETTLE`].
pub(super) const CLOSE_EVENTS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Without close events: how long an in-place change must stay unchanged.
pub(super) const SETTLE: Duration = Duration::from_secs(2);

/// Symlinks followed before the chain counts as a loop (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// What one file event asks of the reloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// The content is complete (a writer closed it, or a rename or a link
    /// swap put a finished file in place): take it now.
    Take,
    /// A name on the chain went away: see whether the policy is still there.
    Recheck,
    /// Written in place on a platform without close events: take it once quiet.
    Settle,
}

/// What a file event on a chain entry means. `is_link_or_dir` is asked only
/// for creations: a new symlink or directory is complete at once, a new
/// regular file is still being written.
pub(super) fn classify(kind: &EventKind, is_link_or_dir: impl FnOnce() -> bool) -> Option<Action> {
    let written = (!CLOSE_EVENTS).then_some(Action::Settle);
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Action::Take),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(Action::Recheck),
        // Reported again as a `From` and a `To`.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Modify(ModifyKind::Name(_)) => Some(Action::Take),
        EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Create(CreateKind::Folder) => Some(Action::Take),
        EventKind::Create(_) if is_link_or_dir() => Some(Action::Take),
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any => written,
        EventKind::Remove(_) => Some(Action::Recheck),
        EventKind::Other => None,
    }
}

/// One step of a path still to resolve.
enum Step {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

/// `path`'s steps, last first (a stack: link targets are pushed on top).
fn steps(path: &Path) -> impl Iterator<Item = Step> {
    let steps: Vec<Step> = (path.components())
        .filter_map(|c| match c {
            Component::Prefix(_) | Component::RootDir => Some(Step::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(name) => Some(Step::Name(name.to_owned())),
        })
        .collect();
    steps.into_iter().rev()
}

/// The names that decide what `path` refers to: every symlink met while
/// resolving it, then the final target (or the first component that does
/// not exist). Each is a canonical directory joined with a name, the form
/// the watcher reports events in.
pub(super) fn chain(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut pending: Vec<Step> = steps(&std::path::absolute(path)?).collect();
    let mut entries = Vec::new();
    // Built from resolved steps only, so it never contains a symlink.
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(step) = pending.pop() {
        let name = match step {
            Step::Root => {
                resolved = PathBuf::from("/");
                continue;
            }
            Step::Parent => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let next = resolved.join(name);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_LINKS} symlinks resolving {}",
                        path.display()
                    )));
                }
                // A relative target continues from the link's directory.
                pending.extend(steps(&std::fs::read_link(&next)?));
                entries.push(next);
            }
            Ok(_) => resolved = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                entries.push(next);
                return Ok(entries);
            }
            Err(e) => return Err(e),
        }
    }
    entries.push(resolved);
    Ok(entries)
}

/// What events asked for since the reloader last looked.
#[derive(Debug, Default)]
struct Pending {
    /// The chain entries, as of the last [`PolicyWatch::refresh`].
    entries: HashSet<PathBuf>,
    /// When the policy is a directory: that directory, resolved. An event
    /// on any policy file name in it counts (a file added is no entry yet).
    dir: Option<PathBuf>,
    /// Files of the policy directory written in place and not closed yet:
    /// nothing is taken while one is (see [`Events::due`]).
    writing: HashSet<PathBuf>,
    take: bool,
    recheck: bool,
    /// Events were lost (the kernel queue overflowed).
    lost: bool,
    settle_at: Option<Instant>,
}

/// The reloader's side of the watch: wait for events, collect what they asked.
#[derive(Clone)]
pub(super) struct Events {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<tokio::sync::Notify>,
}

/// What the reloader should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Read and compile the file.
    Take,
    /// Check that the file is still there; compile nothing.
    Recheck,
}

impl Events {
    /// Resolves after an event on the chain.
    pub(super) async fn changed(&self) {
        self.wake.notified().await;
    }

    /// When an in-place change, quiet since, becomes due (no close events only).
    pub(super) fn settle_at(&self) -> Option<Instant> {
        self.lock().settle_at
    }

    /// Takes what the events since the last call asked for. While a file of
    /// a policy directory is being written in place, nothing is due until
    /// its writer closes it, or it has had no write for [`SETTLE`]: the
    /// other files are never taken beside half of it.
    pub(super) fn due(&self) -> Option<Due> {
        let now = Instant::now();
        let mut p = self.lock();
        if !p.writing.is_empty() {
            if p.settle_at.is_some_and(|at| at > now) {
                return None;
            }
            p.writing.clear();
        }
        if p.lost {
            p.lost = false;
            tracing::warn!("policy watch events were lost; send SIGHUP if a change is not taken");
        }
        // A take reads the file as it is now, settled or not.
        if p.take || p.settle_at.is_some_and(|at| at <= now) {
            p.settle_at = None;
            p.take = true;
        }
        let due = match (p.take, p.recheck) {
            (true, _) => Some(Due::Take),
            (false, true) => Some(Due::Recheck),
            (false, false) => None,
        };
        (p.take, p.recheck) = (false, false);
        due
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs on the watcher's thread for every raw event.
    fn on_event(&self, event: notify::Result<Event>) {
        let event = match event {
            Ok(e) => e,
            Err(e) => return tracing::warn!(error = %e, "policy watch error"),
        };
        if event.need_rescan() {
            let mut p = self.lock();
            (p.lost, p.recheck) = (true, true);
            drop(p);
            return self.wake.notify_one();
        }
        let relevant: Vec<&PathBuf> = {
            let p = self.lock();
            (event.paths.iter())
                .filter(|e| p.entries.contains(*e) || in_policy_dir(p.dir.as_deref(), e))
                .collect()
        };
        self.track_writers(&event.kind, &relevant);
        let action =
            (relevant.iter()).find_map(|path| classify(&event.kind, || is_link_or_dir(path)));
        let Some(action) = action else { return };
        let mut p = self.lock();
        match action {
            Action::Take => p.take = true,
            Action::Recheck => p.recheck = true,
            Action::Settle => p.settle_at = Some(Instant::now() + SETTLE),
        }
        drop(p);
        self.wake.notify_one();
    }
}

impl Events {
    /// Notes which files of a policy directory a writer has open, from the
    /// events on them: data written or a regular file created opens one, its
    /// close, removal or rename away closes it.
    fn track_writers(&self, kind: &EventKind, paths: &[&PathBuf]) {
        let mut p = self.lock();
        let Some(dir) = p.dir.clone() else { return };
        for &path in paths.iter().filter(|e| in_policy_dir(Some(&dir), e)) {
            match kind {
                EventKind::Modify(ModifyKind::Data(_)) => {}
                EventKind::Create(CreateKind::File) if !is_link_or_dir(path) => {}
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => {
                    p.writing.remove(path);
                    continue;
                }
                _ => continue,
            }
            p.writing.insert(path.clone());
            p.settle_at = Some(Instant::now() + SETTLE);
        }
    }
}

/// Whether `path` names a policy file directly in the policy directory `dir`.
fn in_policy_dir(dir: Option<&Path>, path: &Path) -> bool {
    dir.is_some_and(|dir| path.parent() == Some(dir))
        && (path.file_name().and_then(|n| n.to_str()))
            .is_some_and(crate::policy_file::is_policy_name)
}

fn is_link_or_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink() || m.is_dir())
}

/// Watches the directories of the policy path's symlink chain.
pub(super) struct PolicyWatch {
    path: PathBuf,
    watcher: RecommendedWatcher,
    /// Each watched directory and the (device, inode) it had then: a
    /// directory deleted and made again under the same name needs a new watch.
    watched: HashMap<PathBuf, (u64, u64)>,
    events: Events,
}

impl PolicyWatch {
    /// Starts watching `path`'s chain. Blocking: call it off the event loops.
    pub(super) fn new(path: &Path) -> notify::Result<PolicyWatch> {
        let events = Events {
            pending: Arc::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let handler = events.clone();
        let watcher = notify::recommended_watcher(move |e| handler.on_event(e))?;
        let mut watch = PolicyWatch {
            path: path.to_path_buf(),
            watcher,
            watched: HashMap::new(),
            events,
        };
        watch.refresh();
        Ok(watch)
    }

    pub(super) fn events(&self) -> Events {
        self.events.clone()
    }

    /// Re-resolves the chain (a ConfigMap swap or a re-pointed link changes
    /// it) and moves the watches to the directories it now runs through.
    /// Blocking: call it off the event loops, and before reading the file,
    /// so that no change after the read goes unseen.
    pub(super) fn refresh(&mut self) {
        let mut entries = match chain(&self.path) {
            Ok(entries) => entries,
            Err(e) => {
                return tracing::warn!(path = %self.path.display(), error = %e, "cannot resolve the policy path; watching what was watched");
            }
        };
        let dir = (entries.last())
            .filter(|last| std::fs::symlink_metadata(last).is_ok_and(|m| m.is_dir()))
            .cloned();
        if let Some(dir) = &dir {
            entries.extend(policy_file_chains(dir));
        }
        let dirs: HashMap<PathBuf, (u64, u64)> = (entries.iter())
            .filter_map(|e| e.parent())
            .filter_map(|d| {
                let m = std::fs::metadata(d)
                    .ok()
                    .filter(std::fs::Metadata::is_dir)?;
                Some((d.to_path_buf(), (m.dev(), m.ino())))
            })
            .collect();
        // Entries first: an event in a directory watched below must count.
        let mut p = self.events.lock();
        p.entries = entries.into_iter().collect();
        p.dir = dir;
        drop(p);
        let watcher = &mut self.watcher;
        self.watched.retain(|dir, id| {
            let keep = dirs.get(dir) == Some(id);
            if !keep {
                // Fails when the directory is gone, which removed the watch.
                let _ = watcher.unwatch(dir);
            }
            keep
        });
        for (dir, id) in dirs {
            if self.watched.contains_key(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir, id);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory of the policy path; reload with SIGHUP");
                }
            }
        }
    }
}

/// The chains of the policy files directly in `dir` (the links of a
/// ConfigMap mount lead through `..data` into a hidden directory).
fn policy_file_chains(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in read.flatten() {
        let name = entry.file_name();
        if !(name.to_str()).is_some_and(crate::policy_file::is_policy_name) {
            continue;
        }
        let path = dir.join(&name);
        match chain(&path) {
            Ok(links) => out.extend(links),
            // A loop: the file itself still counts; the reload reports it.
            Err(_) => out.push(path),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, MetadataKind, RemoveKind};
    use std::os::unix::fs::symlink;

    #[test]
    fn only_a_close_a_rename_in_or_a_new_link_takes_the_file() {
        let in_place = (!CLOSE_EVENTS).then_some(Action::Settle);
        let cases: [(&str, EventKind, bool, Option<Action>); 12] = [
            (
                "a writer closed the file",
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                false,
                Some(Action::Take),
            ),
            (
                "a reader closed the file",
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
                None,
            ),
            (
                "a writer opened the file",
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                false,
                None,
            ),
            (
                "bytes written, file still open",
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                false,
                in_place,
            ),
            (
                "a regular file created, still being written",
                EventKind::Create(CreateKind::File),
                false,
                in_place,
            ),
            (
                "a symlink created (ln -s)",
                EventKind::Create(CreateKind::File),
                true,
                Some(Action::Take),
            ),
            (
                "a directory created",
                EventKind::Create(CreateKind::Folder),
                false,
                Some(Action::Take),
            ),
            (
                "renamed onto the name",
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                false,
                Some(Action::Take),
            ),
            (
                "renamed away from the name",
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                false,
                Some(Action::Recheck),
            ),
            (
                "the pair of a rename, reported again as From and To",
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                false,
                None,
            ),
            (
                "deleted",
                EventKind::Remove(RemoveKind::File),
                false,
                Some(Action::Recheck),
            ),
            (
                "chmod or touch",
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                false,
                None,
            ),
        ];
        for (name, kind, link, want) in cases {
            assert_eq!(classify(&kind, || link), want, "{name}");
        }
    }

    /// A fresh canonical directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-watch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    #[test]
    fn the_chain_lists_every_link_and_the_target() {
        let root = scratch("chain");
        for d in ["d1", "d2", "d3"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        std::fs::write(root.join("d3/real.yaml"), "").unwrap();
        symlink(root.join("d3/real.yaml"), root.join("d2/link2")).unwrap();
        symlink("../d2/link2", root.join("d1/link")).unwrap();
        let got = chain(&root.join("d1/./link")).unwrap();
        let want = ["d1/link", "d2/link2", "d3/real.yaml"].map(|p| root.join(p));
        assert_eq!(got, want);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_chain_goes_through_a_linked_directory_configmap_style() {
        let root = scratch("configmap");
        std::fs::create_dir(root.join("..2026")).unwrap();
        std::fs::write(root.join("..2026/policy.yaml"), "").unwrap();
        symlink("..2026", root.join("..data")).unwrap();
        symlink("..data/policy.yaml", root.join("policy.yaml")).unwrap();
        let got = chain(&root.join("policy.yaml")).unwrap();
        let want = ["policy.yaml", "..data", "..2026/policy.yaml"].map(|p| root.join(p));
        assert_eq!(got, want);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_chain_ends_at_the_first_missing_name() {
        let root = scratch("missing");
        symlink("gone/policy.yaml", root.join("policy.yaml")).unwrap();
        let got = chain(&root.join("policy.yaml")).unwrap();
        assert_eq!(got, [root.join("policy.yaml"), root.join("gone")]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let root = scratch("loop");
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert!(chain(&root.join("a")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
