//! [`ShardRing`]: which live instance of a scaled role owns a key (a user for the pusher, a
//! destination server for the federation sender), with no configured shard list.
//!
//! Membership lives in Redis: each instance heartbeats into a sorted set `{prefix}:members:{group}`
//! scored by its expiry (Redis's own clock, so the instances' clocks need not agree); members whose
//! expiry passed are dropped. Ownership is rendezvous hashing over the live members, so a member
//! joining or leaving moves only the keys it gains or held. Scaling the role is starting or
//! stopping instances; nothing is configured.
//!
//! Ownership says who *should* work on a key; a [`Lease`] says who *does*. During a hand-over the
//! old and the new owner can both think they own a key for a heartbeat, so work on a key happens
//! only under its lease (`SET NX PX`, renewed while held, released when dropped). The worker reads
//! its durable position after taking the lease, so a key changing hands is worked exactly once from
//! where the previous holder stopped; a holder that dies loses its lease when it expires.
//!
//! [`ShardRing::alone`] is the single-instance ring of `ganglion serve` without Redis: it owns every
//! key and every lease is granted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{RedisBus, ReplicationError};

/// Tuning for a [`ShardRing`] over Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardTiming {
    /// How often an instance renews its membership. A member that misses three beats is dropped.
    pub heartbeat: Duration,
    /// How long a lease lasts without renewal; it is renewed every third of that while held.
    pub lease: Duration,
}

impl Default for ShardTiming {
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(1), lease: Duration::from_secs(6) }
    }
}

/// Refreshes this member's expiry, drops expired members, returns the live ones.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";
/// Extends a lease if this instance still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";
/// Drops a lease if this instance still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

#[derive(Clone)]
struct Redis {
    conn: ConnectionManager,
    members_key: String,
    lease_prefix: String,
    timing: ShardTiming,
}

/// The live instances of one scaled role, and which of them owns a key. Cheap to clone.
#[derive(Clone)]
pub struct ShardRing {
    me: Arc<str>,
    members: watch::Receiver<Arc<Vec<String>>>,
    redis: Option<Redis>,
    _heartbeat: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for ShardRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRing").field("me", &self.me).field("members", &*self.members.borrow()).finish()
    }
}

struct AbortOnDrop(JoinHandle<()>, Option<(Redis, Arc<str>)>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
        // Leave the ring at once rather than when the heartbeat expires.
        if let Some((redis, me)) = self.1.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let mut conn = redis.conn.clone();
                let _: Result<i64, _> =
                    redis::cmd("ZREM").arg(&redis.members_key).arg(&*me).query_async(&mut conn).await;
            });
        }
    }
}

/// A stable 64-bit hash of `(member, key)` (FNV-1a, then a finaliser for spread): every instance
/// of every build computes the same owner.
fn score(member: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain(std::iter::once(0)).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The member that owns `key` among `members` (highest rendezvous score; ties by name).
#[must_use]
pub fn rendezvous_owner<'a>(members: &'a [String], key: &str) -> Option<&'a str> {
    members.iter().max_by(|a, b| score(a, key).cmp(&score(b, key)).then_with(|| b.cmp(a))).map(String::as_str)
}

impl ShardRing {
    /// A ring of one: this instance owns every key.
    #[must_use]
    pub fn alone(me: &str) -> Self {
        let (_, members) = watch::channel(Arc::new(vec![me.to_owned()]));
        Self { me: me.into(), members, redis: None, _heartbeat: None }
    }

