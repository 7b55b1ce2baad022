-- tessera server schema v1 (PostgreSQL): issuers with their PKI, admin tokens, cards,
-- the hash-chained audit log and its signed checkpoints, server keys.
CREATE TABLE server_keys (
    purpose TEXT PRIMARY KEY,
    public_key BYTEA NOT NULL,
    sealed_private BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE issuers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    ca_cert BYTEA NOT NULL,
    ca_key_sealed BYTEA NOT NULL,
    signing_cert BYTEA NOT NULL,
    signing_key_sealed BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    crl_number BIGINT NOT NULL,
    crl BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE certificates (
    issuer_id TEXT NOT NULL REFERENCES issuers(id),
    serial TEXT NOT NULL,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    der BYTEA NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (issuer_id, serial)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BYTEA NOT NULL UNIQUE,
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
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL,
    at BIGINT NOT NULL,
    signature BYTEA NOT NULL
);
CREATE FUNCTION tessera_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION tessera_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION tessera_append_only();
