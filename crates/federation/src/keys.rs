//! Server signing keys: ours (loaded from the database, published at `/_matrix/key/v2/server`)
//! and other servers' (fetched from them, or from the notaries in
//! `federation.trusted_key_servers`, checked against their signatures, and kept in the database
//! until they expire, so every process and a restart reuse them).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ganglion_core::ServerSigningKey;
use ganglion_storage::{KeyStore, RemoteKey, RemoteKeyStore};
use ruma::signatures::PublicKeyMap;
use ruma::{OwnedServerName, ServerName};
use serde_json::{Value, json};

use crate::client::{FederationClient, FederationError};

/// How long others may cache our keys.
const OUR_KEYS_VALID_FOR: Duration = Duration::from_secs(24 * 3600);
/// The spec's cap on a key's validity: the lesser of `valid_until_ts` and a week from now.
const MAX_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// After a server's keys could not be fetched, requests signed by it fail fast for this long.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// Keys kept in memory per process (the database holds them all).
const MEMORY_KEYS: usize = 4096;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The server signing key `main` created at first start.
///
/// # Errors
/// When the database fails, the stored key does not decode, or there is none yet (`main` has
/// not started once).
pub async fn load_signing_key(keys: &KeyStore) -> Result<ServerSigningKey, String> {
    let stored = keys
        .active_key()
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no server signing key yet: start main once first".to_owned())?;
    ServerSigningKey::from_stored(&stored.version, &stored.pkcs8_base64).map_err(|e| e.to_string())
}

/// Our `/_matrix/key/v2/server` answer, signed with `key`; `old` are keys we no longer sign
/// with and when they expired (ms), listed so what they signed can still be checked.
pub fn server_keys_document(
    server_name: &ServerName,
    key: &ServerSigningKey,
    old: &[(ServerSigningKey, i64)],
) -> Value {
    let old_keys: serde_json::Map<String, Value> = old
        .iter()
        .map(|(k, expired)| {
            (format!("ed25519:{}", k.version()), json!({ "key": k.public_key_base64(), "expired_ts": expired }))
        })
        .collect();
    let doc = json!({
        "server_name": server_name,
        "valid_until_ts": now_ms() + OUR_KEYS_VALID_FOR.as_millis() as u64,
        "verify_keys": { format!("ed25519:{}", key.version()): { "key": key.public_key_base64() } },
        "old_verify_keys": old_keys,
    });
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(doc).expect("a JSON object");
    ruma::signatures::sign_json(server_name.as_str(), key.pair(), &mut object).expect("signing a JSON object");
    serde_json::to_value(object).expect("canonical JSON is JSON")
}

/// The keys we no longer sign with, for [`server_keys_document`].
///
/// # Errors
/// When the database fails or a stored key does not decode.
pub async fn load_expired_keys(keys: &KeyStore) -> Result<Vec<(ServerSigningKey, i64)>, String> {
    keys.expired_keys()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(k, at)| Ok((ServerSigningKey::from_stored(&k.version, &k.pkcs8_base64).map_err(|e| e.to_string())?, at)))
        .collect()
}

/// A key document checked against its server's own signature.
#[derive(Debug, Clone)]
struct VerifiedDocument {
    server: OwnedServerName,
    valid_until_ts: i64,
    keys: Vec<RemoteKey>,
    document: Value,
}

fn bad(server: &str, m: &str) -> FederationError {
    FederationError::BadResponse(format!("{server}'s keys: {m}"))
}

