//! The PostgreSQL connection (`db/pg/wire.rs`, the protocol spoken directly): how it logs in,
//! over TCP and the Unix socket, and what becomes of a connection after a call cut short, a
//! server that closed it, or a value it cannot send or read. PostgreSQL only.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{PASSWORD_ROLES, TestDb, cluster_socket_dir};
use tessera_server::db::{Db, DbError, DbLocation, Row, Value};

/// The test cluster's address (`host:port`) and a fresh database's name.
async fn cluster() -> Option<(TestDb, String, String)> {
    let db = TestDb::postgres().await?;
    let DbLocation::Postgres(url) = &db.location else { unreachable!() };
    let rest = url.strip_prefix("postgres://postgres@").unwrap();
    let (addr, name) = rest.split_once('/').unwrap();
    let (addr, name) = (addr.to_owned(), name.to_owned());
    Some((db, addr, name))
}

/// Runs `sql` as the cluster's superuser, outside the code under test.
async fn admin(addr: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(
        &format!("postgres://postgres@{addr}/postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}

/// The one row of a query, in a transaction of its own.
async fn one(db: &Db, sql: &str, params: &[Value]) -> Result<Row, DbError> {
    let mut tx = db.begin().await?;
    let row = tx.query_opt(sql, params).await?.unwrap();
    tx.commit().await?;
    Ok(row)
}

#[tokio::test]
async fn passwords_are_checked_by_every_method_the_server_asks_for() {
    let Some((_db, addr, name)) = cluster().await else { return };
    // A role per method (pg_hba.conf asks each for its own); MD5 needs the password stored as
    // MD5, the others take PostgreSQL's default (SCRAM).
    let mut setup = String::new();
    for (role, method) in PASSWORD_ROLES {
        let encryption = if method == "md5" { "md5" } else { "scram-sha-256" };
        setup += &format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             SET password_encryption = '{encryption}';
             ALTER ROLE {role} PASSWORD 'right horse';"
        );
    }
    admin(&addr, &setup).await;
    for (role, method) in PASSWORD_ROLES {
        let url = |password: &str| {
            DbLocation::Postgres(format!("postgres://{role}{password}@{addr}/{name}"))
        };
        let db = Db::open_unmigrated(&url(":right%20horse")).await.unwrap();
        let who = one(&db, "SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(who.text(0).unwrap(), role, "{method}");

        let wrong = Db::open_unmigrated(&url(":wrong")).await.unwrap();
        match one(&wrong, "SELECT 1::bigint", &[]).await {
            Err(DbError::Unavailable(m)) => {
                assert!(m.contains("28P01") && m.contains("password authentication failed"), "{m}")
            }
            other => panic!("{method}, wrong password: {other:?}"),
        }
        let none = Db::open_unmigrated(&url("")).await.unwrap();
        match one(&none, "SELECT 1::bigint", &[]).await {
            Err(DbError::Unavailable(m)) => assert!(m.contains("asks for a password"), "{m}"),
            other => panic!("{method}, no password: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_unix_socket_is_a_transport_too() {
    let Some((_db, addr, name)) = cluster().await else { return };
    let port = addr.rsplit_once(':').unwrap().1;
    let dir = cluster_socket_dir().display().to_string().replace('/', "%2F");
    let db = Db::open(&DbLocation::Postgres(format!("postgres://postgres@{dir}:{port}/{name}")))
        .await
        .unwrap();
    // No client address: the connection came over the Unix socket, not TCP.
    let unix = one(&db, "SELECT inet_client_addr() IS NULL", &[]).await.unwrap();
    assert_eq!(unix.int(0).unwrap(), 1);
}

#[tokio::test]
async fn a_call_cut_short_closes_its_connection() {
    let Some(test) = TestDb::postgres().await else { return };
    let db = Db::open(&test.location).await.unwrap();
    let first = one(&db, "SELECT pg_backend_pid()", &[]).await.unwrap().int(0).unwrap();

    // The only connection, taken by a transaction whose call is dropped half way (a request's
    // time limit does this): its answer is still on the way.
    let mut tx = db.begin().await.unwrap();
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        tx.query("SELECT pg_sleep(1), 7::bigint", &[]),
    )
    .await;
    assert!(cut.is_err(), "the call was cut short");
    drop(tx);

    // The next transaction must not read the cut call's answer as its own: it gets a new
    // connection, and its own answer.
    let answer = one(&db, "SELECT $1::bigint + 1", &[Value::Int(41)]).await.unwrap();
    assert_eq!(answer.int(0).unwrap(), 42);
    let second = one(&db, "SELECT pg_backend_pid()", &[]).await.unwrap().int(0).unwrap();
    assert_ne!(first, second, "a new connection");
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_replaced() {
    let Some((test, addr, _)) = cluster().await else { return };
    let db = Db::open(&test.location).await.unwrap();
    let pid = one(&db, "SELECT pg_backend_pid()", &[]).await.unwrap().int(0).unwrap();
    // The server ends the pooled, idle connection (as at its shutdown or restart).
    admin(&addr, &format!("SELECT pg_terminate_backend({pid}, 5000)")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = one(&db, "SELECT pg_backend_pid()", &[]).await.unwrap().int(0).unwrap();
    assert_ne!(again, pid, "a new connection, and no error");
}

#[tokio::test]
async fn values_it_cannot_send_or_read_are_refused_and_change_nothing() {
    let Some(test) = TestDb::postgres().await else { return };
    let db = Db::open(&test.location).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.batch("CREATE TABLE typed_t (id BIGINT PRIMARY KEY, note TEXT)").await.unwrap();
    tx.commit().await.unwrap();
    let insert = "INSERT INTO typed_t (id, note) VALUES ($1, $2)";

    // Text where the server wants a BIGINT: refused before anything is sent.
    let mut tx = db.begin().await.unwrap();
    tx.execute(insert, &[Value::Int(1), Value::Text("one".into())]).await.unwrap();
    let refused = tx.execute(insert, &[Value::Text("2".into()), Value::Null]).await;
    match refused {
        Err(DbError::Data(m)) => assert!(m.contains("parameter $1"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(tx.commit().await.is_err(), "the transaction is lost with its call");

    // A column of a type the schemas never use: a clear error, and the next transaction reads
    // its own answers.
    let unreadable = one(&db, "SELECT now()", &[]).await;
    match unreadable {
        Err(DbError::Data(m)) => assert!(m.contains("unsupported column type 1184"), "{m}"),
        other => panic!("{other:?}"),
    }
    let rows = one(&db, "SELECT COUNT(*) FROM typed_t", &[]).await.unwrap();
    assert_eq!(rows.int(0).unwrap(), 0, "the refused transaction left nothing");
    let note = one(&db, "SELECT $1::text || '!'", &[Value::Text("in step".into())]).await;
    assert_eq!(note.unwrap().text(0).unwrap(), "in step!");
}

#[tokio::test]
async fn a_call_the_server_ends_says_why_and_asks_for_a_retry() {
    let Some((test, addr, _)) = cluster().await else { return };
    let db = Db::open(&test.location).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let pid = tx.query_opt("SELECT pg_backend_pid()", &[]).await.unwrap().unwrap().int(0).unwrap();
    let call = tokio::spawn(async move { tx.query("SELECT pg_sleep(5)", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin(&addr, &format!("SELECT pg_terminate_backend({pid})")).await;
    match call.await.unwrap() {
        // 57P01: admin_shutdown, the server's message before it closed the connection.
        Err(DbError::Unavailable(m)) => assert!(m.contains("57P01"), "{m}"),
        other => panic!("{other:?}"),
    }
}
