//! How many rows each control-plane table takes.
//!
//! Why limits: every registrar holds the whole control plane in memory, and in a fleet
//! re-reads all of it on every change and every `--fleet-resync-secs`
//! ([`super::Store::snapshot`]); the admin API lists it. An unbounded table would let one
//! admin or operator credential cost memory and CPU at every registrar of the fleet.
//! The figures are far above what a deployment declares by hand (a fleet's operators
//! write these rows, PEs do not) and small enough that the full snapshot stays a few tens
//! of MiB at most; trust domains are the largest rows (up to 1 MiB of roots and 1 MiB of
//! CRLs each), hence their lower limit.
//!
//! A create at the limit fails with [`Error::Full`] and writes nothing (the admin API
//! answers 409); a replace of an existing row (a pool's declaration) is always allowed.
//! The count and the insert run in one write transaction ([`super::Store::begin`]: SQLite's
//! write lock, or the fleet-wide advisory lock on PostgreSQL), so no two registrars can
//! both take the last place.

use super::backend::with_conn;
use super::{Conn, Error, Result, ms_to_i64};

/// Namespaces.
pub const MAX_NAMESPACES: u64 = 10_000;
/// Pool declarations, over all namespaces.
pub const MAX_POOL_DECLARATIONS: u64 = 100_000;
/// Trust domains, the local one included.
pub const MAX_TRUST_DOMAINS: u64 = 256;
/// Grants.
pub const MAX_GRANTS: u64 = 10_000;
/// Default-namespace rules.
pub const MAX_DEFAULT_NAMESPACES: u64 = 10_000;
/// Revocations (serials, identities, trust domains). Beyond this, a CA's CRL carries
/// serials without a row each.
pub const MAX_REVOCATIONS: u64 = 100_000;
/// Admin tokens neither revoked nor expired.
pub const MAX_ACTIVE_TOKENS: u64 = 1_000;

/// A control-plane table with a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// [`MAX_NAMESPACES`].
    Namespaces,
    /// [`MAX_POOL_DECLARATIONS`].
    PoolDeclarations,
    /// [`MAX_TRUST_DOMAINS`].
    TrustDomains,
    /// [`MAX_GRANTS`].
    Grants,
    /// [`MAX_DEFAULT_NAMESPACES`].
    DefaultNamespaces,
    /// [`MAX_REVOCATIONS`].
    Revocations,
    /// [`MAX_ACTIVE_TOKENS`], counted at the time given to [`count`].
    ActiveTokens,
}

impl Table {
    /// What the error calls the rows.
    pub fn what(self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::PoolDeclarations => "pool declarations",
            Self::TrustDomains => "trust domains",
            Self::Grants => "grants",
            Self::DefaultNamespaces => "default-namespace rules",
            Self::Revocations => "revocations",
            Self::ActiveTokens => "active admin tokens",
        }
    }

    /// The limit.
    pub fn limit(self) -> u64 {
        match self {
            Self::Namespaces => MAX_NAMESPACES,
            Self::PoolDeclarations => MAX_POOL_DECLARATIONS,
            Self::TrustDomains => MAX_TRUST_DOMAINS,
            Self::Grants => MAX_GRANTS,
            Self::DefaultNamespaces => MAX_DEFAULT_NAMESPACES,
            Self::Revocations => MAX_REVOCATIONS,
            Self::ActiveTokens => MAX_ACTIVE_TOKENS,
        }
    }
}

/// The rows `table` holds now (`now_ms`: for the tokens' expiry).
pub async fn count<C: Conn + ?Sized>(conn: &mut C, table: Table, now_ms: u64) -> Result<u64> {
    let now = ms_to_i64(now_ms, "time")?;
    // Active tokens are counted at `now`; every other table counts all its rows.
    let (sql, at_now) = match table {
        Table::Namespaces => ("SELECT COUNT(*) FROM namespaces", false),
        Table::PoolDeclarations => ("SELECT COUNT(*) FROM pools", false),
        Table::TrustDomains => ("SELECT COUNT(*) FROM trust_domains", false),
        Table::Grants => ("SELECT COUNT(*) FROM grants", false),
        Table::DefaultNamespaces => ("SELECT COUNT(*) FROM default_namespaces", false),
        Table::Revocations => ("SELECT COUNT(*) FROM revocations", false),
        Table::ActiveTokens => (
            "SELECT COUNT(*) FROM admin_tokens
             WHERE revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?1)",
            true,
        ),
    };
    let n: i64 = with_conn!(conn, sql, |c, sql| {
        let query = sqlx::query_scalar(sql);
        let query = if at_now { query.bind(now) } else { query };
        query.fetch_one(c).await
    })?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// [`Error::Full`] if `table` holds its limit already.
