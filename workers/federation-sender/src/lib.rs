//! The `federation-sender` role: sends this server's events to the other servers in its rooms.
//!
//! It follows the `events` stream. When local users write into a room, every other server with
//! a joined member there becomes (or stays) a destination, tracked in the database
//! (`federation_destinations`: the stream position up to which it has accepted everything owed
//! to it). One worker per destination reads what is owed from the database, up to 50 PDUs at a
//! time in stream order, and sends them as one transaction (`PUT /_matrix/federation/v1/send`);
//! its position moves on only when the destination accepts, so a crash or a restart resends and
//! never skips. A destination that fails is retried with a back-off that doubles up to
//! [`MAX_RETRY`], persisted so every instance honours it.
//!
//! Instances share destinations through the [`ShardRing`]: each destination is worked by the
//! instance that owns it, under a lease, so instances can be added or removed without
//! configuration and a destination never has two senders.
//!
//! EDUs (typing, receipts, presence, device lists, to-device) are not sent yet.
//!
//! Depends on the shared crates; never on another worker crate.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use ganglion_config::Config;
use ganglion_federation::FederationClient;
use ganglion_replication::{Bus, Follower, ShardRing, StreamPosition};
use ganglion_storage::{Db, EventStore, FederationStore, KeyStore, follow_events};
use ruma::api::federation::transactions::send_transaction_message;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName};
use tokio::sync::{Notify, watch};

/// PDUs per transaction (the spec's limit).
const PDUS_PER_TRANSACTION: usize = 50;
/// The first back-off after a failure.
const MIN_RETRY: Duration = Duration::from_secs(2);
/// The longest back-off.
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// How often the sender looks for destinations it should work and is not working (a ring change,
/// or a destination left behind by a stopped instance).
const RESCAN: Duration = Duration::from_secs(10);

/// Why the role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration, or no signing key yet.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] ganglion_storage::Error),
}

/// A running `federation-sender` role.
#[derive(Debug)]
pub struct FederationSender {
    _follower: Follower,
    position: watch::Receiver<StreamPosition>,
    _task: tokio::task::JoinHandle<()>,
}

/// What the sender's tasks share.
struct Shared {
    origin: OwnedServerName,
    client: FederationClient,
    store: FederationStore,
    ring: ShardRing,
    /// One wake-up per destination being worked here.
    working: Mutex<HashMap<String, Arc<Notify>>>,
}