/// Checks a `/_matrix/key/v2/server` document: it names `expected` (when given), is signed by
/// every current key it lists, and, when `notary` is given, is also signed by that notary.
fn verify_document(
    doc: &Value,
    expected: Option<&ServerName>,
    notary: Option<(&str, &BTreeMap<String, String>)>,
) -> Result<VerifiedDocument, FederationError> {
    let name = doc.get("server_name").and_then(Value::as_str).unwrap_or_default();
    let server = OwnedServerName::try_from(name).map_err(|_| bad(name, "no valid server_name"))?;
    if expected.is_some_and(|e| e != server) {
        return Err(bad(name, "server_name does not match the server asked"));
    }
    let valid_until_ts =
        doc.get("valid_until_ts").and_then(Value::as_i64).ok_or_else(|| bad(name, "no valid_until_ts"))?;
    let current: BTreeMap<String, String> = doc
        .get("verify_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(name, "no verify_keys"))?
        .iter()
        .filter_map(|(id, k)| Some((id.clone(), k.get("key")?.as_str()?.to_owned())))
        .collect();
    if current.is_empty() {
        return Err(bad(name, "no current key"));
    }
    let object: ruma::CanonicalJsonObject =
        serde_json::from_value(doc.clone()).map_err(|_| bad(name, "not canonical JSON"))?;
    let to_map = |keys: &BTreeMap<String, String>| -> Result<BTreeMap<String, ruma::serde::Base64>, FederationError> {
        keys.iter()
            .map(|(id, k)| {
                Ok((id.clone(), ruma::serde::Base64::parse(k).map_err(|_| bad(name, "a key is not base64"))?))
            })
            .collect()
    };
    // Each signer must have signed with a key we know; verify_json then checks the signatures
    // of each, separately, so neither can stand in for the other.
    let signed_by = |entity: &str, keys: &BTreeMap<String, String>| {
        doc.get("signatures")
            .and_then(|s| s.get(entity))
            .and_then(Value::as_object)
            .is_some_and(|sigs| sigs.keys().any(|id| keys.contains_key(id)))
    };
    if !signed_by(server.as_str(), &current) {
        return Err(bad(name, "not signed by any of its current keys"));
    }
    if let Some((notary, keys)) = notary
        && !signed_by(notary, keys)
    {
        return Err(bad(name, &format!("not signed by the notary {notary}")));
    }
    let mut own = PublicKeyMap::new();
    own.insert(server.to_string(), to_map(&current)?);
    let mut signed_by_server = object.clone();
    if let Some(ruma::CanonicalJsonValue::Object(sigs)) = signed_by_server.get_mut("signatures") {
        sigs.retain(|k, _| k == server.as_str());
    }
    ruma::signatures::verify_json(&own, &signed_by_server).map_err(|e| bad(name, &format!("self-signature: {e}")))?;
    if let Some((notary, keys)) = notary {
        let mut theirs = PublicKeyMap::new();
        theirs.insert(notary.to_owned(), to_map(keys)?);
        let mut signed_by_notary = object;
        if let Some(ruma::CanonicalJsonValue::Object(sigs)) = signed_by_notary.get_mut("signatures") {
            sigs.retain(|k, _| k == notary);
        }
        ruma::signatures::verify_json(&theirs, &signed_by_notary)
            .map_err(|e| bad(name, &format!("notary {notary}'s signature: {e}")))?;
    }
    let cap = now_ms() as i64 + MAX_VALIDITY.as_millis() as i64;
    let mut keys: Vec<RemoteKey> = current
        .into_iter()
        .map(|(key_id, public_key)| RemoteKey {
            key_id,
            public_key,
            valid_until_ts: valid_until_ts.min(cap),
            expired_ts: None,
        })
        .collect();
    if let Some(old) = doc.get("old_verify_keys").and_then(Value::as_object) {
        for (key_id, k) in old {
            let (Some(public_key), Some(expired)) =
                (k.get("key").and_then(Value::as_str), k.get("expired_ts").and_then(Value::as_i64))
            else {
                continue;
            };
            keys.push(RemoteKey {
                key_id: key_id.clone(),
                public_key: public_key.to_owned(),
                valid_until_ts: expired,
                expired_ts: Some(expired),
            });
        }
    }
    Ok(VerifiedDocument { server, valid_until_ts, keys, document: doc.clone() })
}

#[derive(Debug, Default)]
struct Memory {
    /// (server, key id) → (public key, valid until ms), current keys only.
    keys: HashMap<(OwnedServerName, String), (String, i64)>,
    /// Servers whose keys could not be fetched, and when.
    failed: HashMap<OwnedServerName, Instant>,
}

/// Other servers' keys: from memory, the database, the server itself, then the notaries.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyFetcher {
    client: FederationClient,
    store: RemoteKeyStore,
    notaries: Arc<Vec<String>>,
    memory: Arc<Mutex<Memory>>,
}

impl KeyFetcher {
    /// A fetcher asking servers through `client`, keeping keys in `store`, and asking
    /// `notaries` when a server cannot be asked itself.
    pub fn new(client: FederationClient, store: RemoteKeyStore, notaries: Vec<String>) -> Self {
        Self { client, store, notaries: Arc::new(notaries), memory: Arc::default() }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, server: &ServerName, keys: &[RemoteKey]) {
        let mut memory = self.memory();
        if memory.keys.len() >= MEMORY_KEYS {
            memory.keys.clear();
        }
        for k in keys.iter().filter(|k| k.expired_ts.is_none()) {
            memory.keys.insert((server.to_owned(), k.key_id.clone()), (k.public_key.clone(), k.valid_until_ts));
        }
        memory.failed.remove(server);
    }

