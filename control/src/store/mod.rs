//! The control plane's durable state: relays and their certificates, enrolment tokens, services,
//! access tokens and the keys that sign them, admin tokens, the audit log and the generation of
//! the pushed config. It lives in one SQLite file, `<data_dir>/sat.db`, and everything in it
//! survives a restart. Live state (which uplinks are up, their round trips) is not stored here.
//!
//! Every query is written in the SQL that SQLite and PostgreSQL both accept (`$1` placeholders,
//! `ON CONFLICT ... DO UPDATE`, `RETURNING`), and the migrations in `control/migrations` follow the
//! portability rule stated at the top of each, so that a PostgreSQL store can reuse both.

mod records;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use sat_proto::control::Access;
use sat_proto::stream::StreamKind;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};

pub use records::{
    AccessTokenRecord, AdminTokenRecord, AuditRecord, RedeemRefusal, RelayAdminState, RelayRecord,
    RelayTokenRecord, ServiceRecord, SigningKeyRecord,
};

/// The migrations in `control/migrations`, compiled into the binary and applied at open.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for another connection or process to release the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections to the file. SQLite runs one writer at a time anyway; a few connections let reads
/// proceed while a write waits.
const MAX_CONNECTIONS: u32 = 4;
/// The `meta` key holding the generation of the pushed config.
const GENERATION: &str = "generation";

// Column lists shared by a SELECT and a RETURNING, so both decode with one function.
macro_rules! relay_columns {
    () => {
        "name, region, state, version, addresses, lat, lon, enrolled_at, last_seen_at, \
         state_changed_at"
    };
}
macro_rules! relay_token_columns {
    () => {
        "id, secret_hash, region, name, created_at, expires_at, used_at, used_by"
    };
}
macro_rules! access_token_columns {
    () => {
        "id, services, created_at, expires_at, revoked_at"
    };
}

