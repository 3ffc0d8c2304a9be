//! A node's raft log as raft reads it (the [`raft::Storage`] trait) and as the driver
//! keeps it on disk: every change the node makes to it is also handed out as a
//! [`Change`], so the driver appends exactly those to its file, syncs, and on restart
//! replays them into a fresh [`Log`] ([`Log::apply`]) — one definition of the durable
//! state for the driver, the simulations and raft.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{Error, GetEntriesContext, RaftState, Storage, StorageError};

/// One change to the durable raft state, in the order it must be applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Entries to append; any entry at or after the first one's index is replaced.
    Append(Vec<Entry>),
    /// The vote, term and commit index.
    HardState(HardState),
    /// A snapshot from the leader: it replaces the whole log.
    Restore(Snapshot),
    /// A snapshot of this node's own applied state: entries up to its index are dropped.
    Compact(Snapshot),
    /// The node started from a new log in a cluster that has run (its disk was lost):
    /// it may not vote until it has joined ([`crate::cluster::Config::join`]), across
    /// restarts too.
    Joining,
    /// It has joined, and may vote only in terms above `vote_floor`.
    Joined {
        /// The highest term it heard the other nodes in while joining.
        vote_floor: u64,
    },
}

/// The raft log: the latest snapshot, the entries after it, the hard state and the
/// membership.
#[derive(Clone, Debug, Default)]
pub struct Log {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Entries after the snapshot's index, contiguous.
    entries: Vec<Entry>,
    joining: bool,
    vote_floor: u64,
}

impl Log {
    /// Applies one change, as the node did and as a restart replays it.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Append(ents) => self.append(ents),
            Change::HardState(hs) => self.hard_state = hs.clone(),
            Change::Restore(snap) => {
                let md = snap.get_metadata();
                self.entries.clear();
                self.hard_state.term = self.hard_state.term.max(md.term);
                self.hard_state.commit = self.hard_state.commit.max(md.index);
                self.snapshot = snap.clone();
            }
            Change::Joining => self.joining = true,
            Change::Joined { vote_floor } => {
                self.joining = false;
                self.vote_floor = self.vote_floor.max(*vote_floor);
            }
            Change::Compact(snap) => {
                let index = snap.get_metadata().index;
                if index <= self.snapshot_index() {
                    return;
                }
                let keep_from = self
                    .entries
                    .iter()
                    .position(|e| e.index > index)
                    .unwrap_or(self.entries.len());
                self.entries.drain(..keep_from);
                self.snapshot = snap.clone();
            }
        }
    }

    fn append(&mut self, ents: &[Entry]) {
        let Some(first_new) = ents.first().map(|e| e.index) else {
            return;
        };
        let first = self.first();
        // Keep what comes before the new entries; drop anything they replace.
        let keep = usize::try_from(first_new.saturating_sub(first)).unwrap_or(usize::MAX);
        self.entries.truncate(keep.min(self.entries.len()));
        let skip = usize::try_from(first.saturating_sub(first_new)).unwrap_or(usize::MAX);
        self.entries.extend(ents.iter().skip(skip).cloned());
    }

    /// The latest snapshot (its data is the replicated state at its index).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The vote, term and commit index.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Whether nothing was ever written (a node that must bootstrap).
    pub fn is_empty(&self) -> bool {
        self.snapshot.get_metadata().index == 0 && self.entries.is_empty()
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    /// Entries held after the snapshot.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The changes that rebuild this log from nothing: what a driver writes in place of
    /// its whole file when it compacts it.
    pub fn as_changes(&self) -> Vec<Change> {
        let mut out = vec![
            Change::Restore(self.snapshot.clone()),
            Change::Append(self.entries.clone()),
            Change::HardState(self.hard_state.clone()),
        ];
        if self.vote_floor > 0 {
            out.push(Change::Joined {
                vote_floor: self.vote_floor,
            });
        }
        if self.joining {
            out.push(Change::Joining);
        }
        out
    }

    /// Whether the node is still joining with a new log.
    pub fn joining(&self) -> bool {
        self.joining
    }

    /// The highest term it may not vote in (0: none).
    pub fn vote_floor(&self) -> u64 {
        self.vote_floor
    }
}

impl Storage for Log {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let cs: ConfState = self.snapshot.get_metadata().get_conf_state().clone();
        Ok(RaftState::new(self.hard_state.clone(), cs))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(Error::Store(StorageError::Unavailable));
        }
        let from = usize::try_from(low - self.first()).unwrap_or(usize::MAX);
        let to = usize::try_from(high - self.first()).unwrap_or(usize::MAX);
        let mut ents = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(Error::Store(StorageError::Unavailable));
        }
        let at = usize::try_from(idx - self.first()).unwrap_or(usize::MAX);
        Ok(self.entries[at].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index {
            return Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn snap(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s
    }

    #[test]
    fn appends_replace_the_suffix_and_compaction_keeps_the_rest() {
        let mut log = Log::default();
        log.apply(&Change::Restore(snap(1, 1)));
        log.apply(&Change::Append(vec![entry(2, 1), entry(3, 1), entry(4, 1)]));
        log.apply(&Change::Append(vec![entry(3, 2)]));
        assert_eq!(log.last_index().unwrap(), 3);
        assert_eq!(log.term(3).unwrap(), 2);
        log.apply(&Change::Compact(snap(2, 1)));
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(
            log.term(2).unwrap(),
            1,
            "the compaction point keeps its term"
        );
        assert!(log.term(1).is_err());
        assert!(
            log.entries(2, 4, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert!(
            log.entries(3, 5, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert_eq!(
            log.entries(3, 4, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            1
        );
        log.apply(&Change::Restore(snap(9, 3)));
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (10, 9)
        );
        assert_eq!(log.hard_state().commit, 9);
    }
}
