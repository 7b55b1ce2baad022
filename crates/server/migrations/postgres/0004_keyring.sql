-- v4 (PostgreSQL): the keyring service (issue 4). One row per card with a keyring: the server's
-- record of its hierarchical authentication keys (current keys, an unconfirmed renewal),
-- sealed whole under the master key; the versions the card last reported at a sync (public);
-- and each issuer's renewal policy.
CREATE TABLE keyring_cards (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    sealed_record BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    card_report TEXT,
    reported_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, card_id),
    FOREIGN KEY (issuer_id, card_id) REFERENCES cards (issuer_id, card_id)
);
CREATE TABLE keyring_policies (
    issuer_id TEXT PRIMARY KEY REFERENCES issuers(id),
    policy TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- A keyring generated for an issuance in flight (keyed by its tunnel session), moved to
-- keyring_cards when the card confirms its personalisation.
CREATE TABLE keyring_issuances (
    session_id TEXT PRIMARY KEY,
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    sealed_record BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
