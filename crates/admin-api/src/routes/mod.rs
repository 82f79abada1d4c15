//! The resources of `/v1`, one module each, plus health, metrics and the OpenAPI document.
//! Handlers take their permission as an [`crate::auth::Authorized`] argument, write through
//! [`crate::state::App::finish`] (change and audit record in one transaction), and call
//! the registrar only after the commit: the registrar audits through the same database,
//! and holding the write lock while it waits for its own commits would stall both.

pub(crate) mod audit;
pub(crate) mod audit_archives;
pub(crate) mod default_namespaces;
pub(crate) mod grants;
pub(crate) mod health;
pub(crate) mod namespaces;
pub(crate) mod peers;
pub(crate) mod pools;
pub(crate) mod revocations;
pub(crate) mod tokens;
pub(crate) mod trust_domains;
pub(crate) mod watch;

use crate::problem::{ApiError, ProblemKind};

/// The `application/json` media type.
pub(crate) const JSON: &str = "application/json";

/// Prefix of a pool handle written in hex.
pub const HEX_PREFIX: &str = "hex:";

/// A pool handle as the API writes it: as text when it is UTF-8 without control or
/// invisible formatting characters (a handle must not display as another one) and does not
/// start with `hex:`, else `hex:` and its bytes in lowercase hex.
/// [`crate::PoolView::handle`] must use this form.
pub fn handle_text(handle: &[u8]) -> String {
    match std::str::from_utf8(handle) {
        Ok(text) if is_plain(text) => text.to_owned(),
        _ => format!("{HEX_PREFIX}{}", hex::encode(handle)),
    }
}

/// Whether a handle's text is written as itself: no `hex:` prefix, no control or invisible
/// formatting character.
fn is_plain(text: &str) -> bool {
    !text.starts_with(HEX_PREFIX)
        && !text
            .chars()
            .any(|c| c.is_control() || identity::text::is_invisible(c))
}

/// Reads a pool handle written as [`handle_text`] writes it: 1 to 32 bytes. A handle with
/// control or invisible characters is accepted only in its `hex:` form, the one the API
/// writes it in (and the one the OpenAPI pattern states).
pub fn parse_handle(text: &str) -> Option<Vec<u8>> {
    let bytes = match text.strip_prefix(HEX_PREFIX) {
        Some(digits) => hex::decode(digits).ok()?,
        None if is_plain(text) => text.as_bytes().to_vec(),
        None => return None,
    };
    (1..=store::db::MAX_POOL_HANDLE_LEN)
        .contains(&bytes.len())
        .then_some(bytes)
}

/// The namespace of a path: a name that cannot exist is simply not found.
pub(crate) fn path_namespace(name: &str) -> Result<identity::Namespace, ApiError> {
    identity::Namespace::new(name)
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, format!("no namespace {name:?}")))
}

/// The pool handle of a path: a handle that cannot exist is simply not found.
pub(crate) fn path_handle(namespace: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    parse_handle(text).ok_or_else(|| {
        ApiError::new(
            ProblemKind::NotFound,
            format!("no pool {text:?} in namespace {namespace:?}"),
        )
    })
}

/// Fails with 404 unless `namespace` is stored.
pub(crate) async fn require_namespace<C: store::db::Conn + ?Sized>(
    conn: &mut C,
    namespace: &str,
) -> Result<(), ApiError> {
    path_namespace(namespace)?;
    match store::db::get_namespace(conn, namespace).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ProblemKind::NotFound,
            format!("no namespace {namespace:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_handles_round_trip_as_text_or_hex() {
        for handle in [&b"echo"[..], b"\x00\xff", b"hex:x", b"a\nb", &[b'x'; 32]] {
            assert_eq!(parse_handle(&handle_text(handle)).as_deref(), Some(handle));
        }
        assert_eq!(handle_text(b"echo"), "echo");
        assert_eq!(handle_text(b"\x00\xff"), "hex:00ff");
        assert_eq!(parse_handle(""), None);
        assert_eq!(parse_handle("hex:"), None);
        assert_eq!(parse_handle("hex:0"), None);
        assert_eq!(parse_handle(&"x".repeat(33)), None);
        // Control and invisible characters only in hex, as the API writes them.
        assert_eq!(parse_handle("\u{4}\u{2}"), None);
        assert_eq!(parse_handle("a\nb"), None);
        assert_eq!(parse_handle("ec\u{202e}ho"), None);
        assert_eq!(parse_handle("hex:0402").as_deref(), Some(&b"\x04\x02"[..]));
    }
}
