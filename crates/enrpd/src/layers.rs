//! `enrpd run`'s configuration layers (issue 24): the defaults of [`RunConfig`], the TOML
//! file of `--config`, the `ENRPD_*` variables and the flags, lowest first, merged by
//! figment and read by `RunConfig`'s one `Deserialize`.

use std::path::PathBuf;

use enrp::config::{OPTIONS, RunConfig, Takes};

/// `enrpd run`'s arguments: the config file, and the options given as flags (the top
/// layer).
pub(crate) struct RunArgs {
    /// `--config` (or ENRPD_CONFIG).
    pub(crate) config: Option<PathBuf>,
    flags: figment::value::Dict,
}

impl clap::Args for RunArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let defaults = serde_json::to_value(RunConfig::default()).unwrap_or_default();
        let config = clap::Arg::new("config")
            .long("config")
            .env("ENRPD_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("A TOML file with any of the options below (names with `_` instead of `-`, e.g. `asap_listen = \"[::]:3864\"`). Flags and ENRPD_* variables override it.");
        cmd.arg(config)
            .args(OPTIONS.iter().map(|&(key, takes, help)| {
                let mut help = help.to_owned();
                match defaults.get(key) {
                    Some(serde_json::Value::String(s)) => {
                        help.push_str(&format!(" [default: {s}]"))
                    }
                    Some(serde_json::Value::Number(n)) => {
                        help.push_str(&format!(" [default: {n}]"))
                    }
                    _ => {}
                }
                help.push_str(&format!(" [env: ENRPD_{}]", key.to_uppercase()));
                let arg = clap::Arg::new(key).help(help);
                match takes {
                    Takes::Value(name) => arg
                        .long(key.replace('_', "-"))
                        .value_name(name)
                        .action(clap::ArgAction::Set),
                    Takes::Repeated(flag, name) => arg
                        .long(flag)
                        .value_name(name)
                        .action(clap::ArgAction::Append),
                    Takes::Switch => arg
                        .long(key.replace('_', "-"))
                        .action(clap::ArgAction::SetTrue),
                }
            }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use figment::value::Value;
        let mut flags = figment::value::Dict::new();
        for &(key, takes, _) in OPTIONS {
            if matches.value_source(key) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let values = || {
                matches
                    .get_many::<String>(key)
                    .into_iter()
                    .flatten()
                    // As written: `RunConfig` reads every value from text as from the
                    // file's types (`--legacy-namespace 007` stays `007`).
                    .map(|v| Value::from(v.clone()))
            };
            let value = match takes {
                Takes::Switch => Value::from(true),
                Takes::Repeated(..) => Value::from(values().collect::<Vec<_>>()),
                Takes::Value(_) => match values().next() {
                    Some(v) => v,
                    None => continue,
                },
            };
            flags.insert(key.to_owned(), value);
        }
        Ok(Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// A layer of values as written: the flags, or the variables.
struct Layer {
    name: &'static str,
    values: figment::value::Dict,
}

/// [`Layer::name`] of the variables (errors name the variable, not the key).
const VARIABLES: &str = "the ENRPD_ variables";

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.values.clone()))
    }
}

/// The ENRPD_* variables of the options (not ENRPD_LOG, ENRPD_CONFIG, …), as written:
/// figment's own parsing would read `ENRPD_LEGACY_NAMESPACE=007` as the number 7.
fn env_layer() -> Layer {
    let keys = RunConfig::keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values = figment::providers::Env::prefixed("ENRPD_")
        .only(&keys)
        .iter()
        .map(|(key, value)| (key.to_string(), figment::value::Value::from(value)))
        .collect();
    Layer {
        name: VARIABLES,
        values,
    }
}

impl RunArgs {
    /// The layers, lowest first: the defaults (`RunConfig`'s), the config file, the
    /// ENRPD_* variables, the flags.
    fn figment(&self) -> figment::Figment {
        use figment::providers::Format as _;
        let mut layers = figment::Figment::new();
        if let Some(path) = &self.config {
            layers = layers.merge(figment::providers::Toml::file_exact(path));
        }
        layers.merge(env_layer()).merge(Layer {
            name: "the command line",
            values: self.flags.clone(),
        })
    }

