//! Admin API bearer tokens: `rsp_<id>_<secret>`.
//!
//! `<id>` is 16 lowercase hex digits (64 random bits), stored in clear as the row key, so
//! that verification looks up one row and computes one argon2id hash. `<secret>` is 64
//! lowercase hex digits (256 random bits); only its argon2id hash (PHC string) is stored,
//! never the token. The token is returned once, by [`create_token`].

use std::fmt;
use std::str::FromStr;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use super::{Conn, Error, Result, check_text, i64_to_ms, ms_to_i64, with_conn};

const PREFIX: &str = "rsp_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// Length of a well-formed token: `rsp_` + 16 + `_` + 64.
const TOKEN_LEN: usize = PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES;

/// What a token may do through the admin API (issue 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Everything.
    Admin,
    /// Pools, pool elements, revocations.
    Operator,
    /// Read-only, including the audit log.
    Auditor,
}

impl Role {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            "auditor" => Ok(Self::Auditor),
            _ => Err(Error::Invalid {
                what: "role",
                reason: "must be admin, operator or auditor",
            }),
        }
    }
}

/// Why a token was refused. The admin API answers 401 for all of them and audits the
/// reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRejection {
    /// Not of the form `rsp_<16 hex>_<64 hex>`.
    Malformed,
    /// No token has this id.
    Unknown,
    /// The secret does not match.
    Mismatch,
    /// The token was revoked.
    Revoked,
    /// The token expired.
    Expired,
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown token id",
            Self::Mismatch => "wrong secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        })
    }
}

/// A token's stored metadata (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The public id (the `<id>` of `rsp_<id>_<secret>`).
    pub id: String,
    /// A label chosen by whoever created it.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was created (unix ms).
    pub created_ms: u64,
    /// When it expires (unix ms), if ever.
    pub expires_ms: Option<u64>,
    /// When it was revoked (unix ms), if it was.
    pub revoked_ms: Option<u64>,
}

/// A freshly created token: show [`NewToken::token`] once, then drop it.
pub struct NewToken {
    /// Its metadata, as stored.
    pub info: TokenInfo,
    /// The bearer token `rsp_<id>_<secret>`.
    pub token: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The argon2id cost of new token hashes. Verification reads the cost from the stored
/// hash, so a change applies to new tokens only.
#[derive(Clone, Debug)]
pub struct TokenHasher {
    params: Params,
}

impl Default for TokenHasher {
    /// argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP minimum).
    fn default() -> Self {
        Self {
            params: Params::DEFAULT,
        }
    }
}

impl TokenHasher {
    /// A very cheap cost (8 KiB, 1 pass) for tests only: never use it for real tokens.
    pub fn insecure_fast_for_tests() -> Self {
        Self {
            params: Params::new(8, 1, 1, None).expect("8 KiB, 1 pass, 1 lane are valid"),
        }
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    role: String,
    created_ms: i64,
    expires_ms: Option<i64>,
    revoked_ms: Option<i64>,
}

impl TryFrom<TokenRow> for TokenInfo {
    type Error = Error;
    fn try_from(row: TokenRow) -> Result<Self> {
        let role = Role::from_str(&row.role).map_err(|_| Error::Corrupt {
            table: "admin_tokens",
            id: row.id.clone(),
            reason: "unknown role",
        })?;
        let ms = |t: Option<i64>| t.map(|t| i64_to_ms(t, "admin_tokens", &row.id)).transpose();
        Ok(Self {
            created_ms: i64_to_ms(row.created_ms, "admin_tokens", &row.id)?,
            expires_ms: ms(row.expires_ms)?,
            revoked_ms: ms(row.revoked_ms)?,
            role,
            name: row.name,
            id: row.id,
        })
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    // The OS generator, through the one argon2 already uses for salts (16 bytes a call).
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let salt = argon2::password_hash::try_generate_salt()
            .map_err(|_| Error::Crypto("the OS random generator failed"))?;
        chunk.copy_from_slice(&salt[..chunk.len()]);
    }
    Ok(out)
}

/// Argon2 is slow on purpose: hash off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Crypto("hashing task failed"))
}

/// Creates a token with `role`, valid until `expires_ms` (or forever). Only the hash of
/// its secret is stored; the token itself is in the returned [`NewToken`] and nowhere
/// else.
pub async fn create_token<C: Conn + ?Sized>(
    conn: &mut C,
    hasher: &TokenHasher,
    name: &str,
    role: Role,
    expires_ms: Option<u64>,
    now_ms: u64,
) -> Result<NewToken> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::Invalid {
            what: "token name",
            reason: "must be 1 to 128 bytes",
        });
    }
    check_text(name, "token name")?;
    let now = ms_to_i64(now_ms, "time")?;
    let expires = expires_ms.map(|t| ms_to_i64(t, "expiry")).transpose()?;
    if expires.is_some_and(|e| e <= now) {
        return Err(Error::Invalid {
            what: "expiry",
            reason: "is not in the future",
        });
    }
    super::limits::check_room(&mut *conn, super::limits::Table::ActiveTokens, now_ms).await?;
    let id = hex::encode(random_bytes::<ID_BYTES>()?);
    let secret = hex::encode(random_bytes::<SECRET_BYTES>()?);
    let argon2 = hasher.argon2();
    let secret_for_hash = secret.clone();
    let hash = blocking(move || {
        argon2
            .hash_password(secret_for_hash.as_bytes())
            .map(|h| h.to_string())
    })
    .await?
    .map_err(|_| Error::Crypto("argon2id hashing failed"))?;
    let row: TokenRow = with_conn!(
        conn,
        "INSERT INTO admin_tokens (id, name, role, hash, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         RETURNING id, name, role, created_ms, expires_ms, revoked_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(&id)
            .bind(name)
            .bind(role.as_str())
            .bind(hash)
            .bind(now)
            .bind(expires)
            .fetch_one(c)
            .await
    )?;
    Ok(NewToken {
        token: format!("{PREFIX}{id}_{secret}"),
        info: row.try_into()?,
    })
}

