//! An append-only log in segments, with a checksum per record and one sync per commit.
//!
//! Layout of a data directory:
//!
//! ```text
//! LOCK                      held (flock) by the one process using the directory
//! 0000000000000001.log      segments, oldest first; only the newest is appended to
//! 0000000000000002.log
//! ```
//!
//! A segment starts with the 8-byte magic `S0LOG\0\0\x01`, then records:
//!
//! ```text
//! crc32 (u32 LE) | len (u32 LE) | kind (u8: 1 put, 2 delete) | key (u64 LE) | value
//! ```
//!
//! `len` counts kind, key and value; the CRC-32 covers `len` and those `len` bytes.
//!
//! Every record after the last good one in the newest segment, when no good record follows
//! it, is a torn tail (the process died while writing): it is cut off with a warning and
//! everything before it is kept. A bad record anywhere else is damage in the middle: opening
//! fails with its file and offset, unless [`LogOptions::repair`] is set, in which case the
//! damaged bytes are skipped up to the next good record and each skip is logged.
//!
//! Compaction keeps disk use proportional to what is live: the oldest segment is removed as
//! soon as none of its puts is live (a delete only ever follows the puts of its key, so
//! removing a prefix of segments never revives a deleted key), and while the files hold more
//! than twice the live bytes plus a segment, the live records of the oldest segment are
//! copied forward so it can go.

use bytes::Bytes;
use scale0_proto::journal::Store;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tracing::{error, info, warn};

const MAGIC: &[u8; 8] = b"S0LOG\0\0\x01";
const HEADER: usize = 8;
/// crc + len.
const FRAME: usize = 8;
/// kind + key.
const META: usize = 9;
/// How long opening waits for another process to release the directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Settings of a [`LogStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// Open despite damage in the middle of the log, skipping the damaged records.
    pub repair: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 16 * 1024 * 1024,
            repair: false,
        }
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An I/O error, with what was being done.
    #[error("{what}: {error}")]
    Io {
        /// What failed.
        what: String,
        /// The error.
        error: io::Error,
    },
    /// Another process holds the directory (for more than two seconds).
    #[error("{0} is in use by another process (its LOCK file is held)")]
    Locked(PathBuf),
    /// Damage in the middle of the log.
    #[error(
        "{file}: damaged record at byte {offset}, with good records after it; \
         records there are lost. Start with the repair option to skip the damage and keep the rest"
    )]
    Corrupt {
        /// The damaged segment.
        file: PathBuf,
        /// Where the first bad record starts.
        offset: u64,
    },
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> Self {
        io::Error::other(e)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let what = what.into();
    move |error| OpenError::Io { what, error }
}

/// What happened while opening, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments read.
    pub segments: usize,
    /// Records read, puts and deletes.
    pub records: u64,
    /// Live entries found.
    pub live: usize,
    /// Bytes cut from the end of the newest segment (a torn tail).
    pub torn_bytes: u64,
    /// Damaged spans skipped in repair mode, as (file, offset, length).
    pub skipped: Vec<(PathBuf, u64, u64)>,
}

/// Counts since opening.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Commits that wrote something (each is one write and one `fdatasync`).
    pub syncs: u64,
    /// Bytes appended, records and headers.
    pub bytes_written: u64,
    /// Segments removed by compaction.
    pub segments_removed: u64,
    /// Live records copied forward by compaction.
    pub relocated: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    file_bytes: u64,
    live: usize,
    live_bytes: u64,
}

/// The store: see the module documentation.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    options: LogOptions,
    _lock: File,
    active: File,
    active_id: u64,
    /// Records not yet written.
    buf: Vec<u8>,
    /// Live key -> (segment, record bytes).
    live: HashMap<u64, (u64, u64)>,
    segments: BTreeMap<u64, Segment>,
    loaded: Option<Vec<(u64, Bytes)>>,
    stats: LogStats,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

fn record(out: &mut Vec<u8>, kind: u8, key: u64, value: &[u8]) -> u64 {
    let len = META + value.len();
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // Values are bounded by the broker's message size limit, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    (FRAME + len) as u64
}

/// One record parsed from a segment.
struct Parsed<'a> {
    kind: u8,
    key: u64,
    value: &'a [u8],
    size: usize,
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The record at the start of `b`, if it is whole and its checksum matches.
fn parse(b: &[u8]) -> Option<Parsed<'_>> {
    if b.len() < FRAME + META {
        return None;
    }
    let crc = le_u32(b);
    let len = le_u32(&b[4..]) as usize;
    if len < META || b.len() - FRAME < len {
        return None;
    }
    if crc32fast::hash(&b[4..FRAME + len]) != crc {
        return None;
    }
    let kind = b[FRAME];
    if kind != PUT && kind != DELETE {
        return None;
    }
    Some(Parsed {
        kind,
        key: le_u64(&b[FRAME + 1..]),
        value: &b[FRAME + META..FRAME + len],
        size: FRAME + len,
    })
}