    /// The merged configuration, or one line naming the key at fault and where it came
    /// from.
    pub(crate) fn load(&self) -> Result<RunConfig, String> {
        let config: RunConfig = self
            .figment()
            .extract()
            .map_err(|e| describe(e, self.config.as_deref()))?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The config file's keys and values as written (what a SIGHUP compares), after
    /// checking that the layers with it still make a valid configuration.
    pub(crate) fn file_table(&self) -> Result<Option<figment::value::Dict>, String> {
        use figment::providers::Format as _;
        let Some(path) = &self.config else {
            return Ok(None);
        };
        self.load()?;
        let mut data = figment::Provider::data(&figment::providers::Toml::file_exact(path))
            .map_err(|e| describe(e, Some(path)))?;
        Ok(Some(
            data.remove(&figment::Profile::Default).unwrap_or_default(),
        ))
    }
}

/// One line for a configuration error: the key (as the variable, if it came from one),
/// what is wrong, and the layer.
fn describe(e: figment::Error, file: Option<&std::path::Path>) -> String {
    use figment::error::Kind;
    let key = e.path.join(".");
    let from_env = e.metadata.as_ref().is_some_and(|m| m.name == VARIABLES);
    let layer = match (&e.metadata, file) {
        (Some(m), _) if from_env => format!(" (from {})", m.name),
        (Some(m), _) => match &m.source {
            Some(source) => format!(" (in {source})"),
            None => format!(" (from {})", m.name),
        },
        (None, Some(f)) => format!(" (in {})", f.display()),
        (None, None) => String::new(),
    };
    // Some messages span lines (a TOML parse error quotes the line with a caret): keep
    // the prose, one line.
    let kind = e
        .kind
        .to_string()
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with(' ') && !l.contains(" | "))
        .collect::<Vec<_>>()
        .join(": ");
    match &e.kind {
        Kind::UnknownField(field, _) => format!("unknown key `{field}`{layer}"),
        Kind::MissingField(field) => format!("missing key `{field}`{layer}"),
        _ if from_env => format!("ENRPD_{}: {kind}{layer}", key.to_uppercase()),
        _ if key.is_empty() => format!("{kind}{layer}"),
        _ => format!("{key}: {kind}{layer}"),
    }
}

