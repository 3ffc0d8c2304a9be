//! The heartbeat bus: heartbeat frames, and the membership table a node keeps from the
//! heartbeats it hears, as a sans-IO state machine.
//!
//! Every node publishes a heartbeat every interval through a forwarder; every node hears
//! every heartbeat (its own too). A node heard for the first time has *joined*; one silent
//! for `suspect_after` of its own intervals is *suspect*; for `dead_after`, *dead*. A shard
//! heard with a new start time after the old one fell silent has *restarted*; two start
//! times for one shard heard in turn, both alive, are a *conflict* (two nodes claim it).
//! Nothing depends on when nodes start: a node knows the cluster once it has heard one
//! heartbeat from each member, within an interval or two.

use crate::mdp::Frames;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// First frame of every heartbeat, which is also the subscription prefix.
pub const TOPIC: &[u8] = b"s0hb";
/// Heartbeat format version, the second frame.
pub const VERSION: &[u8] = b"1";
/// Longest name, role or address carried, in bytes.
pub const MAX_TEXT_BYTES: usize = 255;

/// One heartbeat: who is speaking and a little about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node's identity in the cluster.
    pub shard: u32,
    /// When this incarnation of the node started, in ms since the Unix epoch.
    pub started_ms: u64,
    /// Counts up by one per heartbeat of this incarnation.
    pub seq: u64,
    /// The interval the node beats at, in ms; others judge its silence by it.
    pub interval_ms: u64,
    /// A human name.
    pub name: String,
    /// What the node does.
    pub role: String,
    /// Where it can be reached, as the node says.
    pub address: String,
}

/// The longest heartbeat interval a member may announce: an hour.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// Why frames are not a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Not nine frames, or not our topic.
    #[error("not a heartbeat")]
    NotHeartbeat,
    /// A version this node does not speak.
    #[error("unknown heartbeat version")]
    Version,
    /// A number frame that is not ASCII decimal, or an interval of 0 or over
    /// [`MAX_INTERVAL_MS`].
    #[error("bad number")]
    BadNumber,
    /// A text frame that is not UTF-8 or is too long.
    #[error("bad text")]
    BadText,
}

fn number(b: &Bytes) -> Result<u64, HeartbeatError> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return Err(HeartbeatError::BadNumber);
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HeartbeatError::BadNumber)
}

fn text(b: &Bytes) -> Result<String, HeartbeatError> {
    if b.len() > MAX_TEXT_BYTES {
        return Err(HeartbeatError::BadText);
    }
    String::from_utf8(b.to_vec()).map_err(|_| HeartbeatError::BadText)
}

impl Heartbeat {
    /// The frames: topic, version, shard, started_ms, seq, interval_ms, name, role,
    /// address; numbers in ASCII decimal, texts in UTF-8.
    pub fn encode(&self) -> Frames {
        vec![
            Bytes::from_static(TOPIC),
            Bytes::from_static(VERSION),
            Bytes::from(self.shard.to_string()),
            Bytes::from(self.started_ms.to_string()),
            Bytes::from(self.seq.to_string()),
            Bytes::from(self.interval_ms.to_string()),
            Bytes::from(self.name.clone()),
            Bytes::from(self.role.clone()),
            Bytes::from(self.address.clone()),
        ]
    }

    /// Reads a heartbeat; never panics.
    pub fn decode(frames: &[Bytes]) -> Result<Self, HeartbeatError> {
        let [
            topic,
            version,
            shard,
            started,
            seq,
            interval,
            name,
            role,
            address,
        ] = frames
        else {
            return Err(HeartbeatError::NotHeartbeat);
        };
        if topic.as_ref() != TOPIC {
            return Err(HeartbeatError::NotHeartbeat);
        }
        if version.as_ref() != VERSION {
            return Err(HeartbeatError::Version);
        }
        let interval_ms = number(interval)?;
        if interval_ms == 0 || interval_ms > MAX_INTERVAL_MS {
            // A member that claims to beat once an age would never be suspected, and
            // would hold its place in the table for good.
            return Err(HeartbeatError::BadNumber);
        }
        Ok(Self {
            shard: u32::try_from(number(shard)?).map_err(|_| HeartbeatError::BadNumber)?,
            started_ms: number(started)?,
            seq: number(seq)?,
            interval_ms,
            name: text(name)?,
            role: text(role)?,
            address: text(address)?,
        })
    }
}

