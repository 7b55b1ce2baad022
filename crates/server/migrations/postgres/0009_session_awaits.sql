-- v9 (PostgreSQL): what a session's next exchange answers, in columns the database can key
-- reads on (docs/decisions.md, "Update sync reads with the session"): the nonce of the
-- DEVICE AUTHENTICATE challenge out, and the sequences of the first and last update packages
-- out. The exchange's first round trip then takes the challenge and reads the card and its
-- packages together with the session row.
ALTER TABLE sessions ADD COLUMN challenge BYTEA;
ALTER TABLE sessions ADD COLUMN batch_first BIGINT;
ALTER TABLE sessions ADD COLUMN batch_last BIGINT;
