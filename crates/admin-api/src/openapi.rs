//! The OpenAPI 3.1 document. Each handler's `#[utoipa::path]` says what only it can
//! answer (its success, 404, 409, 422...); [`finish`] adds what follows from the shared
//! machinery, so that it cannot be forgotten on one route: the security requirements,
//! 401 and 403 on every authenticated route, 400 where a path, query or body can fail to
//! parse, 413 and 415 where there is a body, 422 for JSON bodies, and the
//! `application/problem+json` schema of every error response.

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::problem::{PROBLEM_JSON, Problem};

/// Security scheme names.
const BEARER: &str = "bearer";
const MTLS: &str = "adminCertificate";

/// The document's skeleton: info and security schemes.
pub(crate) fn base() -> OpenApi {
    let mut components = Components::new();
    components.security_schemes.insert(
        BEARER.to_owned(),
        RefOr::T(SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer))),
    );
    components.security_schemes.insert(
        MTLS.to_owned(),
        RefOr::T(SecurityScheme::MutualTls {
            description: Some(
                "A client certificate whose SPIFFE ID is granted `admin:write` (admin) or \
                 `admin:read` (auditor) in namespace `*` on pools `*`"
                    .to_owned(),
            ),
            deprecated: None,
            extensions: None,
        }),
    );
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("rsp admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Namespaces, pools, trust domains, grants, revocations, tokens and the audit \
                     log of an rsp registrar. Errors are RFC 9457 `application/problem+json`.",
                ))
                .build(),
        )
        .components(Some(components))
        .build()
}

fn problem_response(description: &str, unauthenticated: bool) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(Problem::name())))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, content);
    if unauthenticated {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .description(Some("`Bearer realm=\"rsp\"`"))
                .build(),
        );
    }
    RefOr::T(response.build())
}

fn add_missing(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| problem_response(description, status == "401"));
}

fn finish_operation(op: &mut Operation, write: bool) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
    if public {
        op.security = Some(vec![SecurityRequirement::default()]);
    } else {
        op.security = Some(vec![
            SecurityRequirement::new::<_, _, &str>(BEARER, []),
            SecurityRequirement::new::<_, _, &str>(MTLS, []),
        ]);
        add_missing(op, "401", "Missing or refused credentials");
        add_missing(op, "403", "The caller's role does not allow this");
    }
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let json_body = op.request_body.as_ref().map(|b| match b {
        RefOr::T(body) => body.content.contains_key("application/json"),
        RefOr::Ref(_) => false,
    });
    if has_params || json_body.is_some() {
        add_missing(op, "400", "Malformed path, query or body");
    }
    if let Some(json) = json_body {
        add_missing(op, "413", "Request body too large");
        add_missing(op, "415", "Wrong Content-Type");
        if json {
            add_missing(op, "422", "The body's fields are wrong, missing or unknown");
        }
    }
    if write && !public {
        // Refused before the handler runs (auth.rs): the store does not answer, or the
        // data directory is below its free-space watermark.
        add_missing(
            op,
            "503",
            "The store does not answer: writes are refused until it is back",
        );
        add_missing(
            op,
            "507",
            "The data directory is below its free-space watermark",
        );
    }
    // Error responses declared by a handler without a body get the problem schema.
    for (status, response) in &mut op.responses.responses {
        if let RefOr::T(response) = response
            && status.starts_with(['4', '5'])
            && response.content.is_empty()
            && let RefOr::T(filled) = problem_response(&response.description, status == "401")
        {
            *response = filled;
        }
    }
}

/// Completes the document generated from the routes (see the module docs).
pub(crate) fn finish(mut doc: OpenApi) -> OpenApi {
    for item in doc.paths.paths.values_mut() {
        for (op, write) in [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ] {
            if let Some(op) = op {
                finish_operation(op, write);
            }
        }
    }
    let components = doc.components.get_or_insert_with(Components::new);
    components
        .schemas
        .insert(Problem::name().into_owned(), Problem::schema());
    components.schemas.extend(crate::schema::components());
    // serde's `deny_unknown_fields` on an internally tagged enum refuses unknown fields in
    // every variant; utoipa does not carry it over to the variants' schemas.
    if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut("NewRevocation") {
        for variant in &mut one_of.items {
            if let RefOr::T(Schema::Object(object)) = variant {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
    // A grant's label rules are a set (a rule given twice is refused, 422): say so.
    if let Some(RefOr::T(Schema::Object(grant))) = components.schemas.get_mut("NewGrant")
        && let Some(RefOr::T(Schema::Array(labels))) = grant.properties.get_mut("labels")
    {
        labels.unique_items = true;
    }
    doc
}
