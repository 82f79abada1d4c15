//! `rsp`'s identity, trust and registrar options as one configuration (issue 24), as
//! `enrp::config` is for `enrpd run`: [`OPTIONS`] defines each option once (its config-file
//! key, flag, default and help; the environment variable is `RSP_` plus the flag in upper
//! case, e.g. `--registrar` and `RSP_REGISTRAR` for the key `registrars`). The layers
//! (defaults < `--config` file < `RSP_*` variables < flags) are merged by figment and read
//! by [`Options`]' one `Deserialize`, so a value means the same wherever it is given.
//! Relative paths in the file are from the file's directory.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use asap::addr::TransportAddr;
use figment::value::{Dict, Value, magic::RelativePathBuf};
use identity::IdentityPattern;
use serde::{Deserialize, Deserializer, de};

/// How an option's flag takes its value.
#[derive(Clone, Copy)]
pub(crate) enum Takes {
    /// One value, named so in the help.
    Value(&'static str),
    /// Repeatable, or comma-separated.
    Repeated(&'static str),
    /// A switch (`--insecure-legacy`); its variable is true unless 0, false, no, off, n, f
    /// or empty.
    Switch,
}

/// One option: its config-file key, its flag (without `--`), how the flag takes it, its
/// default (as it would be written in a flag), its help.
pub(crate) struct Opt {
    pub(crate) key: &'static str,
    pub(crate) flag: &'static str,
    pub(crate) takes: Takes,
    pub(crate) default: Option<&'static str>,
    pub(crate) help: &'static str,
}

impl Opt {
    /// `RSP_` plus the flag in upper case: `RSP_REGISTRAR_ID` for `--registrar-id`.
    pub(crate) fn env(&self) -> String {
        format!("RSP_{}", self.flag.replace('-', "_").to_uppercase())
    }
}

/// Every option of [`Options`], each once.
pub(crate) const OPTIONS: &[Opt] = &[
    Opt {
        key: "cert",
        flag: "cert",
        takes: Takes::Value("FILE"),
        default: None,
        help: "This identity's certificate chain (PEM), e.g. pki/pe-echo-1.pem. Required, here or in the config file, except with --insecure-legacy when every hop is plain text (SCTP registrars only; for `rsp pe`, an SCTP --listen and no --asap-listen).",
    },
    Opt {
        key: "key",
        flag: "key",
        takes: Takes::Value("FILE"),
        default: None,
        help: "Its private key (PEM); default: the certificate's path with .key.",
    },
    Opt {
        key: "ca",
        flag: "ca",
        takes: Takes::Value("FILE"),
        default: Some("pki/ca.pem"),
        help: "The trust bundle of the local trust domain.",
    },
    Opt {
        key: "crl",
        flag: "crl",
        takes: Takes::Value("FILE"),
        default: None,
        help: "The trust domain's CRLs (PEM, as `rsp-pki` writes them): peers whose certificate, or any certificate of whose chain, they list are refused, registrar, PE and PU alike. Default: crl.pem beside --ca when it exists.",
    },
    Opt {
        key: "registrars",
        flag: "registrar",
        takes: Takes::Repeated("ADDR"),
        default: Some("127.0.0.1:3864"),
        help: "Registrars, tried in order; repeat the flag or separate with commas. IP:PORT for ASAP over TLS/TCP, sctp:IP:PORT[+IP:PORT...] for ASAP over TLS/SCTP.",
    },
    Opt {
        key: "insecure_legacy",
        flag: "insecure-legacy",
        takes: Takes::Switch,
        // Off when not given (bool's default).
        default: None,
        help: "INSECURE, for legacy registrars (RSPLIB's rspregistrar) only: talk to the SCTP registrars in plain text, with no authentication of either side, so that anyone who answers at their address can swallow registrations and forge resolutions. A PE also serves its legacy pool users (rspterminal) in plain text over SCTP.",
    },
    Opt {
        key: "namespace",
        flag: "namespace",
        takes: Takes::Value("NAMESPACE"),
        default: None,
        help: "The namespace (default: the identity's default namespace).",
    },
    Opt {
        key: "registrar_ids",
        flag: "registrar-id",
        takes: Takes::Repeated("PATTERN"),
        default: None,
        help: "Whom to accept as registrar: a SPIFFE ID pattern such as spiffe://acme.test/registrar/enrp-* (repeat the flag or separate with commas). Default: spiffe://<trusted domain>/registrar/*. A registrar presenting another identity (a PE certificate, say) fails the handshake.",
    },
];

/// The options, merged (see the module doc). Paths from the config file are relative to
/// its directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    pub(crate) cert: Option<RelativePathBuf>,
    pub(crate) key: Option<RelativePathBuf>,
    pub(crate) ca: RelativePathBuf,
    pub(crate) crl: Option<RelativePathBuf>,
    #[serde(deserialize_with = "parsed_list")]
    pub(crate) registrars: Vec<TransportAddr>,
    #[serde(default)]
    pub(crate) insecure_legacy: bool,
    pub(crate) namespace: Option<String>,
    #[serde(default, deserialize_with = "parsed_list")]
    pub(crate) registrar_ids: Vec<IdentityPattern>,
}

/// The options given as flags (the top layer); `clap` fills it from [`OPTIONS`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Flags(Dict);

impl clap::Args for Flags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(OPTIONS.iter().map(|o| {
            let mut help = o.help.to_owned();
            if let Some(d) = o.default {
                help.push_str(&format!(" [default: {d}]"));
            }
            help.push_str(&format!(" [env: {}]", o.env()));
            let arg = clap::Arg::new(o.key).long(o.flag).help(help);
            match o.takes {
                Takes::Value(name) => arg.value_name(name).action(clap::ArgAction::Set),
                Takes::Repeated(name) => arg
                    .value_name(name)
                    .value_delimiter(',')
                    .action(clap::ArgAction::Append),
                Takes::Switch => arg.action(clap::ArgAction::SetTrue),
            }
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Dict::new();
        for o in OPTIONS {
            if matches.value_source(o.key) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let values = || {
                matches
                    .get_many::<String>(o.key)
                    .into_iter()
                    .flatten()
                    .map(|v| Value::from(v.clone()))
            };
            let value = match o.takes {
                Takes::Switch => Value::from(true),
                Takes::Repeated(_) => Value::from(values().collect::<Vec<_>>()),
                Takes::Value(_) => match values().next() {
                    Some(v) => v,
                    None => continue,
                },
            };
            flags.insert(o.key.to_owned(), value);
        }
        Ok(Self(flags))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// A layer of values as written (the defaults, the variables, the flags).
struct Layer {
    name: &'static str,
    values: Dict,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.values.clone()))
    }
}

const DEFAULTS: &str = "the defaults";
const VARIABLES: &str = "the RSP_ variables";
const FLAGS: &str = "the command line";

/// The `RSP_*` variables of [`OPTIONS`], as written (`RSP_NAMESPACE=007` stays text),
/// except a switch's: true unless 0, false, no, off, n, f, as clap read
/// `RSP_INSECURE_LEGACY` before. An empty variable is unset (for a switch: off, as before).
fn env_layer(var: impl Fn(&str) -> Option<String>) -> Layer {
    let values = OPTIONS
        .iter()
        .filter_map(|o| {
            let text = var(&o.env()).filter(|t| !t.is_empty())?;
            let value = match o.takes {
                Takes::Switch => Value::from(!matches!(
                    text.trim().to_ascii_lowercase().as_str(),
                    "false" | "no" | "off" | "0" | "n" | "f" | ""
                )),
                _ => Value::from(text),
            };
            Some((o.key.to_owned(), value))
        })
        .collect();
    Layer {
        name: VARIABLES,
        values,
    }
}

impl Flags {
    /// The merged options, or one line naming the file (and line), variable or flag at
    /// fault. `var` reads the environment (a parameter, so that tests need not set it).
    pub(crate) fn load(
        &self,
        file: Option<&Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, String> {
        use figment::providers::Format as _;
        let defaults = OPTIONS
            .iter()
            .filter_map(|o| Some((o.key.to_owned(), Value::from(o.default?))))
            .collect();
        let mut layers = figment::Figment::from(Layer {
            name: DEFAULTS,
            values: defaults,
        });
        if let Some(path) = file {
            layers = layers.merge(figment::providers::Toml::file_exact(path));
        }
        layers
            .merge(env_layer(var))
            .merge(Layer {
                name: FLAGS,
                values: self.0.clone(),
            })
            .extract()
            .map_err(|e| describe(&e, file))
    }
}

/// One line for a configuration error: for the file, `the config file F line N: …` (as
/// before figment: the e2e `cli::` tests read it); for a variable or flag, its name.
fn describe(e: &figment::Error, file: Option<&Path>) -> String {
    use figment::error::Kind;
    let key = e.path.join(".");
    let layer = e.metadata.as_ref().map(|m| m.name.as_ref());
    let opt = OPTIONS.iter().find(|o| o.key == key);
    // Messages may span lines (a TOML parse error quotes the line with a caret): keep
    // the prose, one line.
    let prose = |text: String| {
        text.lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.starts_with(' ') && !l.contains(" | "))
            .collect::<Vec<_>>()
            .join(": ")
    };
    let what = match &e.kind {
        Kind::UnknownField(field, expected) => {
            let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown field `{field}`, expected one of {}",
                expected.join(", ")
            )
        }
        kind => prose(kind.to_string()),
    };
    match (layer, opt, &e.kind) {
        // Only the file can hold an unknown key (the others are built from OPTIONS).
        (_, _, Kind::UnknownField(..)) => in_file(file, &key, what, &e.kind),
        (Some(VARIABLES), Some(o), _) => format!("{}: {what}", o.env()),
        (Some(FLAGS), Some(o), _) => format!("--{}: {what}", o.flag),
        _ => in_file(file, &key, what, &e.kind),
    }
}