/// Settings of the membership table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Intervals of silence (the member's own interval) before it is suspect.
    pub suspect_after: u32,
    /// Intervals of silence before it is dead.
    pub dead_after: u32,
    /// Members tracked at most (alive or not); heartbeats of further shards are ignored.
    pub max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            suspect_after: 2,
            dead_after: 5,
            max_members: 100_000,
        }
    }
}

/// How a member is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Heard within `suspect_after` intervals.
    Alive,
    /// Silent for `suspect_after` intervals.
    Suspect,
    /// Silent for `dead_after` intervals.
    Dead,
}

impl State {
    /// A lowercase word.
    pub fn label(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
        }
    }
}

/// One row of the membership table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The latest heartbeat heard.
    pub last: Heartbeat,
    /// When it was heard.
    pub last_seen: Instant,
    /// Alive, suspect or dead.
    pub state: State,
    /// Heartbeats of this incarnation that never arrived (gaps in `seq`).
    pub lost: u64,
    /// A second incarnation of the same shard heard while this one is alive, not yet
    /// known to be a restart or a conflict.
    challenger: Option<(Heartbeat, Instant)>,
    /// Whether the conflict with the challenger has been reported.
    conflict_reported: bool,
}

impl Member {
    /// Whole intervals since it was last heard.
    pub fn missed(&self, now: Instant) -> u64 {
        let silent = now.saturating_since(self.last_seen).as_millis();
        u64::try_from(silent).unwrap_or(u64::MAX) / self.last.interval_ms.max(1)
    }

    fn deadline(&self, intervals: u32) -> Instant {
        self.last_seen
            + Duration::from_millis(self.last.interval_ms.saturating_mul(u64::from(intervals)))
    }
}

/// Something that changed in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A shard heard for the first time.
    Joined(Heartbeat),
    /// Silent for `suspect_after` intervals.
    Suspect {
        /// The shard.
        shard: u32,
        /// Intervals missed.
        missed: u64,
    },
    /// Heard again after being suspect or dead.
    Recovered(Heartbeat),
    /// Silent for `dead_after` intervals: left the cluster.
    Dead {
        /// The shard.
        shard: u32,
        /// Intervals missed.
        missed: u64,
    },
    /// The shard came back with a new start time after the old one fell silent.
    Restarted {
        /// The new incarnation's heartbeat.
        heartbeat: Heartbeat,
        /// The old incarnation's start time.
        previous_started_ms: u64,
    },
    /// Two start times for one shard, both heard alive in turn: two nodes claim it.
    Conflict {
        /// The shard.
        shard: u32,
        /// The start times of the two claimants.
        started_ms: [u64; 2],
    },
}

/// The membership table of one node.
#[derive(Debug)]
pub struct Membership {
    config: Config,
    members: BTreeMap<u32, Member>,
    events: VecDeque<Event>,
    /// Heartbeats that were not heartbeats, or were over a bound.
    pub ignored: u64,
    /// New members not admitted because the table was at `max_members`.
    pub refused: u64,
}

