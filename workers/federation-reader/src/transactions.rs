//! `PUT /_matrix/federation/v1/send/{txnId}`: another server's transaction of PDUs (and EDUs).
//!
//! Each PDU is checked here (format, signatures, content hash) and handed to `main`, one room's
//! PDUs in order and rooms side by side. When `main` says a PDU cites events not stored here, the
//! reader fetches them from the sending server (`/get_missing_events` for the gap before it,
//! `/event_auth` for its auth chain, stored as outliers), hands those in first and tries again.
//! A transaction retried with the same ID is answered from memory without being processed twice;
//! one origin's transactions are processed one at a time, in the order they arrive.
//!
//! A room's server ACL is checked against the sending server before any of its PDUs are looked
//! at; denied, they are answered with an error and nothing is stored.
//!
//! EDUs are accepted and not acted on yet (typing, receipts, presence, device lists and to-device
//! messages over federation are their own piece of work).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::State;
use ganglion_federation::{CheckedPdu, check_pdu, event_id_of};
use ganglion_http::{MatrixError, RumaResponse};
use ganglion_rpc::v1::{PduOutcome, PduResult, ReceivePdusRequest, ReceivedPdu};
use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::event::get_missing_events;
use ruma::api::federation::transactions::send_transaction_message;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId, ServerName};
use tokio::sync::Mutex;

use crate::{ReaderState, Signed};

/// The spec's limits per transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Transactions remembered for retries, over all origins.
const REMEMBERED_TXNS: usize = 1_000;
/// Events asked for per `/get_missing_events`.
const MISSING_EVENTS_LIMIT: u32 = 10;

type Results = BTreeMap<OwnedEventId, Result<(), String>>;
/// A transaction: its origin and ID.
type TxnKey = (OwnedServerName, String);

/// The answers of recent transactions, and one lock per origin.
#[derive(Debug, Default)]
pub(crate) struct Transactions {
    /// Answers by transaction, and the order they came in (the oldest are forgotten first).
    answered: std::sync::Mutex<(HashMap<TxnKey, Results>, VecDeque<TxnKey>)>,
    origins: std::sync::Mutex<HashMap<OwnedServerName, Arc<Mutex<()>>>>,
}

impl Transactions {
    fn answered(&self, key: &TxnKey) -> Option<Results> {
        self.answered.lock().unwrap_or_else(|e| e.into_inner()).0.get(key).cloned()
    }

    fn remember(&self, key: TxnKey, results: Results) {
        let mut guard = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), results).is_none() {
            order.push_back(key);
        }
        while order.len() > REMEMBERED_TXNS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn origin_lock(&self, origin: &ServerName) -> Arc<Mutex<()>> {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: locks nobody holds are dropped when the map grows.
        if origins.len() > 10_000 {
            origins.retain(|_, l| Arc::strong_count(l) > 1);
        }
        origins.entry(origin.to_owned()).or_default().clone()
    }
}

