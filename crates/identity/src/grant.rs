//! Grants: who may do what, in which namespace, on which pools. Default deny.

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::label_rules::LabelRules;
use crate::pattern::{IdentityPattern, PoolPattern};
use crate::spiffe::{SpiffeId, echo};

/// What an identity asks to do. Each action is granted on its own: no action implies
/// another (`admin:write` does not imply `admin:read`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Action {
    /// Register (and re-register, deregister) a pool element (ASAP).
    Register,
    /// Resolve a pool handle to pool elements (ASAP handle resolution).
    Resolve,
    /// Report a pool element unreachable (ASAP Endpoint Unreachable).
    Report,
    /// Peer as a registrar (ENRP).
    Peer,
    /// Read through the admin API.
    AdminRead,
    /// Change state through the admin API.
    AdminWrite,
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Self; 6] = [
        Self::Register,
        Self::Resolve,
        Self::Report,
        Self::Peer,
        Self::AdminRead,
        Self::AdminWrite,
    ];

    /// The name used in configuration and the admin API, e.g. `admin:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Resolve => "resolve",
            Self::Report => "report",
            Self::Peer => "peer",
            Self::AdminRead => "admin:read",
            Self::AdminWrite => "admin:write",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| Error::InvalidAction { input: echo(s) })
    }
}

/// A set of [`Action`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const NONE: Self = Self(0);

    /// Whether `action` is in the set.
    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    /// The set with `action` added.
    #[must_use]
    pub fn with(self, action: Action) -> Self {
        Self(self.0 | action.bit())
    }

    /// The actions in the set, in [`Action::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Which namespaces a grant covers.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum NamespacePattern {
    /// Every namespace (written `*`).
    Any,
    /// Exactly the named namespace.
    Exact(String),
}

impl NamespacePattern {
    /// Whether `namespace` is covered.
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == namespace,
        }
    }
}

impl FromStr for NamespacePattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s == "*" {
            return Ok(Self::Any);
        }
        if s.is_empty() || s.contains('*') {
            return Err(Error::InvalidPattern {
                input: echo(s),
                reason: "a namespace pattern is `*` or an exact, non-empty name",
            });
        }
        Ok(Self::Exact(s.to_owned()))
    }
}

impl fmt::Display for NamespacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => f.write_str(name),
        }
    }
}

/// One grant: identities matching `identity` may perform `actions` in the namespaces of
/// `namespace` on the pools matching `pools`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Grant {
    /// Who.
    pub identity: IdentityPattern,
    /// Where.
    pub namespace: NamespacePattern,
    /// On which pools. An action that names no pool (ENRP peering, most admin calls) is
    /// covered only by a grant whose pool pattern matches every pool (`*`).
    pub pools: PoolPattern,
    /// What.
    pub actions: Actions,
    /// Which PE labels a registration under this grant may carry: `None`, any
    /// ([`register_allowed`]).
    pub labels: Option<LabelRules>,
}

impl Grant {
    /// Whether this grant allows the request.
    pub fn allows(
        &self,
        peer: &SpiffeId,
        namespace: &str,
        pool: Option<&[u8]>,
        action: Action,
    ) -> bool {
        self.actions.contains(action)
            && self.identity.matches(peer)
            && self.namespace.matches(namespace)
            && match pool {
                Some(pool) => self.pools.matches(pool),
                None => self.pools.is_any(),
            }
    }
}

/// The decision: `true` only if some grant allows the request (default deny).
pub fn allowed(
    grants: &[Grant],
    peer: &SpiffeId,
    namespace: &str,
    pool: Option<&[u8]>,
    action: Action,
) -> bool {
    grants
        .iter()
        .any(|g| g.allows(peer, namespace, pool, action))
}

/// Why [`register_allowed`] refuses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegisterRefusal<'a> {
    /// No grant allows `register` on this pool.
    NoGrant,
    /// Grants allow `register` on this pool, but none admits this label (the first label
    /// the first such grant refuses).
    Label(&'a str, &'a str),
}