pub(crate) async fn check_room<C: Conn + ?Sized>(
    conn: &mut C,
    table: Table,
    now_ms: u64,
) -> Result<()> {
    if count(conn, table, now_ms).await? >= table.limit() {
        return Err(Error::Full {
            what: table.what(),
            limit: table.limit(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::str::FromStr;

    use identity::{
        Action, DefaultNamespace, Grant, IdentityPattern, NamespacePattern, PoolPattern,
        Revocation, Serial, TrustDomain,
    };

    use super::Table;
    use crate::db::test_db::{TestDb, fill_to_one_below_limit, on_both_backends};
    use crate::db::*;

    on_both_backends!(each_control_plane_table_takes_its_limit_and_refuses_one_more);

    const NOW: u64 = 1_700_000_000_000;

    /// `result` is the store's refusal for `table`, and the table still holds exactly its
    /// limit.
    async fn full<T: fmt::Debug>(conn: &mut StoreConn, table: Table, result: Result<T>) {
        match result {
            Err(Error::Full { what, limit }) => {
                assert_eq!((what, limit), (table.what(), table.limit()));
            }
            other => panic!("{}: {other:?}", table.what()),
        }
        let now = super::count(conn, table, NOW).await.expect("count");
        assert_eq!(now, table.limit(), "{}: nothing written", table.what());
    }

    fn grant(identity: &str) -> Grant {
        Grant {
            identity: IdentityPattern::parse(identity).expect("identity pattern"),
            namespace: NamespacePattern::from_str("lab").expect("namespace pattern"),
            pools: PoolPattern::from_str("*").expect("pool pattern"),
            actions: [Action::Resolve].into_iter().collect(),
            labels: None,
        }
    }

    fn serial(hex: &str) -> Revocation {
        Revocation::Serial {
            domain: TrustDomain::new("acme.test").expect("domain"),
            serial: Serial::from_str(hex).expect("serial"),
        }
    }

    /// Every limited table, at its real limit: the last place is taken, one more is
    /// refused with [`Error::Full`] and writes nothing; replacing a pool's declaration at
    /// the limit still works, and an expired or revoked token frees its place.
    async fn each_control_plane_table_takes_its_limit_and_refuses_one_more(db: &TestDb) {
        let (_store, mut conn) = db.open().await;
        let c = &mut conn;

        // Pool declarations (first: they need a namespace, and namespaces fill later).
        create_namespace(&mut *c, "lab", NOW)
            .await
            .expect("namespace");
        fill_to_one_below_limit(c, Table::PoolDeclarations).await;
        let decl = |handle: &[u8]| PoolDecl {
            namespace: "lab".to_owned(),
            handle: handle.to_vec(),
            policy: None,
            max_pes: None,
            created_ms: 0,
        };
        put_pool(&mut *c, &decl(b"last"), NOW)
            .await
            .expect("the last place");
        let more = put_pool(&mut *c, &decl(b"one-more"), NOW).await;
        full(c, Table::PoolDeclarations, more).await;
        let mut replaced = decl(b"last");
        replaced.max_pes = Some(3);
        put_pool(&mut *c, &replaced, NOW)
            .await
            .expect("a replacement takes no place");

        fill_to_one_below_limit(c, Table::Namespaces).await;
        create_namespace(&mut *c, "last", NOW)
            .await
            .expect("the last place");
        let more = create_namespace(&mut *c, "one-more", NOW).await;
        full(c, Table::Namespaces, more).await;

        fill_to_one_below_limit(c, Table::TrustDomains).await;
        // The store keeps a bundle as text; the trust store parses it (not here).
        let roots = "a bundle".to_owned();
        let name = TrustDomain::new("partner.test").expect("domain");
        add_trust_domain(&mut *c, &name, false, &roots, None, NOW)
            .await
            .expect("the last place");
        let other = TrustDomain::new("other.test").expect("domain");
        let more = add_trust_domain(&mut *c, &other, false, &roots, None, NOW).await;
        full(c, Table::TrustDomains, more).await;

        fill_to_one_below_limit(c, Table::Grants).await;
        add_grant(&mut *c, &grant("spiffe://acme.test/pe/last"), NOW)
            .await
            .expect("the last place");
        let more = add_grant(&mut *c, &grant("spiffe://acme.test/pe/more"), NOW).await;
        full(c, Table::Grants, more).await;

        fill_to_one_below_limit(c, Table::DefaultNamespaces).await;
        let rule = |identity: &str| DefaultNamespace {
            identity: IdentityPattern::parse(identity).expect("pattern"),
            namespace: "lab".to_owned(),
        };
        add_default_namespace(&mut *c, &rule("spiffe://acme.test/pe/last"), NOW)
            .await
            .expect("the last place");
        let more = add_default_namespace(&mut *c, &rule("spiffe://acme.test/pe/more"), NOW).await;
        full(c, Table::DefaultNamespaces, more).await;

        fill_to_one_below_limit(c, Table::Revocations).await;
        add_revocation(&mut *c, &serial("0a:01"), None, NOW)
            .await
            .expect("the last place");
        let more = add_revocation(&mut *c, &serial("0a:02"), None, NOW).await;
        full(c, Table::Revocations, more).await;

        fill_to_one_below_limit(c, Table::ActiveTokens).await;
        let hasher = TokenHasher::insecure_fast_for_tests();
        let last = create_token(&mut *c, &hasher, "last", Role::Auditor, None, NOW)
            .await
            .expect("the last place");
        let more = create_token(&mut *c, &hasher, "more", Role::Auditor, None, NOW).await;
        full(c, Table::ActiveTokens, more).await;
        // A revoked token frees its place; so does an expired one (counted at NOW).
        revoke_token(&mut *c, &last.info.id, NOW)
            .await
            .expect("revoke");
        create_token(&mut *c, &hasher, "again", Role::Auditor, Some(NOW + 1), NOW)
            .await
            .expect("a revoked token's place");
        let later = NOW + 2;
        create_token(&mut *c, &hasher, "later", Role::Auditor, None, later)
            .await
            .expect("an expired token's place");
    }
}
