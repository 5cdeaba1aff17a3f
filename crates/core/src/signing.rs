//! The server's ed25519 signing key.

use base64::Engine as _;
use ruma::signatures::Ed25519KeyPair;

/// A signing-key failure.
#[derive(Debug, thiserror::Error)]
#[error("signing key: {0}")]
pub struct SigningKeyError(String);

/// The key this server signs events (and later federation requests) with.
pub struct ServerSigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ServerSigningKey").field("version", &self.pair.version()).finish_non_exhaustive()
    }
}

impl ServerSigningKey {
    /// A new random key with a random version such as `a_Xyz1`.
    pub fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate().to_vec();
        let version: String = {
            use rand::Rng as _;
            let mut rng = rand::thread_rng();
            (0..6).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect()
        };
        let pair = Ed25519KeyPair::from_der(&pkcs8, format!("a_{version}")).expect("a freshly generated key parses");
        Self { pair, pkcs8 }
    }

    /// A key from its version and base64 PKCS#8 document, as stored.
    ///
    /// # Errors
    /// When the document does not decode.
    pub fn from_stored(version: &str, pkcs8_base64: &str) -> Result<Self, SigningKeyError> {
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(pkcs8_base64)
            .map_err(|e| SigningKeyError(format!("base64: {e}")))?;
        let pair = Ed25519KeyPair::from_der(&pkcs8, version.to_owned()).map_err(|e| SigningKeyError(e.to_string()))?;
        Ok(Self { pair, pkcs8 })
    }

    /// The version, the part after `ed25519:` in the key ID.
    pub fn version(&self) -> &str {
        self.pair.version()
    }

    /// The base64 PKCS#8 document, for storage.
    pub fn pkcs8_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.pkcs8)
    }

    /// The public key, unpadded base64, as `verify_keys` lists it.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    /// The key pair, for ruma's signing functions.
    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }
}