    /// The public key `key_id` of `server` (unpadded base64), valid now: what an inbound request
    /// must be signed with.
    ///
    /// # Errors
    /// When the key is unknown, expired, or cannot be fetched (directly or from a notary).
    pub async fn public_key(&self, server: &ServerName, key_id: &str) -> Result<String, FederationError> {
        let now = now_ms() as i64;
        if let Some((k, until)) = self.memory().keys.get(&(server.to_owned(), key_id.to_owned()))
            && *until > now
        {
            return Ok(k.clone());
        }
        let stored = self.store.keys_of(server.as_str()).await.map_err(|e| FederationError::Setup(e.to_string()))?;
        if let Some(k) = stored.iter().find(|k| k.key_id == key_id && k.expired_ts.is_none() && k.valid_until_ts > now)
        {
            self.remember(server, &stored);
            return Ok(k.public_key.clone());
        }
        if let Some(at) = self.memory().failed.get(server)
            && at.elapsed() < FAILURE_BACKOFF
        {
            return Err(FederationError::BadResponse(format!("{server}'s keys could not be fetched recently")));
        }
        let fetched = self.refresh(server, now).await;
        match fetched {
            Ok(doc) => doc
                .keys
                .iter()
                .find(|k| k.key_id == key_id && k.expired_ts.is_none() && k.valid_until_ts > now)
                .map(|k| k.public_key.clone())
                .ok_or_else(|| FederationError::BadResponse(format!("{server} has no current key {key_id}"))),
            Err(e) => {
                let mut memory = self.memory();
                // Origins are named by strangers: forgetting failures costs a fetch, not safety.
                if memory.failed.len() >= MEMORY_KEYS {
                    memory.failed.clear();
                }
                memory.failed.insert(server.to_owned(), Instant::now());
                Err(e)
            }
        }
    }

    /// `server`'s key documents as a notary answers them (each as the server signed it),
    /// valid until at least `minimum_valid_until_ts` where they can be had: stored ones when
    /// they are, freshly fetched otherwise, and the stored ones when fetching fails.
    ///
    /// # Errors
    /// On database failure.
    pub async fn documents_for(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: i64,
    ) -> Result<Vec<Value>, FederationError> {
        let stored = self.store.document(server.as_str()).await.map_err(|e| FederationError::Setup(e.to_string()))?;
        if let Some((until, doc)) = &stored
            && *until >= minimum_valid_until_ts
        {
            return Ok(serde_json::from_str(doc).into_iter().collect());
        }
        match self.refresh(server, minimum_valid_until_ts).await {
            Ok(doc) => Ok(vec![doc.document]),
            Err(e) => {
                tracing::info!(server = %server, error = %e, "could not refresh keys for a notary query");
                Ok(stored.and_then(|(_, doc)| serde_json::from_str(&doc).ok()).into_iter().collect())
            }
        }
    }

