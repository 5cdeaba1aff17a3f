//! Throwaway databases for tests: a fresh SQLite file or a fresh PostgreSQL database, dropped after.
//!
//! PostgreSQL is reached at `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth); each test gets its own database.

use crate::{Backend, Db};

/// A migrated database that lives as long as this value.
pub struct TestDb {
    /// The database.
    pub db: Db,
    /// Its URL, for starting server processes on the same database.
    pub url: String,
    admin_url: Option<String>,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// The admin URL used to create test databases on PostgreSQL.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDb {
    /// A fresh, migrated database on `backend`.
    ///
    /// # Panics
    /// When the database cannot be created: a test environment fault.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}/test.db", dir.path().display());
                let db = Db::connect(&url, 4).await.expect("sqlite connect");
                db.migrate().await.expect("migrate");
                Self { db, url, admin_url: None, name: None, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("ganglion_test_{:016x}", rand::random::<u64>());
                let admin_db = Db::connect(&admin, 1).await.expect("postgres admin connect");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(admin_db.pool())
                    .await
                    .expect("create database");
                admin_db.close().await;
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin.clone());
                let url = format!("{base}/{name}");
                let db = Db::connect(&url, 8).await.expect("postgres connect");
                db.migrate().await.expect("migrate");
                Self { db, url, admin_url: Some(admin), name: Some(name), _dir: None }
            }
        }
    }

    /// The connection pool, for tests and examples that inspect the database directly.
    pub fn pool(&self) -> &sqlx::AnyPool {
        self.db.pool()
    }

    /// Closes the pool and drops the PostgreSQL database.
    pub async fn cleanup(self) {
        self.db.close().await;
        if let (Some(admin), Some(name)) = (self.admin_url, self.name)
            && let Ok(admin_db) = Db::connect(&admin, 1).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(admin_db.pool()).await;
            admin_db.close().await;
        }
    }
}
