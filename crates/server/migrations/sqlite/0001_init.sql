-- tessera server schema v1 (SQLite): issuers with their PKI, admin tokens, cards,
-- the hash-chained audit log and its signed checkpoints, server keys.
CREATE TABLE server_keys (
    purpose TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    sealed_private BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE issuers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    ca_cert BLOB NOT NULL,
    ca_key_sealed BLOB NOT NULL,
    signing_cert BLOB NOT NULL,
    signing_key_sealed BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    crl_number BIGINT NOT NULL,
    crl BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE certificates (
    issuer_id TEXT NOT NULL REFERENCES issuers(id),
    serial TEXT NOT NULL,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    der BLOB NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (issuer_id, serial)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    issuer_id TEXT REFERENCES issuers(id),
    superuser BIGINT NOT NULL,
    label TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE cards (
    issuer_id TEXT NOT NULL REFERENCES issuers(id),
    card_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (issuer_id, card_id)
);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    issuer_id TEXT,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash BLOB NOT NULL,
    at BIGINT NOT NULL,
    signature BLOB NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
