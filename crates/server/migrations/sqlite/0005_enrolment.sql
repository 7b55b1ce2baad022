-- v5 (SQLite): single-use enrolment challenges (proof of possession for card and terminal
-- certificates). A challenge is deleted when used; expired ones are swept on the next use.
CREATE TABLE enrolment_challenges (
    issuer_id TEXT NOT NULL REFERENCES issuers(id),
    challenge TEXT NOT NULL,
    token_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, challenge)
);