/// The offset of the next good record at or after `from`, if any.
fn next_good(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len()).find(|&at| parse(&b[at..]).is_some())
}

/// `key` is no longer live where it was: its segment's live counts drop.
fn unaccount(live: &mut HashMap<u64, (u64, u64)>, segments: &mut BTreeMap<u64, Segment>, key: u64) {
    if let Some((seg, size)) = live.remove(&key)
        && let Some(s) = segments.get_mut(&seg)
    {
        s.live = s.live.saturating_sub(1);
        s.live_bytes = s.live_bytes.saturating_sub(size);
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, reading every segment.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(Self, OpenReport), OpenError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        // A broker restarted right after a crash may find the lock still held for a few
        // milliseconds by the dying process: wait a little before calling it in use.
        let waited = std::time::Instant::now();
        while lock.try_lock().is_err() {
            if waited.elapsed() >= LOCK_WAIT {
                return Err(OpenError::Locked(dir.to_path_buf()));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            if let Ok(id) = u64::from_str_radix(stem, 16) {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut report = OpenReport {
            segments: ids.len(),
            ..OpenReport::default()
        };
        let mut values: BTreeMap<u64, Bytes> = BTreeMap::new();
        let mut live: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            let newest = i + 1 == ids.len();
            let path = segment_path(dir, id);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io_err(format!("reading {}", path.display())))?;
            let mut good_end = data.len();
            if data.len() < HEADER || &data[..HEADER] != MAGIC {
                if newest && data.len() <= HEADER && MAGIC.starts_with(&data) {
                    // Died while creating it: nothing was ever committed there.
                    warn!(file = %path.display(), "removing a segment cut short at creation");
                    report.torn_bytes += data.len() as u64;
                    fs::remove_file(&path)
                        .map_err(io_err(format!("removing {}", path.display())))?;
                    continue;
                }
                return Err(OpenError::Corrupt {
                    file: path,
                    offset: 0,
                });
            }
            let mut at = HEADER;
            while at < data.len() {
                let Some(r) = parse(&data[at..]) else {
                    let next = next_good(&data, at + 1);
                    match next {
                        None if newest => {
                            let cut = (data.len() - at) as u64;
                            warn!(
                                file = %path.display(),
                                offset = at,
                                bytes = cut,
                                "cutting off a torn record at the end of the log (written by a process that died mid-write); everything before it is kept"
                            );
                            report.torn_bytes += cut;
                            good_end = at;
                            break;
                        }
                        _ if !options.repair => {
                            return Err(OpenError::Corrupt {
                                file: path,
                                offset: at as u64,
                            });
                        }
                        next => {
                            let resume = next.unwrap_or(data.len());
                            error!(
                                file = %path.display(),
                                offset = at,
                                bytes = resume - at,
                                "repair: skipping damaged bytes; the records in them are lost"
                            );
                            report
                                .skipped
                                .push((path.clone(), at as u64, (resume - at) as u64));
                            at = resume;
                            continue;
                        }
                    }
                };
                report.records += 1;
                let size = r.size as u64;
                unaccount(&mut live, &mut segments, r.key);
                if r.kind == PUT {
                    values.insert(r.key, Bytes::copy_from_slice(r.value));
                    live.insert(r.key, (id, size));
                    let s = segments.entry(id).or_default();
                    s.live += 1;
                    s.live_bytes += size;
                } else {
                    values.remove(&r.key);
                }
                at += r.size;
            }
            if good_end < data.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(format!("opening {}", path.display())))?;
                f.set_len(good_end as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err(format!("truncating {}", path.display())))?;
            }
            segments.entry(id).or_default().file_bytes = good_end as u64;
        }
        report.live = values.len();

        // Always append to a fresh segment: the old newest may have ended torn.
        let active_id = ids.last().map_or(1, |id| id + 1);
        let active = Self::create_segment(dir, active_id)?;
        segments.insert(
            active_id,
            Segment {
                file_bytes: HEADER as u64,
                ..Segment::default()
            },
        );
        let mut store = Self {
            dir: dir.to_path_buf(),
            options,
            _lock: lock,
            active,
            active_id,
            buf: Vec::new(),
            live,
            segments,
            loaded: Some(values.into_iter().collect()),
            stats: LogStats::default(),
        };
        store
            .compact()
            .map_err(io_err(format!("compacting {}", dir.display())))?;
        info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            live = report.live,
            "opened the durable log"
        );
        Ok((store, report))
    }

    fn create_segment(dir: &Path, id: u64) -> Result<File, OpenError> {
        let path = segment_path(dir, id);
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        f.write_all(MAGIC)
            .and_then(|()| f.sync_all())
            .and_then(|()| sync_dir(dir))
            .map_err(io_err(format!("creating {}", path.display())))?;
        Ok(f)
    }

    /// Counts since opening.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Bytes in segment files now.
    pub fn file_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.file_bytes).sum()
    }

    /// Bytes of live records now.
    pub fn live_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.live_bytes).sum()
    }

    /// Segment files now.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn append(&mut self, kind: u8, key: u64, value: &[u8]) {
        unaccount(&mut self.live, &mut self.segments, key);
        let size = record(&mut self.buf, kind, key, value);
        if kind == PUT {
            self.live.insert(key, (self.active_id, size));
            let s = self.segments.entry(self.active_id).or_default();
            s.live += 1;
            s.live_bytes += size;
        }
    }

    /// Writes the buffer with one write and one `fdatasync`.
    fn write_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.active.write_all(&self.buf)?;
        self.active.sync_data()?;
        let n = self.buf.len() as u64;
        self.buf.clear();
        self.stats.syncs += 1;
        self.stats.bytes_written += n;
        self.segments.entry(self.active_id).or_default().file_bytes += n;
        Ok(())
    }

    /// Rolls the segment when full, removes dead old segments, and copies the live records
    /// of the oldest segment forward while the files hold too much dead data.
    fn compact(&mut self) -> io::Result<()> {
        let full = self
            .segments
            .get(&self.active_id)
            .is_some_and(|s| s.file_bytes >= self.options.segment_bytes);
        if full {
            let id = self.active_id + 1;
            self.active = Self::create_segment(&self.dir, id)?;
            self.active_id = id;
            self.segments.insert(
                id,
                Segment {
                    file_bytes: HEADER as u64,
                    ..Segment::default()
                },
            );
        }
        let mut removed = false;
        // Segments with no records at all (a run that wrote nothing) hold no deletes
        // either, so they can go from anywhere, not only from the front.
        let empty: Vec<u64> = self
            .segments
            .iter()
            .filter(|(id, s)| **id != self.active_id && s.file_bytes <= HEADER as u64)
            .map(|(id, _)| *id)
            .collect();
        for id in empty {
            fs::remove_file(segment_path(&self.dir, id))?;
            self.segments.remove(&id);
            self.stats.segments_removed += 1;
            removed = true;
        }
        while let Some((&oldest, &seg)) = self.segments.iter().next() {
            if oldest == self.active_id {
                break;
            }
            if seg.live > 0 {
                let bound = 2 * self.live_bytes() + self.options.segment_bytes;
                if self.file_bytes() <= bound {
                    break;
                }
                self.relocate(oldest)?;
            }
            fs::remove_file(segment_path(&self.dir, oldest))?;
            self.segments.remove(&oldest);
            self.stats.segments_removed += 1;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Copies the live puts of segment `id` to the active one, durably.
    fn relocate(&mut self, id: u64) -> io::Result<()> {
        let mut data = Vec::new();
        File::open(segment_path(&self.dir, id))?.read_to_end(&mut data)?;
        let mut at = HEADER;
        while at < data.len() {
            let Some(r) = parse(&data[at..]) else {
                // Damage skipped by a repairing open: resume where it did.
                match next_good(&data, at + 1) {
                    Some(next) => {
                        at = next;
                        continue;
                    }
                    None => break,
                }
            };
            if r.kind == PUT && self.live.get(&r.key).is_some_and(|(seg, _)| *seg == id) {
                let value = r.value.to_vec();
                self.append(PUT, r.key, &value);
                self.stats.relocated += 1;
            }
            at += r.size;
        }
        self.write_buffered()
    }
}

impl Store for LogStore {
    fn load(&mut self) -> io::Result<Vec<(u64, Bytes)>> {
        Ok(self.loaded.take().unwrap_or_default())
    }

    fn put(&mut self, key: u64, value: &[u8]) -> io::Result<()> {
        self.append(PUT, key, value);
        Ok(())
    }

    fn delete(&mut self, key: u64) -> io::Result<()> {
        if self.live.contains_key(&key) {
            self.append(DELETE, key, &[]);
        }
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write_buffered()?;
        self.compact()
    }
}
