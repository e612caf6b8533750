-- Portability rule: every migration here must run unchanged on SQLite and on PostgreSQL, so that
-- a PostgreSQL store can embed this same directory. Use only TEXT, BIGINT and DOUBLE PRECISION
-- columns; TEXT primary keys holding random hex ids or names (no AUTOINCREMENT, no rowid); times
-- as BIGINT unix milliseconds; lists as JSON text; upserts as ON CONFLICT (...) DO UPDATE. No
-- PRAGMA here: connection settings belong to the code that opens the database. Never edit a
-- migration that has shipped; add the next numbered file instead.
--
-- Enumerations (relay state, service kind and access) are plain TEXT without a CHECK: SQLite can
-- only change a CHECK by rebuilding the table, and the store refuses values it cannot decode.

-- Small facts about the store itself, such as the generation of the pushed config.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Enrolled relays. state: 'active' | 'drained' | 'revoked'. addresses: JSON list of strings.
-- lat and lon are both NULL or both set.
CREATE TABLE relays (
    name             TEXT PRIMARY KEY,
    region           TEXT NOT NULL,
    state            TEXT NOT NULL,
    version          TEXT NOT NULL,
    addresses        TEXT NOT NULL,
    lat              DOUBLE PRECISION,
    lon              DOUBLE PRECISION,
    enrolled_at      BIGINT NOT NULL,
    last_seen_at     BIGINT,
    state_changed_at BIGINT NOT NULL
);

-- Certificates issued to relays, by serial number (lowercase hex), so that a connecting
-- certificate maps to the relay it was issued to.
CREATE TABLE relay_certs (
    serial    TEXT PRIMARY KEY,
    relay     TEXT NOT NULL REFERENCES relays (name),
    issued_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);
CREATE INDEX relay_certs_relay ON relay_certs (relay);
CREATE INDEX relay_certs_not_after ON relay_certs (not_after);

-- One-time relay enrolment tokens. Only sha256(secret) in hex is kept. used_by is the relay name
-- the token enrolled; there is no foreign key because a token is redeemed before its relay exists.
CREATE TABLE relay_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    region      TEXT NOT NULL,
    name        TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);

-- Services the relays expose. kind: 'tcp' | 'http'. access: 'public' | 'token'.
-- hostnames: JSON list of strings.
CREATE TABLE services (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    backend    TEXT NOT NULL,
    hostnames  TEXT NOT NULL,
    access     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Service access tokens issued (the token text itself is never stored). services: JSON list.
CREATE TABLE access_tokens (
    id         TEXT PRIMARY KEY,
    services   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX access_tokens_created_at ON access_tokens (created_at);
CREATE INDEX access_tokens_revoked ON access_tokens (expires_at) WHERE revoked_at IS NOT NULL;

-- Ed25519 keys that sign access tokens: PKCS#8 document, base64 (standard alphabet, padded).
CREATE TABLE signing_keys (
    id         TEXT PRIMARY KEY,
    pkcs8      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Admin API bearer tokens. hash: sha256 of the token text in lowercase hex.
CREATE TABLE admin_tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Who changed what through the admin API. detail: a JSON document.
CREATE TABLE audit (
    id     TEXT PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