/// `PUT /_matrix/federation/v1/send/{txnId}`.
pub(crate) async fn send_transaction(
    State(s): State<ReaderState>,
    signed: Signed<send_transaction_message::v1::Request>,
) -> Result<RumaResponse<send_transaction_message::v1::Response>, MatrixError> {
    let origin = signed.origin;
    let req = signed.request;
    if req.origin != origin {
        return Err(MatrixError::forbidden("The transaction's origin is not the server that signed it"));
    }
    if req.pdus.len() > MAX_PDUS || req.edus.len() > MAX_EDUS {
        return Err(MatrixError::bad_json(format!("At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction")));
    }
    let key = (origin.clone(), req.transaction_id.to_string());
    let lock = s.transactions.origin_lock(&origin);
    let _turn = lock.lock().await;
    if let Some(results) = s.transactions.answered(&key) {
        return Ok(RumaResponse(send_transaction_message::v1::Response::new(results)));
    }
    if !req.edus.is_empty() {
        tracing::debug!(%origin, edus = req.edus.len(), "EDUs received and not acted on");
    }

    // Check each PDU; group the good ones by room, in order.
    let mut results = Results::new();
    let mut rooms: Vec<(OwnedRoomId, RoomVersionId, Vec<CheckedPdu>)> = Vec::new();
    for raw in &req.pdus {
        let Some(room_id) = room_of(raw.get()) else {
            tracing::debug!(%origin, "dropped a PDU without a room");
            continue;
        };
        let version = match crate::rooms::room_version(&s, &room_id).await {
            Ok(v) => v,
            Err(_) => {
                tracing::debug!(%origin, %room_id, "dropped a PDU for a room not known here");
                continue;
            }
        };
        match check_pdu(&s.fetcher, &version, raw.get()).await {
            Ok(pdu) => match rooms.iter_mut().find(|(r, _, _)| *r == room_id) {
                Some((_, _, list)) => list.push(pdu),
                None => rooms.push((room_id, version, vec![pdu])),
            },
            Err(e) => {
                tracing::info!(%origin, error = %e, "dropped a PDU that failed its checks");
                if let Some(id) = id_of(raw.get(), &version) {
                    results.insert(id, Err(e.to_string()));
                }
            }
        }
    }
    let per_room = rooms.into_iter().map(|(room_id, version, pdus)| {
        let s = s.clone();
        let origin = origin.clone();
        async move {
            if let Err(denied) = crate::rooms::require_acl_allows(&s, &room_id, &origin).await {
                tracing::info!(%origin, %room_id, "PDUs refused: the room's server ACL denies their server");
                return pdus.into_iter().map(|p| (p.event_id, Err(denied.message.clone()))).collect();
            }
            process_room(&s, &origin, &room_id, &version, pdus).await
        }
    });
    for room_results in futures::future::join_all(per_room).await {
        results.extend(room_results);
    }
    s.transactions.remember(key, results.clone());
    Ok(RumaResponse(send_transaction_message::v1::Response::new(results)))
}

fn room_of(raw: &str) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOnly {
        room_id: Option<OwnedRoomId>,
    }
    serde_json::from_str::<RoomOnly>(raw).ok()?.room_id
}

fn id_of(raw: &str, version: &RoomVersionId) -> Option<OwnedEventId> {
    let object: CanonicalJsonObject = serde_json::from_str(raw).ok()?;
    event_id_of(&object, &version.rules()?).ok()
}

/// One room's PDUs, in order.
async fn process_room(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    version: &RoomVersionId,
    pdus: Vec<CheckedPdu>,
) -> Results {
    let mut out = Results::new();
    for pdu in pdus {
        let id = pdu.event_id.clone();
        let result = match receive(s, origin, &pdu, false).await {
            Ok(r) if r.outcome() == PduOutcome::Missing => {
                fill_gap(s, origin, room_id, version, &pdu, &r.missing).await;
                match receive(s, origin, &pdu, false).await {
                    Ok(r) => outcome(r),
                    Err(e) => Err(e),
                }
            }
            Ok(r) => outcome(r),
            Err(e) => Err(e),
        };
        if let Err(why) = &result {
            tracing::info!(%origin, %room_id, event_id = %id, reason = %why, "a received PDU was not accepted");
        }
        out.insert(id, result);
    }
    out
}

fn outcome(r: PduResult) -> Result<(), String> {
    match r.outcome() {
        // Soft-failed events are stored as the spec says; the sender has nothing to fix.
        PduOutcome::Accepted | PduOutcome::SoftFailed => Ok(()),
        PduOutcome::Rejected => Err(format!("rejected: {}", r.reason)),
        PduOutcome::Missing => Err(format!("could not fetch the events it cites: {}", r.missing.join(", "))),
        PduOutcome::Failed => Err(r.reason),
    }
}

/// Hands one PDU to `main`.
async fn receive(s: &ReaderState, origin: &ServerName, pdu: &CheckedPdu, outlier: bool) -> Result<PduResult, String> {
    receive_all(s, origin, std::slice::from_ref(pdu), outlier)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| "main gave no result".to_owned())
}

