-- v3 (SQLite): each issued card's SCP03 key sets, sealed under the master key.
CREATE TABLE card_keys (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    kvn BIGINT NOT NULL,
    sealed_keys BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, card_id, kvn),
    FOREIGN KEY (issuer_id, card_id) REFERENCES cards (issuer_id, card_id)
);
