-- v2 (SQLite): APDU tunnel sessions and per-card counters (clone/rollback detection).
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    issuer_id TEXT NOT NULL REFERENCES issuers(id),
    card_id TEXT,
    live_card TEXT UNIQUE,
    status TEXT NOT NULL,
    step BIGINT NOT NULL,
    state TEXT NOT NULL,
    last_request BLOB,
    last_answer TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (status, expires_at);
CREATE TABLE card_counters (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, card_id, name),
    FOREIGN KEY (issuer_id, card_id) REFERENCES cards (issuer_id, card_id)
);
ALTER TABLE cards ADD COLUMN flagged TEXT;