impl Membership {
    /// An empty table.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            members: BTreeMap::new(),
            events: VecDeque::new(),
            ignored: 0,
            refused: 0,
        }
    }

    /// The table, by shard.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn get(&self, shard: u32) -> Option<&Member> {
        self.members.get(&shard)
    }

    /// The next change, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Membership::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.members
            .values()
            .filter_map(|m| match m.state {
                State::Alive => Some(m.deadline(self.config.suspect_after)),
                State::Suspect => Some(m.deadline(self.config.dead_after)),
                State::Dead => None,
            })
            .min()
    }

    /// A message heard on the bus.
    pub fn handle_message(&mut self, now: Instant, frames: &[Bytes]) {
        match Heartbeat::decode(frames) {
            Ok(hb) => self.handle_heartbeat(now, hb),
            Err(_) => self.ignored += 1,
        }
    }

    /// A heartbeat heard on the bus.
    pub fn handle_heartbeat(&mut self, now: Instant, hb: Heartbeat) {
        let shard = hb.shard;
        let Some(m) = self.members.get_mut(&shard) else {
            if self.members.len() >= self.config.max_members {
                self.ignored += 1;
                self.refused += 1;
                // The 1st, 2nd, 4th... refusal: seen, but never a flood of lines.
                if self.refused.is_power_of_two() {
                    tracing::warn!(
                        shard,
                        max_members = self.config.max_members,
                        refused = self.refused,
                        "membership table full: a new member was not admitted"
                    );
                }
                return;
            }
            self.events.push_back(Event::Joined(hb.clone()));
            self.members.insert(
                shard,
                Member {
                    last: hb,
                    last_seen: now,
                    state: State::Alive,
                    lost: 0,
                    challenger: None,
                    conflict_reported: false,
                },
            );
            return;
        };
        if hb.started_ms == m.last.started_ms {
            // The same incarnation. Several forwarders deliver each beat more than once:
            // only a newer sequence number counts.
            if hb.seq <= m.last.seq {
                return;
            }
            m.lost += hb.seq - m.last.seq - 1;
            if let Some((ch, seen)) = &m.challenger {
                // The old claimant speaks again while the new one is alive: a conflict.
                let window = Duration::from_millis(
                    ch.interval_ms
                        .saturating_mul(u64::from(self.config.suspect_after)),
                );
                if now.saturating_since(*seen) < window && !m.conflict_reported {
                    m.conflict_reported = true;
                    self.events.push_back(Event::Conflict {
                        shard,
                        started_ms: [m.last.started_ms, ch.started_ms],
                    });
                }
            }
            let recovered = m.state != State::Alive;
            m.last = hb;
            m.last_seen = now;
            m.state = State::Alive;
            if recovered {
                self.events.push_back(Event::Recovered(m.last.clone()));
            }
            return;
        }
        // Another incarnation of the shard.
        if m.state != State::Alive {
            let previous_started_ms = m.last.started_ms;
            *m = Member {
                last: hb.clone(),
                last_seen: now,
                state: State::Alive,
                lost: 0,
                challenger: None,
                conflict_reported: false,
            };
            self.events.push_back(Event::Restarted {
                heartbeat: hb,
                previous_started_ms,
            });
            return;
        }
        // The old one was alive a moment ago: a quick restart, or a second claimant.
        // Which one shows when the old one speaks again (conflict) or falls silent
        // (restart). Meanwhile the newer claimant is remembered.
        if m.challenger
            .as_ref()
            .is_some_and(|(c, _)| c.started_ms == hb.started_ms)
        {
            if let Some((c, seen)) = &mut m.challenger
                && hb.seq > c.seq
            {
                *c = hb;
                *seen = now;
            }
        } else {
            m.challenger = Some((hb, now));
            m.conflict_reported = false;
        }
    }

    /// Time has reached [`Membership::poll_timeout`]: mark silent members.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (suspect_after, dead_after) = (self.config.suspect_after, self.config.dead_after);
        for (shard, m) in &mut self.members {
            let missed = m.missed(now);
            // A challenger that fell silent itself is forgotten: the conflict is over.
            if m.challenger.as_ref().is_some_and(|(ch, seen)| {
                now.saturating_since(*seen)
                    >= Duration::from_millis(
                        ch.interval_ms.saturating_mul(u64::from(suspect_after)),
                    )
            }) {
                m.challenger = None;
                m.conflict_reported = false;
            }
            match m.state {
                State::Alive if now >= m.deadline(suspect_after) => {
                    if let Some((ch, seen)) = m.challenger.take() {
                        // The old incarnation fell silent while the new one spoke: it
                        // restarted.
                        let previous_started_ms = m.last.started_ms;
                        m.last = ch.clone();
                        m.last_seen = seen;
                        m.lost = 0;
                        m.conflict_reported = false;
                        self.events.push_back(Event::Restarted {
                            heartbeat: ch,
                            previous_started_ms,
                        });
                        continue;
                    }
                    m.state = State::Suspect;
                    self.events.push_back(Event::Suspect {
                        shard: *shard,
                        missed,
                    });
                }
                State::Suspect if now >= m.deadline(dead_after) => {
                    m.state = State::Dead;
                    self.events.push_back(Event::Dead {
                        shard: *shard,
                        missed,
                    });
                }
                _ => {}
            }
        }
    }
}
