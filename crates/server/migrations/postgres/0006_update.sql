-- v6 (PostgreSQL): the update service (issue 5). A card registered at issuance with its update key
-- (HPKE, vouched for by the device key over key_nonce), its device certificate and its sequence
-- counter; the packages
-- queued for it, sealed and signed at queue time (no plaintext is ever stored), delivered only
-- on a valid receipt; the single-use device-authentication challenges.
CREATE TABLE update_cards (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    update_key BYTEA NOT NULL,
    key_nonce BYTEA NOT NULL,
    device_cert BYTEA NOT NULL,
    next_sequence BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, card_id),
    FOREIGN KEY (issuer_id, card_id) REFERENCES cards (issuer_id, card_id)
);
CREATE TABLE update_packages (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    object_name TEXT NOT NULL,
    mode TEXT NOT NULL,
    package BYTEA NOT NULL,
    queued_at BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (issuer_id, card_id, sequence),
    FOREIGN KEY (issuer_id, card_id) REFERENCES update_cards (issuer_id, card_id)
);
CREATE TABLE update_challenges (
    nonce BYTEA PRIMARY KEY,
    expires BIGINT NOT NULL
);
