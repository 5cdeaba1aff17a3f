//! Server signing keys: ours (loaded from the database, published at `/_matrix/key/v2/server`)
//! and other servers' (fetched from them and cached until they say the keys expire).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ganglion_core::ServerSigningKey;
use ganglion_storage::KeyStore;
use ruma::signatures::PublicKeyMap;
use ruma::{OwnedServerName, ServerName};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::client::{FederationClient, FederationError};

/// How long others may cache our keys.
const OUR_KEYS_VALID_FOR: Duration = Duration::from_secs(24 * 3600);
/// Refetch another server's keys at least this often, whatever `valid_until_ts` says.
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);

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

#[derive(Debug, Clone)]
struct CachedKeys {
    /// `ed25519:version` → public key (unpadded base64).
    keys: HashMap<String, String>,
    until_ms: u64,
}

/// Other servers' keys, fetched directly from them and checked against their own signature.
#[derive(Debug, Clone)]
pub struct KeyFetcher {
    client: FederationClient,
    cache: Arc<Mutex<HashMap<OwnedServerName, CachedKeys>>>,
}

impl KeyFetcher {
    /// A fetcher that asks servers through `client`.
    pub fn new(client: FederationClient) -> Self {
        Self { client, cache: Arc::default() }
    }

    /// The public key `key_id` of `server`, from the cache or from the server.
    ///
    /// # Errors
    /// When the server cannot be reached, answers for another name, signs badly, or has no such
    /// current key.
    pub async fn public_key(&self, server: &ServerName, key_id: &str) -> Result<String, FederationError> {
        {
            let cache = self.cache.lock().await;
            if let Some(c) = cache.get(server).filter(|c| c.until_ms > now_ms())
                && let Some(k) = c.keys.get(key_id)
            {
                return Ok(k.clone());
            }
        }
        let fetched = self.fetch(server).await?;
        let key = fetched.keys.get(key_id).cloned();
        self.cache.lock().await.insert(server.to_owned(), fetched);
        key.ok_or_else(|| FederationError::BadResponse(format!("{server} has no current key {key_id}")))
    }

    async fn fetch(&self, server: &ServerName) -> Result<CachedKeys, FederationError> {
        let doc: Value = self.client.get_unsigned(server, "/_matrix/key/v2/server").await?.json().await?;
        let bad = |m: &str| FederationError::BadResponse(format!("{server}'s keys: {m}"));
        if doc.get("server_name").and_then(Value::as_str) != Some(server.as_str()) {
            return Err(bad("server_name does not match"));
        }
        let keys: HashMap<String, String> = doc
            .get("verify_keys")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no verify_keys"))?
            .iter()
            .filter_map(|(id, k)| Some((id.clone(), k.get("key")?.as_str()?.to_owned())))
            .collect();
        let mut entity = std::collections::BTreeMap::new();
        for (id, k) in &keys {
            let public = ruma::serde::Base64::parse(k).map_err(|_| bad("a key is not base64"))?;
            entity.insert(id.clone(), public);
        }
        let mut map = PublicKeyMap::new();
        map.insert(server.to_string(), entity);
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(doc.clone()).map_err(|_| bad("not canonical JSON"))?;
        ruma::signatures::verify_json(&map, &object).map_err(|e| bad(&format!("self-signature: {e}")))?;
        let until = doc.get("valid_until_ts").and_then(Value::as_u64).unwrap_or(0);
        Ok(CachedKeys { keys, until_ms: until.min(now_ms() + MAX_CACHE.as_millis() as u64) })
    }
}