/// `the config file F line N: key: what` (`what` alone without a file).
fn in_file(file: Option<&Path>, key: &str, what: String, kind: &figment::error::Kind) -> String {
    let Some(path) = file else {
        return what;
    };
    // An unknown key is named in `what`; any other error says its key first.
    let (named, what) = match kind {
        figment::error::Kind::UnknownField(field, _) => (field.as_str(), what),
        _ if key.is_empty() => ("", what),
        _ => (key, format!("{key}: {what}")),
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = line_of(&text, named).or_else(|| parse_error_line(&what));
    let at = line.map_or_else(String::new, |l| format!(" line {l}"));
    format!("the config file {}{at}: {what}", path.display())
}

/// The line (from 1) where `key` is set in a TOML file, if it is at the start of one.
fn line_of(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The line a TOML parse error names (`… at line 2, column 5 …`).
fn parse_error_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("line ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A duration flag: a humane string (`5m`, `90s`) or, as before, a number of seconds.
pub(crate) fn secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is no duration (`5m`, `90s` or seconds): {e}")),
    }
}

/// A list given as a list of strings (the file) or comma-separated (a variable), each
/// parsed; a bad one is named.
fn parsed_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    struct List<T>(std::marker::PhantomData<T>);
    impl<'de, T: FromStr> de::Visitor<'de> for List<T>
    where
        T::Err: std::fmt::Display,
    {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_each(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.extend(parse_each::<T, A::Error>(&item)?);
            }
            Ok(items)
        }
    }
    d.deserialize_any(List(std::marker::PhantomData))
}

