//! Argon2id password hashing, off the async runtime.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};
use ganglion_config::PasswordHashingConfig;

/// Hashes and checks passwords with the configured cost.
#[derive(Debug, Clone)]
pub(crate) struct PasswordHasherConfig {
    params: Params,
}

impl PasswordHasherConfig {
    pub(crate) fn new(cfg: &PasswordHashingConfig) -> Result<Self, String> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None).map_err(|e| e.to_string())?;
        Ok(Self { params })
    }

    /// Hashes on the blocking pool: argon2 is deliberately slow and would stall the runtime.
    pub(crate) async fn hash(&self, password: String) -> Result<String, String> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Checks a password against a stored hash (whose own parameters are used).
    pub(crate) async fn verify(&self, password: String, stored: String) -> bool {
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false)
    }
}