impl FederationSender {
    /// Loads the server key and starts following the `events` stream from the database's
    /// current position, and working the destinations this instance owns.
    ///
    /// # Errors
    /// When the server name or federation settings are invalid, no signing key exists yet, or
    /// the database cannot be read.
    pub async fn start(cfg: &Config, db: Db, bus: Arc<dyn Bus>, ring: ShardRing) -> Result<Self, StartError> {
        let origin = OwnedServerName::try_from(cfg.server_name.as_str())
            .map_err(|e| StartError::Config(format!("server_name: {e}")))?;
        let key = Arc::new(
            ganglion_federation::load_signing_key(&KeyStore::new(db.clone())).await.map_err(StartError::Config)?,
        );
        let client = FederationClient::new(&cfg.federation, origin.clone(), key)
            .map_err(|e| StartError::Config(format!("federation: {e}")))?;
        let events = EventStore::new(db.clone());
        let (follower, position) = follow_events(&events, bus).await?;
        let shared = Arc::new(Shared {
            origin,
            client,
            store: FederationStore::new(db),
            ring,
            working: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(run(shared, position.clone()));
        Ok(Self { _follower: follower, position, _task: task })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The role's HTTP routes: none (it only sends).
    pub fn router(&self) -> Router {
        Router::new()
    }
}

fn now_ms() -> i64 {
    i64::try_from(u64::from(MilliSecondsSinceUnixEpoch::now().get())).unwrap_or(i64::MAX)
}

/// Follows the stream: each advance names the rooms local users wrote into; their servers are
/// owed the new events.
async fn run(shared: Arc<Shared>, mut position: watch::Receiver<StreamPosition>) {
    let mut seen = i64::try_from(position.borrow().0).unwrap_or(i64::MAX);
    rescan(&shared).await;
    let mut rescan_tick = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            changed = position.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = rescan_tick.tick() => {
                rescan(&shared).await;
                continue;
            }
        }
        let upto = i64::try_from(position.borrow_and_update().0).unwrap_or(i64::MAX);
        if upto <= seen {
            continue;
        }
        match shared.store.rooms_written(seen, upto, shared.origin.as_str()).await {
            Ok(rooms) => {
                let mut destinations = HashSet::new();
                for room in rooms {
                    match shared.store.joined_servers(&room).await {
                        Ok(servers) => destinations.extend(servers),
                        Err(e) => tracing::warn!(%room, error = %e, "reading a room's servers failed"),
                    }
                }
                destinations.remove(shared.origin.as_str());
                for d in destinations {
                    // A new destination is owed what came after `seen`, not the room's history.
                    if let Err(e) = shared.store.track_destination(&d, seen).await {
                        tracing::warn!(destination = %d, error = %e, "tracking a destination failed");
                        continue;
                    }
                    wake(&shared, &d);
                }
                seen = upto;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the rooms written to failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Starts workers for tracked destinations this instance owns and is not working.
async fn rescan(shared: &Arc<Shared>) {
    match shared.store.destinations().await {
        Ok(all) => {
            for d in all {
                wake(shared, &d.destination);
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing destinations failed"),
    }
}

/// Wakes the destination's worker, starting one when this instance owns it and has none.
fn wake(shared: &Arc<Shared>, destination: &str) {
    if !shared.ring.owns(destination) {
        return;
    }
    let mut working = shared.working.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = working.get(destination) {
        n.notify_one();
        return;
    }
    let Ok(server) = OwnedServerName::try_from(destination) else {
        tracing::warn!(destination, "not a server name; not sending to it");
        return;
    };
    let notify = Arc::new(Notify::new());
    notify.notify_one();
    working.insert(destination.to_owned(), notify.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let key = format!("federation:{server}");
        match shared.ring.try_lease(&key).await {
            Ok(Some(lease)) => {
                work(&shared, &server, &notify, &lease).await;
                lease.release().await;
            }
            Ok(None) => tracing::debug!(destination = %server, "another instance holds the destination"),
            Err(e) => tracing::warn!(destination = %server, error = %e, "could not take the destination's lease"),
        }
        shared.working.lock().unwrap_or_else(|e| e.into_inner()).remove(server.as_str());
    });
}

/// Sends the destination what it is owed while this instance owns it.
async fn work(shared: &Shared, destination: &ServerName, notify: &Notify, lease: &ganglion_replication::Lease) {
    while lease.held() && shared.ring.owns(destination.as_str()) {
        let state = match shared.store.destination(destination.as_str()).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%destination, error = %e, "reading the destination failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let wait = state.retry_at_ms - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            continue;
        }
        let owed = match shared
            .store
            .events_owed(destination.as_str(), shared.origin.as_str(), state.last_position, PDUS_PER_TRANSACTION)
            .await
        {
            Ok(owed) => owed,
            Err(e) => {
                tracing::warn!(%destination, error = %e, "reading the events owed failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = owed.last().map(|e| e.stream_ordering) else {
            // Nothing owed: wait for the stream, or stop when idle long enough.
            if tokio::time::timeout(Duration::from_secs(300), notify.notified()).await.is_err() {
                return;
            }
            continue;
        };
        // The same batch gets the same ID when retried, so the destination can tell.
        let txn_id = OwnedTransactionId::from(format!("{}-{last}", state.last_position));
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.clone(),
            shared.origin.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = owed.iter().filter_map(|e| ganglion_federation::outgoing_pdu(&e.json)).collect();
        match shared.client.send(destination, request).await {
            Ok(resp) => {
                for (id, result) in &resp.pdus {
                    if let Err(why) = result {
                        tracing::info!(%destination, event_id = %id, reason = %why, "the destination refused an event");
                    }
                }
                tracing::debug!(%destination, %txn_id, pdus = owed.len(), "transaction accepted");
                if let Err(e) = shared.store.destination_caught_up(destination.as_str(), last).await {
                    tracing::warn!(%destination, error = %e, "recording the destination's position failed");
                }
            }
            Err(e) => {
                let interval = Duration::from_millis(state.retry_interval_ms.max(0) as u64)
                    .saturating_mul(2)
                    .clamp(MIN_RETRY, MAX_RETRY);
                tracing::warn!(%destination, %txn_id, error = %e, retry_in = ?interval, "transaction failed");
                let ms = interval.as_millis() as i64;
                if let Err(e) = shared.store.destination_failed(destination.as_str(), now_ms() + ms, ms).await {
                    tracing::warn!(%destination, error = %e, "recording the failure failed");
                }
            }
        }
    }
}
