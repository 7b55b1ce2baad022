-- v8 (SQLite): the vault key service (issue 7, seed 003 Figs. 28-31). Per issuer, whether the
-- service escrows the private keys it generates; per card, the key pair it provisioned: the
-- public key, the private key sealed under the master key while it waits for delivery (and
-- afterwards only under an escrow policy), its state (queued, delivered, refused) and times.
CREATE TABLE vault_policies (
    issuer_id TEXT PRIMARY KEY REFERENCES issuers (id),
    escrow BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE vault_keys (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    public_key BLOB NOT NULL,
    sealed_private BLOB,
    master_key_id TEXT,
    escrow BIGINT NOT NULL,
    status TEXT NOT NULL,
    note TEXT,
    queued_at BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (issuer_id, card_id),
    FOREIGN KEY (issuer_id, card_id) REFERENCES cards (issuer_id, card_id)
);
