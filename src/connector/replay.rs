//! What every replaying platform needs to deliver each message exactly once across
//! reconnects: a bounded window of recently seen ids, a per-room watermark, and the reconnect
//! loop with its backoff.
//!
//! Owns: [`IdWindow`], [`Watermark`], [`Backoff`] — plain data, persisted by the platforms in
//! their own formats (their state files must keep loading) — and [`reconnect`], which runs a
//! platform's [`Sessions`] one connection after another.
//! Knows nothing about: any platform's wire types, the state store, time sources.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use super::{ConnectorContext, ConnectorEvent, RunError};

/// Recently seen message ids of one room, oldest first, at most `capacity` of them.
#[derive(Clone, Debug)]
pub struct IdWindow<Id> {
    ids: HashSet<Id>,
    order: VecDeque<(Id, u64)>,
    capacity: usize,
    /// Newest timestamp evicted: a message older than this may have been seen and forgotten.
    pub floor: u64,
}

impl<Id: Clone + Eq + Hash> IdWindow<Id> {
    pub fn new(capacity: usize) -> Self {
        IdWindow {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity,
            floor: 0,
        }
    }

    pub fn contains<Q: Eq + Hash + ?Sized>(&self, id: &Q) -> bool
    where
        Id: std::borrow::Borrow<Q>,
    {
        self.ids.contains(id)
    }

    /// Remembers `id` (seen at `ts`); the oldest id goes when the window is full.
    pub fn insert(&mut self, id: Id, ts: u64) {
        if self.ids.insert(id.clone()) {
            self.order.push_back((id, ts));
        }
        while self.order.len() > self.capacity {
            if let Some((old, old_ts)) = self.order.pop_front() {
                self.ids.remove(&old);
                self.floor = self.floor.max(old_ts);
            }
        }
    }

    /// The remembered ids, oldest first (what a platform persists).
    pub fn ids(&self) -> impl Iterator<Item = &Id> {
        self.order.iter().map(|(id, _)| id)
    }
}

/// "Every message before `ts`, and those listed at `ts`, is settled."
#[derive(Clone, Debug, PartialEq)]
pub struct Watermark<Id> {
    pub ts: u64,
    pub ids: Vec<Id>,
}

impl<Id> Default for Watermark<Id> {
    fn default() -> Self {
        Watermark {
            ts: 0,
            ids: Vec::new(),
        }
    }
}

impl<Id: Clone + PartialEq> Watermark<Id> {
    /// Moves past a settled message; an older one changes nothing.
    pub fn advance(&mut self, ts: u64, id: &Id) {
        if ts > self.ts {
            self.ts = ts;
            self.ids = vec![id.clone()];
        } else if ts == self.ts && !self.ids.contains(id) {
            self.ids.push(id.clone());
        }
    }
}

/// Exponential reconnect backoff: `initial`, doubling to `max`; optionally each wait ±25 %
/// so that many gateways restarted together do not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// With jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial,
            initial,
            max,
            jitter: true,
        }
    }

    /// Exact waits (platforms whose documented retry timing users rely on).
    pub fn exact(initial: Duration, max: Duration) -> Self {
        Backoff {
            jitter: false,
            ..Backoff::new(initial, max)
        }
    }

    /// Starts over after a healthy connection.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The next wait before jitter (for logs).
    pub fn upcoming(&self) -> Duration {
        self.next
    }

    /// The wait before the next attempt; later waits grow.
    pub fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        if !self.jitter {
            return base;
        }
        use rand::Rng;
        let factor = rand::thread_rng().gen_range(0.75..=1.25);
        base.mul_f64(factor).min(self.max)
    }
}

/// How one connection of a platform ended.
pub enum SessionEnd {
    Cancelled,
    /// The connection went away; `was_up` says whether it got as far as live delivery
    /// (which resets the backoff).
    Lost {
        was_up: bool,
        reason: String,
    },
    Fatal(RunError),
}

/// A platform's delivery state that outlives one connection.
pub trait Sessions {
    /// Connects, delivers until the connection ends, and says how it ended.
    fn session(&mut self) -> impl Future<Output = SessionEnd> + Send;
}

/// Runs `sessions` one connection after another until `ctx.cancel` or a fault retrying
/// cannot fix: each loss is logged and reported (`ConnectorEvent::Connection`) and retried
/// after the backoff's wait, which starts over after a connection that was up.
pub async fn reconnect(
    platform: &str,
    ctx: &ConnectorContext,
    mut backoff: Backoff,
    sessions: &mut impl Sessions,
) -> Result<(), RunError> {
    let name = ctx.events.connector().clone();
    loop {
        match sessions.session().await {
            SessionEnd::Cancelled => return Ok(()),
            SessionEnd::Fatal(e) => {
                ctx.events
                    .send(ConnectorEvent::Connection {
                        connected: false,
                        detail: format!("{e:#}"),
                    })
                    .await;
                return Err(e);
            }
            SessionEnd::Lost { was_up, reason } => {
                if was_up {
                    backoff.reset();
                }
                let wait = backoff.step();
                tracing::warn!(connector = %name, reason, ?wait, "{platform} connection lost; reconnecting");
                ctx.events
                    .send(ConnectorEvent::Connection {
                        connected: false,
                        detail: format!("{reason}; retrying in {:.1} s", wait.as_secs_f64()),
                    })
                    .await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.cancel.cancelled() => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_oldest_and_raises_floor() {
        let mut w = IdWindow::new(10);
        for i in 0..15u64 {
            w.insert(format!("m{i}"), i);
        }
        assert!(!w.contains("m0"));
        assert!(w.contains("m14"));
        assert_eq!(w.floor, 4);
        assert_eq!(w.ids().next(), Some(&"m5".to_string()));
    }

    #[test]
    fn watermark_keeps_ids_at_its_timestamp() {
        let mut wm = Watermark::default();
        wm.advance(10, &"a");
        wm.advance(10, &"b");
        wm.advance(9, &"old");
        assert_eq!(
            wm,
            Watermark {
                ts: 10,
                ids: vec!["a", "b"]
            }
        );
        wm.advance(11, &"c");
        assert_eq!(wm.ids, ["c"]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let steps: Vec<Duration> = (0..10).map(|_| b.step()).collect();
        assert!(steps[0] >= Duration::from_millis(750) && steps[0] <= Duration::from_millis(1250));
        assert!(steps[3] >= Duration::from_secs(6) && steps[3] <= Duration::from_secs(10));
        assert!(steps.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(steps[9] >= Duration::from_secs(45));
        b.reset();
        assert!(b.step() <= Duration::from_millis(1250));
    }

    #[test]
    fn exact_backoff_has_no_jitter() {
        let mut b = Backoff::exact(Duration::from_millis(500), Duration::from_secs(60));
        let steps: Vec<u128> = (0..9).map(|_| b.step().as_millis()).collect();
        assert_eq!(
            steps,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
    }
}
