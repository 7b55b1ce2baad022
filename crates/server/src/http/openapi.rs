//! The OpenAPI document, generated from the handlers' annotations (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::admin::*;
use super::enrolment::*;
use super::keyring::*;
use super::metrics::__path_handler as __path_metrics;
use super::tunnel::{__path_create_session, __path_exchange};
use super::update::*;
use super::{__path_healthz, Health};

/// The server's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "tessera server", description = "Card management: issuers, PKI, cards, APDU tunnel, audit."),
    paths(
        healthz, metrics, create_session, exchange, crl,
        list_issuers, create_issuer, get_issuer, list_certificates, revoke_certificate,
        list_cards, register_card, get_card, revoke_card, start_issuance,
        list_tokens, create_token, revoke_token,
        enrolment_challenge, enrol,
        audit_entries, verify_audit, checkpoint,
        keyring_status, keyring_compromised, keyring_resync, keyring_policy, set_keyring_policy,
        queue_update, list_updates, issuer_list, create_update_session,
        schedule_update, list_schedules, unschedule_update, set_legacy_static,
        crate::vault::http::provision_vault_key, crate::vault::http::get_vault_key,
        crate::vault::http::vault_policy, crate::vault::http::set_vault_policy,
    ),
    components(schemas(Health)),
    modifiers(&BearerAuth),
    tags(
        (name = "tunnel", description = "The terminal relays APDUs between card and server"),
        (name = "admin", description = "Bearer-token administration, scoped to one issuer"),
        (name = "pki", description = "Public PKI artefacts"),
        (name = "ops", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document (JSON).
pub async fn handler() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
