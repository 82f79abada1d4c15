//! The shapes of the API's text values, stated once each as an OpenAPI schema (a `$ref`
//! for every field and parameter that takes one), so that the document says what the
//! server enforces and a generated client sends values that pass. The tests below hold
//! each pattern to the server's own validators, both ways: what a pattern allows is not
//! refused for its shape, what it forbids is refused.
//!
//! Lengths: JSON Schema counts characters, the server bytes; the two agree on the ASCII
//! values these patterns allow, except in free text (token names, reasons), whose limits
//! the descriptions give in bytes.

use utoipa::ToSchema;
use utoipa::openapi::{RefOr, schema::Schema};

/// A string schema and nothing else: fields and parameters name it as their `value_type`,
/// it is never built.
macro_rules! text_schema {
    ($(#[doc = $doc:expr])* $name:ident { $($constraint:tt)* }) => {
        $(#[doc = $doc])*
        #[derive(ToSchema)]
        #[schema($($constraint)*)]
        #[allow(dead_code)] // a schema only
        pub(crate) struct $name(String);
    };
}

fn entry<T: ToSchema>() -> (String, RefOr<Schema>) {
    (T::name().into_owned(), T::schema())
}

/// Every schema of this module: path parameters refer to them, but utoipa collects only
/// the schemas of bodies, so [`crate::openapi::finish`] adds them.
pub(crate) fn components() -> [(String, RefOr<Schema>); 17] {
    [
        entry::<AuditActor>(),
        entry::<AuditActionName>(),
        entry::<AuditOutcome>(),
        entry::<AuditRegistrar>(),
        entry::<TrustDomainName>(),
        entry::<SpiffeIdText>(),
        entry::<IdentityPatternText>(),
        entry::<NamespaceName>(),
        entry::<NamespacePatternText>(),
        entry::<SerialText>(),
        entry::<TokenName>(),
        entry::<Reason>(),
        entry::<TokenId>(),
        entry::<PeIdText>(),
        entry::<PoolHandleText>(),
        entry::<PoolPatternText>(),
        entry::<LabelRuleText>(),
    ]
}

text_schema! {
    /// A trust domain name: 1 to 255 bytes of `a-z 0-9 . - _` (SPIFFE ID spec §2.1);
    /// `legacy.invalid` is reserved (the identities of legacy peers) and refused.
    TrustDomainName {
        pattern = r"^[a-z0-9._-]{1,255}$", example = "acme.test"
    }
}

text_schema! {
    /// A SPIFFE ID with a path: `spiffe://`, a trust domain, and one or more segments of
    /// `A-Z a-z 0-9 . - _` (not `.` or `..`); at most 2048 bytes (SPIFFE ID spec §2.3).
    SpiffeIdText {
        pattern = r"^spiffe://[a-z0-9._-]{1,255}(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))+$",
    max_length = 2048,
    example = "spiffe://acme.test/pe/echo-1"
    }
}

text_schema! {
    /// A SPIFFE ID or pattern: a literal trust domain, then segments of `A-Z a-z 0-9 . - _`
    /// and `*` (any run of characters within the segment; not two in a row, not `.` or `..`),
    /// and optionally a last segment `**` (one or more segments); at most 2048 bytes.
    IdentityPatternText {
        pattern = r"^spiffe://[a-z0-9._-]{1,255}(/(\*([A-Za-z0-9._-]+\*)*[A-Za-z0-9._-]*|[A-Za-z0-9._-]+(\*[A-Za-z0-9._-]+)*\*|[A-Za-z0-9._-]+(\*[A-Za-z0-9._-]+)+|[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*(/\*\*)?$",
    max_length = 2048,
    example = "spiffe://acme.test/pe/*"
    }
}

text_schema! {
    /// A namespace name: 1 to 63 bytes of `a-z 0-9 - .`.
    NamespaceName {
        pattern = r"^[a-z0-9.-]{1,63}$", example = "default"
    }
}

text_schema! {
    /// A namespace name, or `*` for every namespace.
    NamespacePatternText {
        pattern = r"^(\*|[a-z0-9.-]{1,63})$", example = "default"
    }
}

text_schema! {
    /// A certificate serial number in hex: 1 to 42 hex digits (20 octets, and a leading
    /// zero octet), optionally after `0x`, `:` anywhere between them ignored.
    SerialText {
        pattern = r"^(0x)*:*([0-9A-Fa-f]:*){1,42}$", example = "3f:a1:09"
    }
}

text_schema! {
    /// A token's label: 1 to 128 bytes, no control characters other than tab and newline, no
    /// invisible formatting (bidirectional overrides, zero-width characters). The pattern states printable ASCII (a length in characters is then one in bytes); other
    /// UTF-8 text is accepted too, within the 128 bytes.
    TokenName {
        pattern = r"^[\t\n\x20-\x7e]{1,128}$", example = "ci"
    }
}

text_schema! {
    /// Why, for the record: at most 4096 bytes, no control characters other than tab and
    /// newline, no invisible formatting (bidirectional overrides, zero-width characters). The
    /// pattern states printable ASCII; other UTF-8 text is accepted too, within
    /// the 4096 bytes.
    Reason {
        pattern = r"^[\t\n\x20-\x7e]{0,4096}$", example = "key compromise"
    }
}

text_schema! {
    /// A token id: 16 lowercase hex digits (the part of `rsp_<id>_<secret>` after `rsp_`).
    TokenId {
        pattern = r"^[0-9a-f]{16}$", example = "0123456789abcdef"
    }
}

text_schema! {
    /// A PE ID: `0x` and 1 to 8 hex digits, or decimal (at most 4294967295).
    PeIdText {
        pattern = r"^(0x[0-9A-Fa-f]{1,8}|0*([0-9]{1,9}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}|42949672[0-8][0-9]|429496729[0-5]))$",
    example = "0x1a2b3c4d"
    }
}

text_schema! {
    /// A pool handle of 1 to 32 bytes: `hex:` and its bytes in hex, or as text not starting
    /// with `hex:`. The pattern states printable ASCII text; other UTF-8 text (without control
    /// characters, 32 bytes at most) is accepted too.
    PoolHandleText {
        pattern = r"^(hex:([0-9A-Fa-f]{2}){1,32}|[\x20-\x7e]{1,3}|([\x20-\x67\x69-\x7e][\x20-\x7e]{3}|h[\x20-\x64\x66-\x7e][\x20-\x7e]{2}|he[\x20-\x77\x79-\x7e][\x20-\x7e]|hex[\x20-\x39\x3b-\x7e])[\x20-\x7e]{0,28})$",
    example = "echo"
    }
}

text_schema! {
    /// A grant's pool handle pattern: 1 to 256 bytes, `*` matching any run of bytes. The
    /// pattern states printable ASCII (a length in characters is then one in bytes); other
    /// UTF-8 text is accepted too, within the 256 bytes.
    PoolPatternText {
        pattern = r"^[\x20-\x7e]{1,256}$", example = "echo*"
    }
}

text_schema! {
    /// A grant's label rule, `key=pattern` (docs/PROTOCOL-EXTENSIONS.md §2): the key as a
    /// PE label's, 1 to 32 characters of `A-Z a-z 0-9 . _ - /`; the pattern at most 64
    /// printable ASCII characters, `*` matching any run.
    LabelRuleText {
        pattern = r"^[A-Za-z0-9._/-]{1,32}=[\x20-\x7e]{0,64}$", example = "region=eu-*"
    }
}

text_schema! {
    /// An audit actor: a SPIFFE ID, or `token:` and a token id (a SPIFFE path segment) for
    /// a token's calls.
    AuditActor {
        pattern = r"^(spiffe://[a-z0-9._-]{1,255}(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*|token:([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))$",
    max_length = 2048,
    example = "spiffe://acme.test/pe/echo-1"
    }
}

text_schema! {
    /// The registrar whose audit chain is meant: its SPIFFE ID, or `local` for the local
    /// chain of a store of one registrar.
    AuditRegistrar {
        pattern = r"^(local|spiffe://[a-z0-9._-]{1,255}(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*)$",
    max_length = 2048,
    example = "spiffe://acme.test/registrar/enrp-1"
    }
}

text_schema! {
    /// An audit action name: 1 to 64 bytes of `a-z 0-9 . _ : -` (`register`,
    /// `admin:grant.create`, ...).
    AuditActionName {
        pattern = r"^[a-z0-9._:-]{1,64}$",
        example = "register"
    }
}

text_schema! {
    /// An audit outcome: `ok`, `cause:0x` and 4 lowercase hex digits, or a refusal reason:
    /// 1 to 64 bytes of `a-z 0-9 . _ : -`, not `ok` and not starting with `cause:`.
    AuditOutcome {
        pattern = r"^(cause:0x[0-9a-f]{4}|[a-z0-9._:-]{1,5}|[\-\.0-:_abd-z][a-z0-9._:-]{0,63}|c[\-\.0-:_b-z][a-z0-9._:-]{0,62}|ca[\-\.0-:_a-tv-z][a-z0-9._:-]{0,61}|cau[\-\.0-:_a-rt-z][a-z0-9._:-]{0,60}|caus[\-\.0-:_a-df-z][a-z0-9._:-]{0,59}|cause[\-\.0-9_a-z][a-z0-9._:-]{0,58})$",
        example = "forbidden"
    }
}

#[cfg(test)]
mod tests {
    use identity::{IdentityPattern, Serial, SpiffeId, TrustDomain};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use regex::Regex;
    use serde_json::Value;

    /// The document as served, and one of its component schemas.
    fn component(name: &str) -> Value {
        let doc = serde_json::to_value(crate::openapi_document()).expect("json");
        doc["components"]["schemas"][name].clone()
    }

    fn pattern(name: &str) -> String {
        component(name)["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a pattern"))
            .to_owned()
    }

    /// Holds `name`'s pattern (and maxLength) to `accepts`: every value drawn from the
    /// pattern passes; every value drawn from `alphabet` that passes matches it.
    fn holds(name: &str, alphabet: &str, accepts: impl Fn(&str) -> bool) {
        let text = pattern(name);
        let max = component(name)["maxLength"].as_u64();
        let re = Regex::new(&text).expect("a valid pattern");
        let allowed = |v: &str| re.is_match(v) && max.is_none_or(|m| v.chars().count() as u64 <= m);
        let inner = text.trim_start_matches('^').trim_end_matches('$');
        let mut runner = TestRunner::new(Config {
            cases: 2000,
            failure_persistence: None,
            ..Config::default()
        });
        let drawn =
            proptest::string::string_regex(inner).expect("a pattern proptest can draw from");
        runner
            .run(&drawn, |v| {
                if allowed(&v) {
                    prop_assert!(accepts(&v), "{name}: {v:?} matches {text} but is refused");
                }
                Ok(())
            })
            .expect("what the pattern allows is accepted");
        let chars: Vec<char> = alphabet.chars().collect();
        let any = proptest::collection::vec(proptest::sample::select(chars), 0..24)
            .prop_map(|cs| cs.into_iter().collect::<String>());
        runner
            .run(&any, |v| {
                prop_assert_eq!(
                    allowed(&v),
                    accepts(&v),
                    "{}: {:?} against {}",
                    name,
                    v,
                    text
                );
                Ok(())
            })
            .expect("the pattern allows exactly what is accepted");
    }

    const ID_CHARS: &str = "spife:/acmtz.09-_AZ*";

    #[test]
    fn trust_domain_names() {
        holds("TrustDomainName", "acmez.09-_A/: ", |v| {
            TrustDomain::new(v).is_ok()
        });
        assert!(
            !Regex::new(&pattern("TrustDomainName"))
                .expect("valid")
                .is_match(&"a".repeat(256))
        );
    }

    #[test]
    fn spiffe_ids_with_a_path() {
        holds("SpiffeIdText", ID_CHARS, |v| {
            v.len() <= identity::MAX_SPIFFE_ID_LEN
                && SpiffeId::parse(v).is_ok_and(|id| !id.path().is_empty())
        });
        // Prefixed, so that the alphabet above reaches past the scheme.
        holds("SpiffeIdText", "a./-_*Z", |v| {
            SpiffeId::parse(v).is_ok_and(|id| !id.path().is_empty())
        });
    }

    #[test]
    fn identity_patterns() {
        holds("IdentityPatternText", ID_CHARS, |v| {
            IdentityPattern::parse(v).is_ok()
        });
    }

    #[test]
    fn identity_patterns_past_the_scheme() {
        let re = Regex::new(&pattern("IdentityPatternText")).expect("valid");
        let path = proptest::collection::vec(
            proptest::sample::select(vec!['/', '*', '.', 'a', '-']),
            0..12,
        )
        .prop_map(|cs| format!("spiffe://acme.test{}", cs.into_iter().collect::<String>()));
        let mut runner = TestRunner::new(Config {
            cases: 4000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&path, |v| {
                prop_assert_eq!(
                    re.is_match(&v),
                    IdentityPattern::parse(&v).is_ok(),
                    "{:?}",
                    v
                );
                Ok(())
            })
            .expect("the pattern allows exactly the valid identity patterns");
        for v in [
            "spiffe://acme.test/**",
            "spiffe://acme.test/a/**",
            "spiffe://acme.test/*a*/b",
        ] {
            assert!(re.is_match(v), "{v}");
        }
        for v in [
            "spiffe://acme.test/**/a",
            "spiffe://acme.test/a**",
            "spiffe://*.test/a",
            "spiffe://acme.test/./a",
        ] {
            assert!(!re.is_match(v), "{v}");
        }
    }

    #[test]
    fn spiffe_ids_past_the_scheme() {
        let re = Regex::new(&pattern("SpiffeIdText")).expect("valid");
        let path = proptest::collection::vec(
            proptest::sample::select(vec!['/', '.', 'a', '-', '*']),
            0..12,
        )
        .prop_map(|cs| format!("spiffe://acme.test{}", cs.into_iter().collect::<String>()));
        let mut runner = TestRunner::new(Config {
            cases: 4000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&path, |v| {
                let ok = SpiffeId::parse(&v).is_ok_and(|id| !id.path().is_empty());
                prop_assert_eq!(re.is_match(&v), ok, "{:?}", v);
                Ok(())
            })
            .expect("the pattern allows exactly the SPIFFE IDs a revocation takes");
    }

    #[test]
    fn namespaces_and_namespace_patterns() {
        holds("NamespaceName", "az09-._A*/ ", |v| {
            store::db::check_namespace(v).is_ok()
        });
        holds("NamespacePatternText", "az09-._A*/ ", |v| {
            v == "*" || store::db::check_namespace(v).is_ok()
        });
        let re = Regex::new(&pattern("NamespaceName")).expect("valid");
        assert!(re.is_match(&"a".repeat(63)) && !re.is_match(&"a".repeat(64)));
    }

    #[test]
    fn serials() {
        holds("SerialText", "0x:aF9g-", |v| v.parse::<Serial>().is_ok());
        let re = Regex::new(&pattern("SerialText")).expect("valid");
        assert!(re.is_match(&"a".repeat(42)) && !re.is_match(&"a".repeat(43)));
        assert!("a".repeat(42).parse::<Serial>().is_ok());
        assert!("a".repeat(43).parse::<Serial>().is_err());
    }

    #[test]
    fn pe_ids() {
        holds("PeIdText", "0x9aFg-", |v| {
            crate::routes::pools::parse_pe_id(v).is_some()
        });
    }

    /// One way only for the patterns that state a subset (see their docs): what they
    /// allow is accepted.
    fn allows_only_accepted(name: &str, accepts: impl Fn(&str) -> bool) {
        let text = pattern(name);
        let re = Regex::new(&text).expect("a valid pattern");
        let inner = text.trim_start_matches('^').trim_end_matches('$');
        let drawn =
            proptest::string::string_regex(inner).expect("a pattern proptest can draw from");
        TestRunner::new(Config {
            cases: 4000,
            failure_persistence: None,
            ..Config::default()
        })
        .run(&drawn, |v| {
            if re.is_match(&v) {
                prop_assert!(accepts(&v), "{name}: {v:?} matches {text} but is refused");
            }
            Ok(())
        })
        .expect("what the pattern allows is accepted");
    }

    #[test]
    fn label_rules() {
        holds("LabelRuleText", "az09._/-=* !~", |v| {
            v.parse::<identity::LabelRule>().is_ok()
        });
        allows_only_accepted("LabelRuleText", |v| {
            v.parse::<identity::LabelRule>().is_ok()
        });
    }

    #[test]
    fn pool_handles() {
        allows_only_accepted("PoolHandleText", |v| {
            crate::routes::parse_handle(v).is_some()
        });
        // In printable ASCII, exactly.
        holds("PoolHandleText", "hex:0aZ h", |v| {
            crate::routes::parse_handle(v).is_some()
        });
        let re = Regex::new(&pattern("PoolHandleText")).expect("valid");
        for v in ["echo", "hex:00ff", "hex", "hex!x", &"x".repeat(32)] {
            assert!(re.is_match(v), "{v}");
        }
        for v in ["", "hex:", "hex:0", "hex:zz", &"x".repeat(33), "e\u{e9}"] {
            assert!(!re.is_match(v), "{v}");
        }
    }

    #[test]
    fn pool_patterns() {
        allows_only_accepted("PoolPatternText", |v| {
            identity::PoolPattern::new(v.as_bytes()).is_ok()
        });
        let re = Regex::new(&pattern("PoolPatternText")).expect("valid");
        for v in ["*", "echo*", &"x".repeat(256)] {
            assert!(re.is_match(v), "{v}");
        }
        // Over 256 characters, or text whose characters are more bytes than that.
        for v in ["", &"x".repeat(257), &"\u{1e70}".repeat(100)] {
            assert!(!re.is_match(v), "{v}");
        }
    }

    #[test]
    fn audit_filters() {
        let local = TrustDomain::new("acme.test").expect("valid");
        let actor = |v: &str| match v.strip_prefix("token:") {
            Some(id) => SpiffeId::from_segments(&local, ["token", id]).is_ok(),
            None => SpiffeId::parse(v).is_ok(),
        };
        holds("AuditActor", "spife:/.atokn-*", actor);
        holds("AuditActor", "token:.a-*/", actor);
        holds(
            "AuditActionName",
            "reg:.a_-Z0",
            store::audit::is_action_name,
        );
        let outcome = |v: &str| v.parse::<store::audit::Outcome>().is_ok();
        holds("AuditOutcome", "okcause:0x1f.-_Z", outcome);
        let registrar = |v: &str| v.parse::<store::audit::Chain>().is_ok();
        holds("AuditRegistrar", "spife:/.alocl-*", registrar);
        let re = Regex::new(&pattern("AuditOutcome")).expect("valid");
        for v in [
            "ok",
            "cause:0x000a",
            "cause",
            "causes",
            "forbidden",
            "a:b",
            &"a".repeat(64),
        ] {
            assert!(re.is_match(v) && outcome(v), "{v}");
        }
        for v in [
            "",
            "cause:",
            "cause:0",
            "cause:0x0a",
            "cause:0x000A",
            "cause:0xzzzz",
            &"a".repeat(65),
        ] {
            assert!(!re.is_match(v) && !outcome(v), "{v}");
        }
    }

    #[test]
    fn free_text() {
        // The store's own limits: token names 1 to 128 bytes, reasons up to 4096.
        let name = Regex::new(&pattern("TokenName")).expect("valid");
        assert!(name.is_match("ci\tbot") && name.is_match(&"x".repeat(128)));
        assert!(!name.is_match("") && !name.is_match(&"x".repeat(129)) && !name.is_match("a\u{7}"));
        let reason = Regex::new(&pattern("Reason")).expect("valid");
        assert!(reason.is_match("") && reason.is_match(&"x".repeat(4096)));
        assert!(!reason.is_match(&"x".repeat(4097)) && !reason.is_match("\u{1b}[31m"));
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = serde_json::to_value(crate::openapi_document()).expect("json");
        let text = doc.to_string();
        for name in text.split("\"#/components/schemas/").skip(1) {
            let name = name.split('"').next().expect("a name");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is referenced but not defined"
            );
        }
    }
}