/// Splits `rsp_<id>_<secret>`, checking lengths and alphabet.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    if token.len() != TOKEN_LEN {
        return None;
    }
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (id.len() == 2 * ID_BYTES
        && lower_hex(id)
        && secret.len() == 2 * SECRET_BYTES
        && lower_hex(secret))
    .then_some((id, secret))
}

/// Checks a bearer token: one row lookup by id and one argon2id verification. Returns the
/// token's metadata, or [`Error::Token`] with the reason it was refused.
pub async fn verify_token<C: Conn + ?Sized>(
    conn: &mut C,
    token: &str,
    now_ms: u64,
) -> Result<TokenInfo> {
    let (id, secret) = parse_token(token).ok_or(Error::Token(TokenRejection::Malformed))?;
    let row: Option<HashRow> = with_conn!(
        conn,
        "SELECT id, name, role, hash, created_ms, expires_ms, revoked_ms FROM admin_tokens
         WHERE id = ?1",
        |c, sql| sqlx::query_as(sql).bind(id).fetch_optional(c).await
    )?;
    // An unknown id answers faster than a wrong secret. That reveals only whether a
    // 64-bit id exists, which does not help guess the 256-bit secret.
    let row = row.ok_or(Error::Token(TokenRejection::Unknown))?;
    let hash = row.hash;
    let secret = secret.to_owned();
    let matches = blocking(move || {
        // The cost comes from the stored PHC string, not from a `TokenHasher`.
        Argon2::default()
            .verify_password(secret.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await?;
    if !matches {
        return Err(Error::Token(TokenRejection::Mismatch));
    }
    let info = TokenInfo::try_from(TokenRow {
        id: row.id,
        name: row.name,
        role: row.role,
        created_ms: row.created_ms,
        expires_ms: row.expires_ms,
        revoked_ms: row.revoked_ms,
    })?;
    // Checked after the hash, so that a revoked or expired token is reported as such only
    // to whoever holds its secret.
    if info.revoked_ms.is_some() {
        return Err(Error::Token(TokenRejection::Revoked));
    }
    if info.expires_ms.is_some_and(|e| e <= now_ms) {
        return Err(Error::Token(TokenRejection::Expired));
    }
    Ok(info)
}

#[derive(sqlx::FromRow)]
struct HashRow {
    id: String,
    name: String,
    role: String,
    hash: String,
    created_ms: i64,
    expires_ms: Option<i64>,
    revoked_ms: Option<i64>,
}

/// One token's metadata by id (no secret needed: for re-checking a caller whose token was
/// verified already, e.g. a long-lived watch stream); `None` if there is none.
pub async fn token_info<C: Conn + ?Sized>(conn: &mut C, id: &str) -> Result<Option<TokenInfo>> {
    let row: Option<TokenRow> = with_conn!(
        conn,
        "SELECT id, name, role, created_ms, expires_ms, revoked_ms FROM admin_tokens
         WHERE id = ?1",
        |c, sql| sqlx::query_as(sql).bind(id).fetch_optional(c).await
    )?;
    row.map(TokenInfo::try_from).transpose()
}

/// Every token's metadata, by creation time.
pub async fn list_tokens<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<TokenInfo>> {
    let rows: Vec<TokenRow> = with_conn!(
        conn,
        "SELECT id, name, role, created_ms, expires_ms, revoked_ms FROM admin_tokens
         ORDER BY created_ms, id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(TokenInfo::try_from).collect()
}

/// Revokes a token (it stays listed, marked revoked). [`Error::NotFound`] if there is no
/// token with this id; revoking twice keeps the first time.
pub async fn revoke_token<C: Conn + ?Sized>(
    conn: &mut C,
    id: &str,
    now_ms: u64,
) -> Result<TokenInfo> {
    let now = ms_to_i64(now_ms, "time")?;
    let row: Option<TokenRow> = with_conn!(
        conn,
        "UPDATE admin_tokens SET revoked_ms = coalesce(revoked_ms, ?2) WHERE id = ?1
         RETURNING id, name, role, created_ms, expires_ms, revoked_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(id)
            .bind(now)
            .fetch_optional(c)
            .await
    )?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "token",
            key: id.to_owned(),
        }),
    }
}