/// Whether `peer` may register a PE carrying `labels` in `pool` of `namespace`: some
/// grant allows `register` there and admits every label (a grant without label rules
/// admits any). Grants add up: one grant that admits the labels is enough.
///
/// # Errors
/// Why not, for the registration's refusal and its audit record.
pub fn register_allowed<'a, L>(
    grants: &[Grant],
    peer: &SpiffeId,
    namespace: &str,
    pool: &[u8],
    labels: L,
) -> Result<(), RegisterRefusal<'a>>
where
    L: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    let mut refused = None;
    for grant in grants
        .iter()
        .filter(|g| g.allows(peer, namespace, Some(pool), Action::Register))
    {
        let Some(rules) = &grant.labels else {
            return Ok(());
        };
        match rules.first_refused(labels.clone()) {
            None => return Ok(()),
            Some((k, v)) => {
                refused.get_or_insert(RegisterRefusal::Label(k, v));
            }
        }
    }
    Err(refused.unwrap_or(RegisterRefusal::NoGrant))
}

/// Where an identity's ASAP requests go when they do not name a namespace (no parameter
/// 0x8100; spec §12.9, ARCHITECTURE.md §3): PEs and PUs that predate namespaces, or that
/// an operator wants confined without reconfiguring them. Unlike a grant this allows
/// nothing: the request is then authorized against the grants as usual.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DefaultNamespace {
    /// Whose requests.
    pub identity: IdentityPattern,
    /// The namespace they go to.
    pub namespace: String,
}

