-- v7 (SQLite): scheduled changes of a card's data object (issue 5, ¶0045-0046): every
-- every_secs a new value is generated (generator, e.g. 'password:20'), sealed to the card and
-- queued at the card's first sync once next_due has passed; the plaintext is never stored.
-- legacy_static: the static authenticator (claim 10) of a card personalised with one,
-- accepted only through tessera sync --legacy-static-auth.
CREATE TABLE update_schedules (
    issuer_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    object_name TEXT NOT NULL,
    every_secs BIGINT NOT NULL,
    generator TEXT NOT NULL,
    sealed BIGINT NOT NULL,
    free_read BIGINT NOT NULL,
    next_due BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, card_id, object_name),
    FOREIGN KEY (issuer_id, card_id) REFERENCES update_cards (issuer_id, card_id)
);
ALTER TABLE update_cards ADD COLUMN legacy_static BLOB;