    /// Fetches `server`'s keys, from the server, then each notary in turn, and stores them.
    async fn refresh(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: i64,
    ) -> Result<VerifiedDocument, FederationError> {
        let direct = self.fetch_direct(server).await;
        let mut last = match direct {
            Ok(doc) => return Ok(doc),
            Err(e) => e,
        };
        for notary in self.notaries.iter().filter(|n| n.as_str() != server.as_str()) {
            match self.fetch_from_notary(notary, server, minimum_valid_until_ts).await {
                Ok(doc) => return Ok(doc),
                Err(e) => {
                    tracing::info!(server = %server, notary = %notary, error = %e, "notary could not vouch");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn keep(&self, doc: VerifiedDocument) -> Result<VerifiedDocument, FederationError> {
        let text = serde_json::to_string(&doc.document).map_err(|e| FederationError::Setup(e.to_string()))?;
        self.store
            .store(doc.server.as_str(), doc.valid_until_ts, &text, &doc.keys)
            .await
            .map_err(|e| FederationError::Setup(e.to_string()))?;
        self.remember(&doc.server, &doc.keys);
        Ok(doc)
    }

    async fn fetch_direct(&self, server: &ServerName) -> Result<VerifiedDocument, FederationError> {
        let doc: Value = self.client.get_unsigned(server, "/_matrix/key/v2/server").await?.json().await?;
        let verified = verify_document(&doc, Some(server), None)?;
        self.keep(verified).await
    }

    async fn fetch_from_notary(
        &self,
        notary: &str,
        server: &ServerName,
        minimum_valid_until_ts: i64,
    ) -> Result<VerifiedDocument, FederationError> {
        let notary_name = OwnedServerName::try_from(notary)
            .map_err(|_| FederationError::Setup(format!("bad notary name {notary}")))?;
        // The notary's own keys, as it publishes them (over TLS, checked against its name).
        let own = self.fetch_direct(&notary_name).await?;
        let notary_keys: BTreeMap<String, String> =
            own.keys.into_iter().filter(|k| k.expired_ts.is_none()).map(|k| (k.key_id, k.public_key)).collect();
        let body = json!({ "server_keys": { server.as_str(): {} }, "minimum_valid_until_ts": minimum_valid_until_ts });
        let resp = self.client.request(http::Method::POST, &notary_name, "/_matrix/key/v2/query", Some(&body)).await?;
        if !resp.status().is_success() {
            return Err(FederationError::BadResponse(format!("{notary_name} answered {}", resp.status())));
        }
        let answer: Value = resp.json().await?;
        let docs = answer.get("server_keys").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut best: Option<VerifiedDocument> = None;
        for doc in &docs {
            match verify_document(doc, Some(server), Some((notary_name.as_str(), &notary_keys))) {
                Ok(v) if best.as_ref().is_none_or(|b| v.valid_until_ts > b.valid_until_ts) => best = Some(v),
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(notary = %notary_name, error = %e, "notary answered a key document that does not verify")
                }
            }
        }
        let mut doc =
            best.ok_or_else(|| FederationError::BadResponse(format!("{notary_name} had no keys of {server}")))?;
        // Keep the server's own signatures only: what we serve as a notary we sign ourselves.
        if let Some(Value::Object(sigs)) = doc.document.get_mut("signatures") {
            sigs.retain(|k, _| k == server.as_str());
        }
        self.keep(doc).await
    }
}

/// Adds our signature to another server's key document, as a notary's answer carries.
pub fn notarise(mut doc: Value, notary: &ServerName, key: &ServerSigningKey) -> Option<Value> {
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(doc.take()).ok()?;
    ruma::signatures::sign_json(notary.as_str(), key.pair(), &mut object).ok()?;
    serde_json::to_value(object).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OwnedServerName {
        OwnedServerName::try_from(s).unwrap()
    }

    #[test]
    fn documents_are_checked_against_the_server_and_the_notary() {
        let key = ServerSigningKey::generate();
        let retired = ServerSigningKey::generate();
        let doc = server_keys_document(&name("a.org"), &key, &[(retired, 1_000)]);
        let v = verify_document(&doc, Some(&name("a.org")), None).expect("self-signed");
        assert_eq!(v.keys.len(), 2);
        let old = v.keys.iter().find(|k| k.expired_ts.is_some()).unwrap();
        assert_eq!((old.valid_until_ts, old.expired_ts), (1_000, Some(1_000)));
        let week = now_ms() as i64 + MAX_VALIDITY.as_millis() as i64;
        assert!(v.keys.iter().all(|k| k.valid_until_ts <= week), "validity capped at a week");

        assert!(verify_document(&doc, Some(&name("b.org")), None).is_err(), "another server's document");
        let mut forged = doc.clone();
        forged["valid_until_ts"] = json!(9_999_999_999_999_i64);
        assert!(verify_document(&forged, Some(&name("a.org")), None).is_err(), "changed after signing");

        let notary = ServerSigningKey::generate();
        let vouched = notarise(doc.clone(), &name("n.org"), &notary).unwrap();
        let notary_keys =
            BTreeMap::from([(format!("ed25519:{}", notary.version()), notary.public_key_base64().to_owned())]);
        verify_document(&vouched, Some(&name("a.org")), Some(("n.org", &notary_keys))).expect("both signatures");
        let stranger = ServerSigningKey::generate();
        let wrong =
            BTreeMap::from([(format!("ed25519:{}", notary.version()), stranger.public_key_base64().to_owned())]);
        assert!(verify_document(&vouched, Some(&name("a.org")), Some(("n.org", &wrong))).is_err());
        assert!(verify_document(&doc, Some(&name("a.org")), Some(("n.org", &notary_keys))).is_err(), "unvouched");
    }
}