/// The keys whose values differ between two versions of the config file, sorted.
pub(crate) fn changed_keys(
    before: &figment::value::Dict,
    after: &figment::value::Dict,
) -> Vec<String> {
    let mut keys: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `enrpd run ARGS…` as parsed.
    fn run_args(args: &[&str]) -> RunArgs {
        let cmd = <RunArgs as clap::Args>::augment_args(clap::Command::new("run"));
        let matches = cmd
            .try_get_matches_from(["run"].iter().chain(args))
            .expect("parses");
        <RunArgs as clap::FromArgMatches>::from_arg_matches(&matches).expect("run args")
    }

    #[test]
    fn a_flag_beats_a_variable_beats_the_file_beats_the_default() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "enrpd.toml",
                "rate_resolutions = 1\nrate_registrations = 2\nrate_unreachable = 3\npeers = [\"f:1\"]\n",
            )?;
            jail.set_env("ENRPD_RATE_RESOLUTIONS", "10");
            jail.set_env("ENRPD_RATE_REGISTRATIONS", "20");
            jail.set_env("ENRPD_PEERS", "e:1,e:2");
            jail.set_env("ENRPD_ALLOW_LOOPBACK", "1");
            jail.set_env("ENRPD_LEGACY_NAMESPACE", "007");
            // Not options: ignored, as before.
            jail.set_env("ENRPD_LOG", "debug");
            let c = run_args(&["--config", "enrpd.toml", "--rate-resolutions", "100"])
                .load()
                .expect("valid");
            assert_eq!(c.rate_resolutions, 100, "the flag");
            assert_eq!(c.rate_registrations, 20, "the variable");
            assert_eq!(c.rate_unreachable, 3, "the file");
            assert_eq!(c.max_pools_per_identity, 100, "the default");
            assert_eq!(c.peers, ["e:1", "e:2"], "a comma-separated variable");
            assert!(c.allow_loopback);
            assert_eq!(
                c.legacy_namespace.as_deref(),
                Some("007"),
                "text stays text"
            );
            let c = run_args(&["--config", "enrpd.toml", "--peer", "a:1", "--peer", "b:1"])
                .load()
                .expect("valid");
            assert_eq!(c.peers, ["a:1", "b:1"], "repeated flags beat the variable");
            let c = run_args(&[]).load().expect("no file");
            assert_eq!(c.rate_unreachable, 10, "without --config the default");
            Ok(())
        });
    }

    #[test]
    fn the_store_url_comes_from_the_file_the_variable_or_the_flag() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("enrpd.toml", "store = \"postgres://rsp@db/fleet\"\n")?;
            let c = run_args(&["--config", "enrpd.toml"]).load().expect("valid");
            assert_eq!(
                c.store.as_deref(),
                Some("postgres://rsp@db/fleet"),
                "the file"
            );
            jail.set_env("ENRPD_STORE", "postgres://rsp@db/other");
            let c = run_args(&["--config", "enrpd.toml"]).load().expect("valid");
            assert_eq!(
                c.store.as_deref(),
                Some("postgres://rsp@db/other"),
                "the variable"
            );
            let c = run_args(&["--store", "sqlite:///var/lib/rsp.db"])
                .load()
                .expect("valid");
            assert_eq!(
                c.store.as_deref(),
                Some("sqlite:///var/lib/rsp.db"),
                "the flag"
            );
            jail.clear_env();
            let c = run_args(&[]).load().expect("valid");
            assert_eq!(c.store, None, "the default: the store init recorded");
            Ok(())
        });
    }

    #[test]
    fn durations_are_humane_strings_or_numbers_in_every_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "enrpd.toml",
                "keep_alive_interval_ms = \"250ms\"\nkeep_alive_timeout_ms = 1500\ncheckpoint_log_secs = \"1h\"\n",
            )?;
            jail.set_env("ENRPD_PEER_HEARTBEAT_MS", "2s");
            jail.set_env("ENRPD_TAKEOVER_EXPIRY_MS", "9000");
            let c = run_args(&["--config", "enrpd.toml", "--mentor-timeout-ms", "1m"])
                .load()
                .expect("valid");
            assert_eq!(c.keep_alive_interval_ms.0, Duration::from_millis(250));
            assert_eq!(c.keep_alive_timeout_ms.0, Duration::from_millis(1500));
            assert_eq!(c.checkpoint_log_secs.0, Duration::from_secs(3600));
            assert_eq!(c.peer_heartbeat_ms.0, Duration::from_secs(2));
            assert_eq!(c.takeover_expiry_ms.0, Duration::from_secs(9));
            assert_eq!(c.mentor_timeout_ms.0, Duration::from_secs(60));
            let c = run_args(&["--keep-alive-interval-ms", "200"])
                .load()
                .expect("valid");
            assert_eq!(c.keep_alive_interval_ms.0, Duration::from_millis(200));
            Ok(())
        });
    }

    #[test]
    fn a_bad_key_or_value_is_one_line_naming_the_key_and_its_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "asap_listn = \"[::]:3864\"\n")?;
            let err = run_args(&["--config", "typo.toml"])
                .load()
                .expect_err("typo");
            assert!(
                err.contains("asap_listn") && err.contains("typo.toml"),
                "{err}"
            );
            jail.create_file("bad.toml", "rate_resolutions = \"lots\"\n")?;
            let err = run_args(&["--config", "bad.toml"])
                .load()
                .expect_err("bad value");
            assert!(
                err.starts_with("rate_resolutions: ") && err.contains("bad.toml"),
                "{err}"
            );
            let err = run_args(&["--keep-alive-timeout-ms", "soon"])
                .load()
                .expect_err("flag");
            assert!(
                err.starts_with("keep_alive_timeout_ms: ") && err.contains("command line"),
                "{err}"
            );
            jail.create_file("broken.toml", "asap_listen = [\n")?;
            let err = run_args(&["--config", "broken.toml"])
                .load()
                .expect_err("no TOML");
            assert!(
                err.contains("line 1") && err.contains("broken.toml") && !err.contains('\n'),
                "{err}"
            );
            jail.create_file("peers.toml", "peers = 5\n")?;
            let err = run_args(&["--config", "peers.toml"])
                .load()
                .expect_err("no list");
            assert!(err.starts_with("peers: ") && err.contains("list"), "{err}");
            let err = run_args(&["--config", "missing.toml"])
                .load()
                .expect_err("no file");
            assert!(err.contains("missing.toml") && !err.contains('\n'), "{err}");
            jail.set_env("ENRPD_ADMIN_LISTEN", "nowhere");
            let err = run_args(&[]).load().expect_err("variable");
            assert!(
                err.starts_with("ENRPD_ADMIN_LISTEN: ") && err.contains("nowhere"),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
            let err = run_args(&[
                "--legacy-peer",
                "sctp:127.0.0.1:9901=7",
                "--admin-listen",
                "off",
            ])
            .load()
            .expect_err("needs its listener");
            assert_eq!(err, "legacy_peers needs legacy_enrp_listen");
            Ok(())
        });
    }

    #[test]
    fn a_reload_names_the_config_keys_that_changed_and_refuses_a_bad_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("enrpd.toml");
        let path_text = path.to_str().expect("utf-8");
        std::fs::write(
            &path,
            "asap_listen = \"[::]:3864\"\nallow_loopback = true\n",
        )
        .expect("write");
        let args = run_args(&["--config", path_text]);
        let before = args.file_table().expect("valid").expect("a file");
        std::fs::write(
            &path,
            "asap_listen = \"[::]:3865\"\nallow_loopback = true\npeers = [\"b:9902\"]\n",
        )
        .expect("write");
        let after = args.file_table().expect("valid").expect("a file");
        assert_eq!(changed_keys(&before, &after), ["asap_listen", "peers"]);
        assert!(changed_keys(&after, &after).is_empty());
        std::fs::write(&path, "asap_listn = \"[::]:3864\"\n").expect("write");
        let err = args.file_table().expect_err("unknown key");
        assert!(err.contains("asap_listn"), "{err}");
    }
}
