//! Schema migrations: SQL files under `migrations/{postgres,sqlite}/`, embedded at build time and
//! applied in order, each in its own transaction, recorded in `schema_migrations`.

use crate::{Backend, Db, Error, Result, now_ms};

/// One migration: its version and the SQL for each backend.
struct Migration {
    version: i64,
    name: &'static str,
    postgres: &'static str,
    sqlite: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        postgres: include_str!("../../../migrations/postgres/0001_initial.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "rooms",
        postgres: include_str!("../../../migrations/postgres/0002_rooms.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0002_rooms.sql"),
    },
    Migration {
        version: 3,
        name: "media",
        postgres: include_str!("../../../migrations/postgres/0003_media.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0003_media.sql"),
    },
    Migration {
        version: 4,
        name: "account_data",
        postgres: include_str!("../../../migrations/postgres/0004_account_data.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0004_account_data.sql"),
    },
    Migration {
        version: 5,
        name: "e2ee",
        postgres: include_str!("../../../migrations/postgres/0005_e2ee.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0005_e2ee.sql"),
    },
    Migration {
        version: 6,
        name: "ephemeral",
        postgres: include_str!("../../../migrations/postgres/0006_ephemeral.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0006_ephemeral.sql"),
    },
    Migration {
        version: 7,
        name: "key_backup",
        postgres: include_str!("../../../migrations/postgres/0007_key_backup.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0007_key_backup.sql"),
    },
    Migration {
        version: 8,
        name: "push_actions",
        postgres: include_str!("../../../migrations/postgres/0008_push_actions.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0008_push_actions.sql"),
    },
    Migration {
        version: 9,
        name: "directory",
        postgres: include_str!("../../../migrations/postgres/0009_directory.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0009_directory.sql"),
    },
    Migration {
        version: 10,
        name: "relations",
        postgres: include_str!("../../../migrations/postgres/0010_relations.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0010_relations.sql"),
    },
    Migration {
        version: 11,
        name: "presence",
        postgres: include_str!("../../../migrations/postgres/0011_presence.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0011_presence.sql"),
    },
    Migration {
        version: 12,
        name: "reports",
        postgres: include_str!("../../../migrations/postgres/0012_reports.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0012_reports.sql"),
    },
    Migration {
        version: 13,
        name: "registration_tokens",
        postgres: include_str!("../../../migrations/postgres/0013_registration_tokens.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0013_registration_tokens.sql"),
    },
    Migration {
        version: 14,
        name: "search",
        postgres: include_str!("../../../migrations/postgres/0014_search.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0014_search.sql"),
    },
    Migration {
        version: 15,
        name: "dehydrated_devices_and_signatures",
        postgres: include_str!("../../../migrations/postgres/0015_dehydrated_devices_and_signatures.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0015_dehydrated_devices_and_signatures.sql"),
    },
    Migration {
        version: 16,
        name: "sessions_and_profiles",
        postgres: include_str!("../../../migrations/postgres/0016_sessions_and_profiles.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0016_sessions_and_profiles.sql"),
    },
    Migration {
        version: 17,
        name: "event_graph_and_state_groups",
        postgres: include_str!("../../../migrations/postgres/0017_event_graph_and_state_groups.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0017_event_graph_and_state_groups.sql"),
    },
    Migration {
        version: 18,
        name: "pushers",
        postgres: include_str!("../../../migrations/postgres/0018_pushers.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0018_pushers.sql"),
    },
    Migration {
        version: 19,
        name: "email",
        postgres: include_str!("../../../migrations/postgres/0019_email.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0019_email.sql"),
    },
    Migration {
        version: 20,
        name: "appservices",
        postgres: include_str!("../../../migrations/postgres/0020_appservices.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0020_appservices.sql"),
    },
    Migration {
        version: 21,
        name: "appservice_crypto",
        postgres: include_str!("../../../migrations/postgres/0021_appservice_crypto.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0021_appservice_crypto.sql"),
    },
    Migration {
        version: 22,
        name: "remote_server_keys",
        postgres: include_str!("../../../migrations/postgres/0022_remote_server_keys.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0022_remote_server_keys.sql"),
    },
    Migration {
        version: 23,
        name: "federation_destinations",
        postgres: include_str!("../../../migrations/postgres/0023_federation_destinations.sql"),
        sqlite: include_str!("../../../migrations/sqlite/0023_federation_destinations.sql"),
    },
];

/// The schema version this build reads and writes: the highest migration's version.
pub const SCHEMA_VERSION: i64 = 23;

/// How the database's schema compares with this build's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Exactly the version this build understands.
    Current,
    /// Older (`0` means empty): `ganglion migrate` brings it up.
    Behind(i64),
    /// Newer than this build: run a newer Ganglion.
    Ahead(i64),
}

impl Db {
    /// Applies every pending migration. Returns the versions applied.
    ///
    /// # Errors
    /// When a migration fails (its transaction is rolled back) or the schema is newer than this build.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        self.ensure_migrations_table().await?;
        let current = self.schema_version().await?;
        if current > SCHEMA_VERSION {
            return Err(Error::Schema(format!(
                "database schema is version {current}, newer than this build's {SCHEMA_VERSION}"
            )));
        }
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(self.pool()).await?;
        let mut applied = Vec::new();
        // Every migration not yet recorded, in version order: a version merged late (after a higher
        // one was applied) still runs.
        for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
            let sql = match self.backend() {
                Backend::Postgres => m.postgres,
                Backend::Sqlite => m.sqlite,
            };
            let mut tx = self.pool().begin().await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, name, applied_ts) VALUES ($1, $2, $3)")
                .bind(m.version)
                .bind(m.name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
            applied.push(m.version);
        }
        Ok(applied)
    }

    /// Compares the database's schema with this build's.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn schema_status(&self) -> Result<SchemaStatus> {
        self.ensure_migrations_table().await?;
        let v = self.schema_version().await?;
        Ok(match v.cmp(&SCHEMA_VERSION) {
            std::cmp::Ordering::Equal => SchemaStatus::Current,
            std::cmp::Ordering::Less => SchemaStatus::Behind(v),
            std::cmp::Ordering::Greater => SchemaStatus::Ahead(v),
        })
    }

    async fn ensure_migrations_table(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)",
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn schema_version(&self) -> Result<i64> {
        let v: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(self.pool())
            .await?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_the_highest_migration_and_versions_are_unique() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions.iter().max().copied(), Some(SCHEMA_VERSION));
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, versions, "MIGRATIONS is in version order without duplicates");
    }
}