/// Failures of the store. Every one of them is the control plane's side, not a peer's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created or opened. Retrying helps only once the cause is
    /// fixed.
    #[error(
        "cannot open the store {path}: {source}; check that this user can write the file and its \
         directory, that no other process holds the file locked, and that the disk has space"
    )]
    Open {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The schema could not be brought up to date; the message names the file and the fix.
    #[error("cannot migrate the store: {0}")]
    Migrate(String),
    /// A query failed. A busy or full database may succeed on retry.
    #[error("store query failed: {0}")]
    Db(#[from] sqlx::Error),
    /// A row holds a value this version cannot decode: the file was edited by hand or written by
    /// a newer version. The message names the table, the row and the column.
    #[error("store holds a row this version cannot read: {0}")]
    Corrupt(String),
}

/// A handle on the database. Cloning is cheap: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens the database at `path`, creating it and its directory if missing, and applies the
    /// migrations this version has and the file lacks.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let failed = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        create_private_file(path)
            .await
            .map_err(|e| failed(e.into()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // Readers do not block the writer, and a commit is one append to the log.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // `connect_with` opens one connection now, so a file we cannot use fails here, with its
        // path, rather than at the first query.
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| failed(e.into()))?;
        let store = Self { pool };
        store.migrate(&path.display().to_string()).await?;
        Ok(store)
    }

    /// An empty database in memory, for tests.
    pub async fn open_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(":memory:")
            .foreign_keys(true);
        // Each connection to ":memory:" is a database of its own, so the pool holds exactly one
        // connection and never closes it.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open {
                path: PathBuf::from(":memory:"),
                source: e.into(),
            })?;
        let store = Self { pool };
        store.migrate(":memory:").await?;
        Ok(store)
    }

    async fn migrate(&self, name: &str) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| {
            StoreError::Migrate(match e {
                MigrateError::VersionMissing(v) => format!(
                    "{name}: migration {v} was applied by a newer version of sat; run that \
                     version, or restore a backup made for this one"
                ),
                MigrateError::VersionMismatch(v) => format!(
                    "{name}: migration {v} differs from the one applied to this file; this \
                     build is broken, do not edit shipped migrations"
                ),
                e => format!("{name}: {e}"),
            })
        })
    }

    /// What kind of database this is, for people: `sqlite`.
    pub fn kind(&self) -> &'static str {
        "sqlite"
    }

    /// Where the database is: the SQLite file's path (`:memory:` for a test store).
    pub fn location(&self) -> String {
        self.pool
            .connect_options()
            .get_filename()
            .display()
            .to_string()
    }

    /// The highest migration applied to the database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(version)
    }

    /// Adds one to the generation of the pushed config and returns the new value. One statement,
    /// so concurrent callers each get a distinct value.
    pub async fn bump_generation(&self) -> Result<u64, StoreError> {
        let value: String = sqlx::query_scalar(
            "INSERT INTO meta (key, value) VALUES ($1, '1') \
             ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) \
             RETURNING value",
        )
        .bind(GENERATION)
        .fetch_one(&self.pool)
        .await?;
        parse_generation(&value)
    }

    /// The generation of the pushed config; 0 before the first bump.
    pub async fn generation(&self) -> Result<u64, StoreError> {
        match self.meta(GENERATION).await? {
            Some(value) => parse_generation(&value),
            None => Ok(0),
        }
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let value = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(value)
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a new enrolment token. An id that exists already is an error.
    pub async fn insert_relay_token(&self, t: &RelayTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relay_tokens \
             (id, secret_hash, region, name, created_at, expires_at, used_at, used_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.region)
        .bind(&t.name)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.used_at)
        .bind(&t.used_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The enrolment token with this id, used or not. Only `redeem_relay_token` can say whether
    /// it may enrol a relay.
    pub async fn relay_token(&self, id: &str) -> Result<Option<RelayTokenRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            relay_token_columns!(),
            " FROM relay_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(relay_token_from_row).transpose()
    }

    /// Marks the token used by `relay` if it exists, its secret hash (lowercase hex) matches, and
    /// it is unused and unexpired at `now`, and returns it as now stored. The check and the mark
    /// are one conditional UPDATE, so of two concurrent redeemers exactly one wins. A caller
    /// without the right secret learns only that the secret is wrong, not whether the token was
    /// used or expired.
    pub async fn redeem_relay_token(
        &self,
        id: &str,
        secret_hash: &str,
        relay: &str,
        now: i64,
    ) -> Result<Result<RelayTokenRecord, RedeemRefusal>, StoreError> {
        let won = sqlx::query(concat!(
            "UPDATE relay_tokens SET used_at = $4, used_by = $3 \
             WHERE id = $1 AND secret_hash = $2 AND used_at IS NULL AND expires_at > $4 \
             RETURNING ",
            relay_token_columns!()
        ))
        .bind(id)
        .bind(secret_hash)
        .bind(relay)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = won {
            return Ok(Ok(relay_token_from_row(&row)?));
        }
        // The update matched nothing; read the row to say which condition failed. Once used or
        // expired a token stays so, hence the answer cannot be stale in a way that matters.
        let Some(token) = self.relay_token(id).await? else {
            return Ok(Err(RedeemRefusal::Unknown));
        };
        Ok(Err(if token.secret_hash != secret_hash {
            RedeemRefusal::WrongSecret
        } else if let Some(at) = token.used_at {
            RedeemRefusal::Used {
                at,
                by: token.used_by.unwrap_or_default(),
            }
        } else {
            RedeemRefusal::Expired {
                at: token.expires_at,
            }
        }))
    }

    pub async fn relay(&self, name: &str) -> Result<Option<RelayRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            relay_columns!(),
            " FROM relays WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(relay_from_row).transpose()
    }

    /// Every relay, revoked ones included, by name.
    pub async fn relays(&self) -> Result<Vec<RelayRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            relay_columns!(),
            " FROM relays ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(relay_from_row).collect()
    }

    /// Inserts the relay, or overwrites every column of the one with its name.
    pub async fn put_relay(&self, r: &RelayRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relays (name, region, state, version, addresses, lat, lon, enrolled_at, \
             last_seen_at, state_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) DO UPDATE SET region = excluded.region, state = excluded.state, \
             version = excluded.version, addresses = excluded.addresses, lat = excluded.lat, \
             lon = excluded.lon, enrolled_at = excluded.enrolled_at, \
             last_seen_at = excluded.last_seen_at, state_changed_at = excluded.state_changed_at",
        )
        .bind(&r.name)
        .bind(&r.region)
        .bind(r.state.as_str())
        .bind(&r.version)
        .bind(to_json("relays.addresses", &r.addresses)?)
        .bind(r.location.map(|(lat, _)| lat))
        .bind(r.location.map(|(_, lon)| lon))
        .bind(r.enrolled_at)
        .bind(r.last_seen_at)
        .bind(r.state_changed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets the relay's admin state; `state_changed_at` moves only if the state does. False if
    /// no relay has that name.
    pub async fn set_relay_state(
        &self,
        name: &str,
        state: RelayAdminState,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE relays SET state = $2, \
             state_changed_at = CASE WHEN state = $2 THEN state_changed_at ELSE $3 END \
             WHERE name = $1",
        )
        .bind(name)
        .bind(state.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records what a connected relay reported about itself and when. Does nothing for a name
    /// that is not enrolled.
    pub async fn touch_relay(
        &self,
        name: &str,
        version: &str,
        addresses: &[String],
        location: Option<(f64, f64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE relays SET version = $2, addresses = $3, lat = $4, lon = $5, \
             last_seen_at = $6 WHERE name = $1",
        )
        .bind(name)
        .bind(version)
        .bind(to_json("relays.addresses", addresses)?)
        .bind(location.map(|(lat, _)| lat))
        .bind(location.map(|(_, lon)| lon))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a certificate issued to `relay`, which must already be stored (`put_relay`
    /// first): the table has a foreign key to `relays`. `serial_hex` is lowercase hex.
    pub async fn insert_relay_cert(
        &self,
        serial_hex: &str,
        relay: &str,
        issued_at: i64,
        not_after: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relay_certs (serial, relay, issued_at, not_after) VALUES ($1, $2, $3, $4)",
        )
        .bind(serial_hex)
        .bind(relay)
        .bind(issued_at)
        .bind(not_after)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The relay a certificate serial (lowercase hex) was issued to.
    pub async fn cert_owner(&self, serial_hex: &str) -> Result<Option<String>, StoreError> {
        let relay = sqlx::query_scalar("SELECT relay FROM relay_certs WHERE serial = $1")
            .bind(serial_hex)
            .fetch_optional(&self.pool)
            .await?;
        Ok(relay)
    }

    /// For each relay holding a certificate, when its newest one expires (unix ms).
    pub async fn relay_cert_expiries(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT relay, MAX(not_after) AS not_after FROM relay_certs GROUP BY relay",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("relay")?, row.try_get("not_after")?)))
            .collect()
    }

    /// Forgets certificates that expired before `expired_before`; returns how many.
    pub async fn prune_relay_certs(&self, expired_before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM relay_certs WHERE not_after < $1")
            .bind(expired_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Forgets every certificate of `relay`: after a revocation or a re-enrolment under the
    /// same name, none of the old certificates opens an uplink again.
    pub async fn forget_relay_certs(&self, relay: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM relay_certs WHERE relay = $1")
            .bind(relay)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Closes the pool, so that SQLite checkpoints its write-ahead log into the database.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Every service, by name.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, kind, backend, hostnames, access, created_at FROM services ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(service_from_row).collect()
    }

    /// Adds a service. False, and nothing changed, if one with that name exists.
    pub async fn insert_service(&self, s: &ServiceRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO services (name, kind, backend, hostnames, access, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&s.name)
        .bind(kind_str(s.kind))
        .bind(&s.backend)
        .bind(to_json("services.hostnames", &s.hostnames)?)
        .bind(access_str(s.access))
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a service. False if no service had that name.
    pub async fn remove_service(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM services WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_access_token(&self, t: &AccessTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_tokens (id, services, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.id)
        .bind(to_json("access_tokens.services", &t.services)?)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every access token ever issued, expired and revoked ones included, newest first.
    pub async fn access_tokens(&self) -> Result<Vec<AccessTokenRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            access_token_columns!(),
            " FROM access_tokens ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(access_token_from_row).collect()
    }

    /// Revokes the token and returns it as now stored; revoking twice keeps the first time.
    /// `None` if no token has that id.
    pub async fn revoke_access_token(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<AccessTokenRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE access_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
             RETURNING ",
            access_token_columns!()
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(access_token_from_row).transpose()
    }

    /// The ids of revoked tokens that have not expired at `now`: the list relays must check.
    /// An expired token is refused anyway, so it need not be listed.
    pub async fn revoked_access_tokens(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM access_tokens WHERE revoked_at IS NOT NULL AND expires_at > $1 \
             ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    /// Every signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, pkcs8, created_at FROM signing_keys ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let text: String = row.try_get("pkcs8")?;
                let pkcs8 = base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .map_err(|e| {
                        StoreError::Corrupt(format!(
                            "signing_keys {id:?}: pkcs8 is not base64: {e}"
                        ))
                    })?;
                Ok(SigningKeyRecord {
                    id,
                    pkcs8,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn insert_signing_key(&self, k: &SigningKeyRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO signing_keys (id, pkcs8, created_at) VALUES ($1, $2, $3)")
            .bind(&k.id)
            .bind(base64::engine::general_purpose::STANDARD.encode(&k.pkcs8))
            .bind(k.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores an admin token. A hash that exists already is an error.
    pub async fn insert_admin_token(&self, t: &AdminTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO admin_tokens (id, hash, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&t.id)
        .bind(&t.hash)
        .bind(&t.name)
        .bind(t.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The unrevoked admin token whose sha256 (lowercase hex) is `hash`.
    pub async fn admin_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, hash, name, created_at FROM admin_tokens \
             WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(AdminTokenRecord {
            id: row.try_get("id")?,
            hash: row.try_get("hash")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    /// How many admin tokens were ever made, revoked ones included, so that revoking the last
    /// one does not look like a fresh install that needs a first token.
    pub async fn admin_token_count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_tokens")
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("admin_tokens count {count}")))
    }

    pub async fn append_audit(&self, e: &AuditRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (id, at, actor, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.id)
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest `limit` entries, newest first. Entries within the same millisecond come in
    /// no meaningful order.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit \
             ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

/// Creates `path` empty and readable by its owner only, with its directory, if it is missing.
/// SQLite gives its `-wal` and `-shm` files the mode of the database file.
async fn create_private_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The directory holds the database and, beside it, the control plane's keys.
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .await
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
            })?;
    }
    match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
    {
        Ok(_) => {
            // The umask applied to `mode` can only remove bits; set the mode exactly anyway.
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).await
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn parse_generation(value: &str) -> Result<u64, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("meta {GENERATION:?}: {value:?} is not a number")))
}

fn to_json(column: &str, list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn from_json(what: &str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{what} is not a JSON list of strings: {e}")))
}

fn kind_str(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Tcp => "tcp",
        StreamKind::Http => "http",
    }
}

fn access_str(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Token => "token",
    }
}

fn relay_from_row(row: &SqliteRow) -> Result<RelayRecord, StoreError> {
    let name: String = row.try_get("name")?;
    let state: String = row.try_get("state")?;
    let state = RelayAdminState::parse(&state).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "relays {name:?}: state {state:?} is not active, drained or revoked"
        ))
    })?;
    let addresses: String = row.try_get("addresses")?;
    let addresses = from_json(&format!("relays {name:?}: addresses"), &addresses)?;
    let lat: Option<f64> = row.try_get("lat")?;
    let lon: Option<f64> = row.try_get("lon")?;
    let location = match (lat, lon) {
        (Some(lat), Some(lon)) => Some((lat, lon)),
        (None, None) => None,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "relays {name:?}: only one of lat and lon is set"
            )))
        }
    };
    Ok(RelayRecord {
        region: row.try_get("region")?,
        state,
        version: row.try_get("version")?,
        addresses,
        location,
        enrolled_at: row.try_get("enrolled_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        state_changed_at: row.try_get("state_changed_at")?,
        name,
    })
}

fn relay_token_from_row(row: &SqliteRow) -> Result<RelayTokenRecord, StoreError> {
    Ok(RelayTokenRecord {
        id: row.try_get("id")?,
        secret_hash: row.try_get("secret_hash")?,
        region: row.try_get("region")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        used_by: row.try_get("used_by")?,
    })
}

fn service_from_row(row: &SqliteRow) -> Result<ServiceRecord, StoreError> {
    let name: String = row.try_get("name")?;
    let kind: String = row.try_get("kind")?;
    let kind = match kind.as_str() {
        "tcp" => StreamKind::Tcp,
        "http" => StreamKind::Http,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "services {name:?}: kind {kind:?} is not tcp or http"
            )))
        }
    };
    let access: String = row.try_get("access")?;
    let access = match access.as_str() {
        "public" => Access::Public,
        "token" => Access::Token,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "services {name:?}: access {access:?} is not public or token"
            )))
        }
    };
    let hostnames: String = row.try_get("hostnames")?;
    let hostnames = from_json(&format!("services {name:?}: hostnames"), &hostnames)?;
    Ok(ServiceRecord {
        kind,
        backend: row.try_get("backend")?,
        hostnames,
        access,
        created_at: row.try_get("created_at")?,
        name,
    })
}

fn access_token_from_row(row: &SqliteRow) -> Result<AccessTokenRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let services: String = row.try_get("services")?;
    let services = from_json(&format!("access_tokens {id:?}: services"), &services)?;
    Ok(AccessTokenRecord {
        services,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        id,
    })
}

#[cfg(test)]
mod tests;