/// Each comma-separated item of `v`, parsed; a bad one is named.
fn parse_each<T: FromStr, E: de::Error>(v: &str) -> Result<Vec<T>, E>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // The parsers' errors quote the value.
        .map(|s| s.parse().map_err(E::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;

    /// The flags of `rsp resolve ARGS…` as parsed.
    fn flags(args: &[&str]) -> Flags {
        let cmd = <Flags as clap::Args>::augment_args(clap::Command::new("resolve"));
        let matches = cmd
            .try_get_matches_from(["resolve"].iter().chain(args))
            .expect("parses");
        <Flags as clap::FromArgMatches>::from_arg_matches(&matches).expect("flags")
    }

    /// An environment of these variables only.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn addrs(list: &[&str]) -> Vec<TransportAddr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn a_flag_beats_a_variable_beats_the_file_beats_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(
            &file,
            "cert = \"pki/pu.pem\"\nkey = \"/abs/pu.key\"\nca = \"pki/ca.pem\"\nregistrars = [\"192.0.2.1:3864\", \"192.0.2.2:3864\"]\nnamespace = \"file\"\nregistrar_ids = [\"spiffe://acme.test/registrar/a\"]\n",
        )
        .expect("write");
        let o = flags(&["--namespace", "flag"])
            .load(
                Some(&file),
                env(&[("RSP_NAMESPACE", "var"), ("RSP_CA", "var/ca.pem")]),
            )
            .expect("valid");
        assert_eq!(o.namespace.as_deref(), Some("flag"), "the flag");
        assert_eq!(o.ca.relative(), PathBuf::from("var/ca.pem"), "the variable");
        assert_eq!(
            o.cert.expect("cert").relative(),
            dir.path().join("pki/pu.pem"),
            "the file's relative path is from its directory"
        );
        assert_eq!(o.key.expect("key").relative(), PathBuf::from("/abs/pu.key"));
        assert_eq!(o.registrars, addrs(&["192.0.2.1:3864", "192.0.2.2:3864"]));
        assert_eq!(o.registrar_ids.len(), 1);
        assert!(!o.insecure_legacy, "the default");
        // Without a file: the defaults; a comma-separated variable; repeated flags.
        let o = flags(&[]).load(None, env(&[])).expect("defaults");
        assert_eq!(o.ca.relative(), PathBuf::from("pki/ca.pem"));
        assert_eq!(o.registrars, addrs(&["127.0.0.1:3864"]));
        assert!(o.cert.is_none() && o.namespace.is_none() && o.registrar_ids.is_empty());
        let vars = env(&[("RSP_REGISTRAR", "192.0.2.3:1,sctp:192.0.2.4:2")]);
        let o = flags(&[]).load(Some(&file), &vars).expect("valid");
        assert_eq!(o.registrars, addrs(&["192.0.2.3:1", "sctp:192.0.2.4:2"]));
        let o = flags(&[
            "--registrar",
            "192.0.2.5:1,192.0.2.6:1",
            "--registrar",
            "192.0.2.7:1",
        ])
        .load(Some(&file), &vars)
        .expect("valid");
        assert_eq!(
            o.registrars,
            addrs(&["192.0.2.5:1", "192.0.2.6:1", "192.0.2.7:1"])
        );
        // A flag's path is as given, relative to where rsp runs.
        let o = flags(&["--cert", "mine.pem"])
            .load(Some(&file), env(&[]))
            .expect("valid");
        assert_eq!(o.cert.expect("cert").relative(), PathBuf::from("mine.pem"));
    }

    #[test]
    fn a_switch_is_a_flag_a_variable_or_a_file_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(&file, "insecure_legacy = true\n").expect("write");
        let legacy = |args: &[&str], file: Option<&Path>, vars: &[(&str, &str)]| {
            flags(args)
                .load(file, env(vars))
                .expect("valid")
                .insecure_legacy
        };
        assert!(legacy(&["--insecure-legacy"], None, &[]));
        assert!(legacy(&[], Some(&file), &[]));
        // As clap read the variable: true unless it says otherwise.
        assert!(legacy(&[], None, &[("RSP_INSECURE_LEGACY", "1")]));
        assert!(legacy(&[], None, &[("RSP_INSECURE_LEGACY", "yes")]));
        for off in ["0", "false", "no", "off", ""] {
            assert!(
                !legacy(&[], None, &[("RSP_INSECURE_LEGACY", off)]),
                "{off:?}"
            );
        }
        // A variable that says no beats the file; an empty one is unset.
        assert!(!legacy(&[], Some(&file), &[("RSP_INSECURE_LEGACY", "0")]));
        assert!(legacy(&[], Some(&file), &[("RSP_INSECURE_LEGACY", "")]));
        let o = flags(&[])
            .load(None, env(&[("RSP_CERT", ""), ("RSP_CA", "")]))
            .expect("empty variables are unset");
        assert!(o.cert.is_none());
        assert_eq!(o.ca.relative(), PathBuf::from("pki/ca.pem"));
    }

    #[test]
    fn a_bad_key_or_value_is_one_line_naming_the_file_and_line_or_the_variable_or_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let load = |file: &Path| flags(&[]).load(Some(file), env(&[]));
        let typo = write(
            "typo.toml",
            "cert = \"x.pem\"\nregistrar = \"127.0.0.1:3864\"\n",
        );
        let err = load(&typo).expect_err("unknown key");
        assert!(
            err.starts_with("the config file ")
                && err.contains("typo.toml line 2: unknown field `registrar`"),
            "{err}"
        );
        let bad = write("bad.toml", "\n\nregistrars = [\"nowhere\"]\n");
        let err = load(&bad).expect_err("bad address");
        assert!(
            err.contains("bad.toml line 3: registrars: ") && err.contains("nowhere"),
            "{err}"
        );
        let broken = write("broken.toml", "cert = [\n");
        let err = load(&broken).expect_err("no TOML");
        assert!(err.contains("broken.toml line 1: "), "{err}");
        let err = load(&dir.path().join("missing.toml")).expect_err("no file");
        assert!(err.contains("missing.toml"), "{err}");
        let err = flags(&[])
            .load(None, env(&[("RSP_REGISTRAR_ID", "nope")]))
            .expect_err("bad pattern");
        assert!(
            err.starts_with("RSP_REGISTRAR_ID: ") && err.contains("nope"),
            "{err}"
        );
        let err = flags(&["--registrar", "nowhere"])
            .load(Some(&typo), env(&[]))
            .expect_err("the file is read even when a flag is bad");
        assert!(err.contains("typo.toml"), "{err}");
        let err = flags(&["--registrar", "nowhere"])
            .load(None, env(&[]))
            .expect_err("bad flag");
        assert!(
            err.starts_with("--registrar: ") && err.contains("nowhere"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn durations_are_humane_or_seconds_as_before() {
        assert_eq!(secs("300"), Ok(Duration::from_secs(300)));
        assert_eq!(secs("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(secs("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(secs("1h 30m"), Ok(Duration::from_secs(5400)));
        let err = secs("soon").expect_err("no duration");
        assert!(err.contains("soon"), "{err}");
        assert!(secs("-5").is_err());
    }
}