/// The namespace `id`'s requests go to without 0x8100, from `rules` in the order they
/// were made: an exact ID wins over patterns, then the pattern with the most literal
/// (non-`*`) characters; a tie goes to the older rule. `None`: no rule matches (the
/// registrar then uses `default`).
pub fn default_namespace<'a>(rules: &'a [DefaultNamespace], id: &SpiffeId) -> Option<&'a str> {
    let specificity = |rule: &DefaultNamespace| {
        let text = rule.identity.as_str();
        let wildcards = text.bytes().filter(|b| *b == b'*').count();
        (wildcards == 0, text.len() - wildcards)
    };
    let mut best: Option<&DefaultNamespace> = None;
    for rule in rules.iter().filter(|r| r.identity.matches(id)) {
        // Strictly better only: the older rule keeps a tie.
        if best.is_none_or(|b| specificity(rule) > specificity(b)) {
            best = Some(rule);
        }
    }
    best.map(|r| r.namespace.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_default_namespace_wins() {
        let rule = |identity: &str, namespace: &str| DefaultNamespace {
            identity: identity.parse().expect("valid pattern"),
            namespace: namespace.to_owned(),
        };
        let rules = [
            rule("spiffe://acme.test/**", "wide"),
            rule("spiffe://acme.test/pe/*", "pes"),
            rule("spiffe://acme.test/pe/echo-*", "echoes"),
            rule("spiffe://acme.test/pe/echo-1", "one"),
            rule("spiffe://acme.test/pe/echo-*", "later-tie"),
        ];
        let of = |s: &str| default_namespace(&rules, &id(s));
        assert_eq!(of("spiffe://acme.test/pe/echo-1"), Some("one"));
        assert_eq!(of("spiffe://acme.test/pe/echo-2"), Some("echoes"));
        assert_eq!(of("spiffe://acme.test/pe/daytime"), Some("pes"));
        assert_eq!(of("spiffe://acme.test/pu/client"), Some("wide"));
        assert_eq!(of("spiffe://other.test/pe/echo-1"), None);
        assert_eq!(default_namespace(&[], &id("spiffe://acme.test/pe/x")), None);
    }

    fn grant(identity: &str, namespace: &str, pools: &str, actions: &[Action]) -> Grant {
        Grant {
            identity: identity.parse().expect("valid pattern"),
            namespace: namespace.parse().expect("valid namespace"),
            pools: pools.parse().expect("valid pool pattern"),
            actions: actions.iter().copied().collect(),
            labels: None,
        }
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("valid id")
    }

    #[test]
    fn default_deny() {
        for action in Action::ALL {
            assert!(!allowed(
                &[],
                &id("spiffe://acme.test/admin/ops"),
                "default",
                None,
                action
            ));
        }
    }

    #[test]
    fn decisions() {
        let grants = vec![
            grant(
                "spiffe://acme.test/pe/*",
                "default",
                "*",
                &[Action::Register],
            ),
            grant(
                "spiffe://acme.test/pu/*",
                "default",
                "echo*",
                &[Action::Resolve, Action::Report],
            ),
            grant("spiffe://acme.test/registrar/*", "*", "*", &[Action::Peer]),
            grant(
                "spiffe://acme.test/admin/ops",
                "*",
                "*",
                &[Action::AdminRead],
            ),
        ];
        let pe = id("spiffe://acme.test/pe/echo-1");
        let pu = id("spiffe://acme.test/pu/client-1");
        let reg = id("spiffe://acme.test/registrar/enrp-1");
        let ops = id("spiffe://acme.test/admin/ops");
        let foreign_pe = id("spiffe://other.test/pe/echo-1");
        type Case<'a> = (&'a SpiffeId, &'a str, Option<&'a [u8]>, Action, bool);
        let table: &[Case<'_>] = &[
            (&pe, "default", Some(b"echo"), Action::Register, true),
            (&pe, "default", Some(b"echo"), Action::Resolve, false),
            (&pe, "prod", Some(b"echo"), Action::Register, false),
            (
                &foreign_pe,
                "default",
                Some(b"echo"),
                Action::Register,
                false,
            ),
            (&pu, "default", Some(b"echo"), Action::Resolve, true),
            (&pu, "default", Some(b"echo-eu"), Action::Report, true),
            (&pu, "default", Some(b"web"), Action::Resolve, false),
            (&pu, "default", Some(b"echo"), Action::Register, false),
            // A pool-less request needs a grant over all pools.
            (&pu, "default", None, Action::Resolve, false),
            (&reg, "any-namespace", None, Action::Peer, true),
            (&reg, "default", Some(b"echo"), Action::Register, false),
            (&ops, "default", None, Action::AdminRead, true),
            // admin:write is not implied by admin:read.
            (&ops, "default", None, Action::AdminWrite, false),
        ];
        for (peer, ns, pool, action, expected) in table {
            assert_eq!(
                allowed(&grants, peer, ns, *pool, *action),
                *expected,
                "{peer} {ns} {pool:?} {action}"
            );
        }
    }

    #[test]
    fn label_rules_narrow_registration_and_grants_add_up() {
        let mut eu = grant(
            "spiffe://acme.test/pe/eu-*",
            "default",
            "web",
            &[Action::Register],
        );
        eu.labels = Some(LabelRules::parse(["region=eu-*"]).expect("valid"));
        let mut resolve_only = grant(
            "spiffe://acme.test/pe/*",
            "default",
            "web",
            &[Action::Resolve],
        );
        resolve_only.labels = None;
        let grants = vec![eu.clone(), resolve_only];
        let pe = id("spiffe://acme.test/pe/eu-1");
        let decide = |grants: &[Grant], labels: &[(&'static str, &'static str)]| {
            register_allowed(grants, &pe, "default", b"web", labels.iter().copied())
        };
        assert_eq!(decide(&grants, &[("region", "eu-west")]), Ok(()));
        assert_eq!(decide(&grants, &[]), Ok(()));
        assert_eq!(
            decide(&grants, &[("region", "eu-west"), ("region2", "us")]),
            Err(RegisterRefusal::Label("region2", "us"))
        );
        assert_eq!(
            decide(&grants, &[("region", "us-east")]),
            Err(RegisterRefusal::Label("region", "us-east"))
        );
        // Another pool, or a resolve grant only: no grant at all.
        assert_eq!(
            register_allowed(&grants, &pe, "default", b"db", [("region", "eu")]),
            Err(RegisterRefusal::NoGrant)
        );
        // A second register grant without rules admits any labels: grants add up.
        let open = grant(
            "spiffe://acme.test/pe/*",
            "default",
            "*",
            &[Action::Register],
        );
        let both = vec![eu.clone(), open];
        assert_eq!(decide(&both, &[("region", "us-east")]), Ok(()));
        // An empty rule list admits no label.
        let mut none = eu;
        none.labels = Some(LabelRules::default());
        assert_eq!(decide(std::slice::from_ref(&none), &[]), Ok(()));
        assert_eq!(
            decide(&[none], &[("region", "eu-west")]),
            Err(RegisterRefusal::Label("region", "eu-west"))
        );
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().expect("known"), a);
        }
        assert!("admin".parse::<Action>().is_err());
        assert!("Register".parse::<Action>().is_err());
        let set: Actions = [Action::Peer, Action::Register].into_iter().collect();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Action::Register, Action::Peer]
        );
        assert!(!set.contains(Action::Resolve));
    }

    #[test]
    fn namespace_patterns() {
        assert!("*".parse::<NamespacePattern>().expect("valid").matches("x"));
        assert!("a".parse::<NamespacePattern>().expect("valid").matches("a"));
        assert!(!"a".parse::<NamespacePattern>().expect("valid").matches("b"));
        assert!("a*".parse::<NamespacePattern>().is_err());
        assert!("".parse::<NamespacePattern>().is_err());
    }
}
