//! docs/server.md's endpoint table and the OpenAPI document name the same endpoints: every
//! method and path the table lists is in the document, and every operation of the document is
//! in the table (`/openapi.json` itself excepted).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use tessera_server::http::ApiDoc;
use utoipa::OpenApi;

/// `(METHOD, path)` of each row of the "Endpoints" table.
fn documented() -> BTreeSet<(String, String)> {
    let doc = include_str!("../../../docs/server.md");
    let table = doc.split("### Endpoints").nth(1).unwrap().split("\n\n").nth(1).unwrap();
    let mut out = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cell = row[3..].split('`').next().unwrap();
        let (methods, path) = cell.rsplit_once(' ').unwrap();
        let path = path.split('?').next().unwrap();
        for m in methods.split(", ") {
            out.insert((m.to_owned(), path.to_owned()));
        }
    }
    out
}

/// `(METHOD, path)` of each operation of the OpenAPI document.
fn specified() -> BTreeSet<(String, String)> {
    let json = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in json["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_endpoint_table_and_the_openapi_document_agree() {
    let mut documented = documented();
    assert!(documented.remove(&("GET".into(), "/openapi.json".into())), "the table lists it");
    let specified = specified();
    assert!(documented.len() >= 40, "the table was parsed: {documented:?}");
    let only_doc: Vec<_> = documented.difference(&specified).collect();
    let only_spec: Vec<_> = specified.difference(&documented).collect();
    assert!(only_doc.is_empty(), "in docs/server.md, not in the OpenAPI document: {only_doc:?}");
    assert!(only_spec.is_empty(), "in the OpenAPI document, not in docs/server.md: {only_spec:?}");
}