async fn receive_all(
    s: &ReaderState,
    origin: &ServerName,
    pdus: &[CheckedPdu],
    outlier: bool,
) -> Result<Vec<PduResult>, String> {
    let request = ReceivePdusRequest {
        origin: origin.to_string(),
        pdus: pdus
            .iter()
            .map(|p| ReceivedPdu { event_id: p.event_id.to_string(), json: p.json(), outlier, ..Default::default() })
            .collect(),
    };
    s.main.receive_pdus(request, "").await.map(|r| r.results).map_err(|e| {
        tracing::warn!(error = %e, "main did not take received PDUs");
        "temporarily unable to process the event".to_owned()
    })
}

/// Fetches what `pdu` cites and is not here, from the server that sent it: the events between our
/// forward extremities and it, and its auth chain (as outliers).
async fn fill_gap(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    version: &RoomVersionId,
    pdu: &CheckedPdu,
    missing: &[String],
) {
    let cites_auth = {
        let auth: Vec<String> = match pdu.object.get("auth_events") {
            Some(ruma::CanonicalJsonValue::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    ruma::CanonicalJsonValue::String(s) => Some(s.clone()),
                    ruma::CanonicalJsonValue::Array(pair) => match pair.first() {
                        Some(ruma::CanonicalJsonValue::String(s)) => Some(s.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        missing.iter().any(|m| auth.contains(m))
    };
    if cites_auth {
        fetch_auth_chain(s, origin, room_id, version, &pdu.event_id).await;
    }
    let earliest: Vec<OwnedEventId> = match s.events.forward_extremities(room_id).await {
        Ok(ext) => ext.into_iter().map(|(id, _)| id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading forward extremities failed");
            return;
        }
    };
    let mut request = get_missing_events::v1::Request::new(room_id.clone(), earliest, vec![pdu.event_id.clone()]);
    request.limit = MISSING_EVENTS_LIMIT.into();
    let events = match s.client.send(origin, request).await {
        Ok(r) => r.events,
        Err(e) => {
            tracing::info!(%origin, %room_id, error = %e, "get_missing_events failed");
            return;
        }
    };
    let checked = check_all(s, origin, room_id, version, &events).await;
    for p in &checked {
        // Each one may itself cite an auth event not here.
        if let Ok(r) = receive(s, origin, p, false).await
            && r.outcome() == PduOutcome::Missing
        {
            fetch_auth_chain(s, origin, room_id, version, &p.event_id).await;
            let _ = receive(s, origin, p, false).await;
        }
    }
}

/// The events of `raw` from `origin` that pass the checks and belong to the room, by depth
/// (so auth events come before the events they authorise).
async fn check_all(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    version: &RoomVersionId,
    raw: &[Box<serde_json::value::RawValue>],
) -> Vec<CheckedPdu> {
    let mut checked = Vec::with_capacity(raw.len());
    for r in raw {
        match check_pdu(&s.fetcher, version, r.get()).await {
            Ok(p) if p.room_id == *room_id => checked.push(p),
            Ok(p) => tracing::info!(%origin, event_id = %p.event_id, "a fetched event is of another room"),
            Err(e) => tracing::info!(%origin, error = %e, "a fetched event failed its checks"),
        }
    }
    checked.sort_by_key(depth);
    checked
}

fn depth(p: &CheckedPdu) -> i64 {
    match p.object.get("depth") {
        Some(ruma::CanonicalJsonValue::Integer(d)) => i64::from(*d),
        _ => 0,
    }
}

/// Fetches the auth chain of `event_id` from `origin` and stores what is not here as outliers.
async fn fetch_auth_chain(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    version: &RoomVersionId,
    event_id: &OwnedEventId,
) {
    let request = get_event_authorization::v1::Request::new(room_id.clone(), event_id.clone());
    let chain = match s.client.send(origin, request).await {
        Ok(r) => r.auth_chain,
        Err(e) => {
            tracing::info!(%origin, %room_id, error = %e, "event_auth failed");
            return;
        }
    };
    let checked = check_all(s, origin, room_id, version, &chain).await;
    if let Err(e) = receive_all(s, origin, &checked, true).await {
        tracing::info!(%origin, error = %e, "storing fetched auth events failed");
    }
}