    /// Joins the ring of `group` (e.g. `pusher`) in the bus's Redis as `me`, which must be unique
    /// among the group's instances, and keeps heartbeating until the ring is dropped.
    ///
    /// # Errors
    /// When Redis cannot be reached for the first heartbeat.
    pub async fn join(bus: &RedisBus, group: &str, me: &str, timing: ShardTiming) -> Result<Self, ReplicationError> {
        let redis = Redis {
            conn: bus.connection(),
            members_key: format!("{}:members:{group}", bus.key_prefix()),
            lease_prefix: format!("{}:lease:{group}:", bus.key_prefix()),
            timing,
        };
        let ttl_ms = (timing.heartbeat * 3).as_millis() as u64;
        let first = heartbeat(&redis, me, ttl_ms).await?;
        tracing::info!(group, me, members = ?first, "joined the shard ring");
        let (tx, members) = watch::channel(Arc::new(first));
        let me: Arc<str> = me.into();
        let task = {
            let (redis, me) = (redis.clone(), me.clone());
            tokio::spawn(async move {
                let mut last_ok = tokio::time::Instant::now();
                let mut tick = tokio::time::interval(timing.heartbeat);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match heartbeat(&redis, &me, ttl_ms).await {
                        Ok(live) => {
                            last_ok = tokio::time::Instant::now();
                            if **tx.borrow() != live {
                                tracing::info!(members = ?live, "shard ring changed");
                                tx.send_replace(Arc::new(live));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "shard ring heartbeat failed");
                            // Past our own expiry the others have taken our keys: own nothing.
                            if last_ok.elapsed() >= Duration::from_millis(ttl_ms) && !tx.borrow().is_empty() {
                                tx.send_replace(Arc::new(Vec::new()));
                            }
                        }
                    }
                }
            })
        };
        let guard = AbortOnDrop(task, Some((redis.clone(), me.clone())));
        Ok(Self { me, members, redis: Some(redis), _heartbeat: Some(Arc::new(guard)) })
    }

    /// This instance's name in the ring.
    #[must_use]
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live members, as last seen; changes whenever the membership does.
    #[must_use]
    pub fn members(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.members.clone()
    }

    /// Whether this instance owns `key` now.
    #[must_use]
    pub fn owns(&self, key: &str) -> bool {
        rendezvous_owner(&self.members.borrow(), key) == Some(&*self.me)
    }

    /// Takes the lease on `key` if no other instance holds it. `None` when another does.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn try_lease(&self, key: &str) -> Result<Option<Lease>, ReplicationError> {
        let Some(redis) = &self.redis else {
            return Ok(Some(Lease { held: Arc::new(AtomicBool::new(true)), renewal: None }));
        };
        let lease_key = format!("{}{key}", redis.lease_prefix);
        let ttl = redis.timing.lease.as_millis() as u64;
        let mut conn = redis.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&lease_key)
            .arg(&*self.me)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let held = Arc::new(AtomicBool::new(true));
        let task = {
            let (redis, me, held, lease_key) = (redis.clone(), self.me.clone(), held.clone(), lease_key.clone());
            tokio::spawn(async move {
                let mut conn = redis.conn.clone();
                loop {
                    tokio::time::sleep(redis.timing.lease / 3).await;
                    let renewed: Result<i64, _> = redis::cmd("EVAL")
                        .arg(RENEW)
                        .arg(1)
                        .arg(&lease_key)
                        .arg(&*me)
                        .arg(ttl)
                        .query_async(&mut conn)
                        .await;
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            held.store(false, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, key = lease_key, "renewing a lease failed"),
                    }
                }
            })
        };
        let release = Arc::new(Mutex::new(Some((redis.clone(), self.me.clone(), lease_key))));
        Ok(Some(Lease { held, renewal: Some((task, release)) }))
    }
}

async fn heartbeat(redis: &Redis, me: &str, ttl_ms: u64) -> Result<Vec<String>, ReplicationError> {
    let mut conn = redis.conn.clone();
    let live: Vec<String> = redis::cmd("EVAL")
        .arg(HEARTBEAT)
        .arg(1)
        .arg(&redis.members_key)
        .arg(me)
        .arg(ttl_ms)
        .query_async(&mut conn)
        .await?;
    Ok(live)
}

type Release = Arc<Mutex<Option<(Redis, Arc<str>, String)>>>;

/// Exclusive right to work on one key, kept alive in the background; released when dropped.
pub struct Lease {
    held: Arc<AtomicBool>,
    renewal: Option<(JoinHandle<()>, Release)>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("held", &self.held()).finish()
    }
}

impl Lease {
    /// Whether the lease is still ours (a renewal can find it taken after a long stall).
    #[must_use]
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

impl Lease {
    /// Gives the lease up now, so another instance (or this one) can take it at once. Dropping a
    /// lease releases it too, but in the background.
    pub async fn release(mut self) {
        let Some((task, release)) = self.renewal.take() else { return };
        task.abort();
        let taken = release.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((redis, me, key)) = taken {
            let mut conn = redis.conn.clone();
            let released: Result<i64, _> =
                redis::cmd("EVAL").arg(RELEASE).arg(1).arg(&key).arg(&*me).query_async(&mut conn).await;
            if let Err(e) = released {
                tracing::warn!(error = %e, key, "releasing a lease failed; it expires on its own");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some((task, release)) = self.renewal.take() else { return };
        task.abort();
        let taken = release.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((redis, me, key)) = taken
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let mut conn = redis.conn.clone();
                let _: Result<i64, _> =
                    redis::cmd("EVAL").arg(RELEASE).arg(1).arg(&key).arg(&*me).query_async(&mut conn).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_keys_of_the_member_that_changed() {
        let two: Vec<String> = vec!["a".into(), "b".into()];
        let three: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let keys: Vec<String> = (0..1000).map(|i| format!("@user{i}:example.org")).collect();
        let mut to_c = 0;
        for k in &keys {
            let before = rendezvous_owner(&two, k).unwrap();
            let after = rendezvous_owner(&three, k).unwrap();
            if after == "c" {
                to_c += 1;
            } else {
                assert_eq!(before, after, "a key moved between the members that stayed");
            }
        }
        // About a third moves to the newcomer.
        assert!((250..420).contains(&to_c), "{to_c} of 1000 keys moved to the new member");
        let owners: std::collections::HashSet<&str> = keys.iter().filter_map(|k| rendezvous_owner(&two, k)).collect();
        assert_eq!(owners.len(), 2, "both members own keys");
        assert_eq!(rendezvous_owner(&[], "k"), None);
    }

    #[tokio::test]
    async fn alone_owns_everything() {
        let ring = ShardRing::alone("solo");
        assert!(ring.owns("@a:x") && ring.owns("anything"));
        assert!(ring.try_lease("k").await.unwrap().unwrap().held());
    }
}
