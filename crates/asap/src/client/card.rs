//! A PE's business card (spec §7.8): the PE itself, then the PEs a pool user should fail
//! over to, which by default the PE learns by resolving its own pool, refreshed like a
//! pool user's cache ([`super::pu::DEFAULT_STALE`]).

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::watch;
use trust::TrustStore;

use super::Error;
use super::pe::PeConfig;
use super::pu::{DEFAULT_STALE, PoolUser, PuConfig};
use crate::wire::param::{PeId, PoolElement};
use crate::wire::{AsapMsg, PeEntry};

/// Most PEs a business card names besides the PE itself. A PU tries the card's PEs in
/// order and then falls back to its pool policy, so a few candidates decide a failover;
/// more only lengthen every session's start (each PE parameter is ~40 bytes).
pub const MAX_CARD_ALTERNATES: usize = 8;

/// Which PEs a PE's business card names after the PE itself (`rsp pe --business-card`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Alternates {
    /// None (`self`): the PU falls back to its pool policy.
    SelfOnly,
    /// The pool's other PEs in the registrar's selection order, as this PE sees them by
    /// resolving its own pool (`auto`), at most [`MAX_CARD_ALTERNATES`].
    #[default]
    Auto,
    /// These PEs in this order (`PE_ID,...`), those of them the resolution of the pool
    /// finds (a card carries each PE's transport, which only the registrar knows).
    Listed(Vec<PeId>),
}

impl FromStr for Alternates {
    type Err = String;

    /// `self`, `auto`, or PE IDs separated by commas, in hex (`0x1a2b3c4d`, as `rsp`
    /// prints them) or decimal; at most [`MAX_CARD_ALTERNATES`].
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "self" => return Ok(Self::SelfOnly),
            "auto" => return Ok(Self::Auto),
            _ => {}
        }
        let ids = s
            .split(',')
            .map(|w| {
                let w = w.trim();
                let n = match w.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => w.parse(),
                };
                n.ok()
                    .and_then(PeId::new)
                    .ok_or_else(|| format!("{w:?} is not a PE ID (non-zero, hex 0x… or decimal)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() > MAX_CARD_ALTERNATES {
            return Err(format!(
                "{} PE IDs; a business card names at most {MAX_CARD_ALTERNATES}",
                ids.len()
            ));
        }
        Ok(Self::Listed(ids))
    }
}

/// The PEs `mode` puts on the card of PE `me`, from a resolution of its pool: never `me`,
/// each once, at most [`MAX_CARD_ALTERNATES`].
pub fn alternates(mode: &Alternates, me: PeId, resolved: &[PeEntry]) -> Vec<PoolElement> {
    let others = resolved
        .iter()
        .map(|e| &e.pool_element)
        .filter(|p| p.pe_id != me);
    let mut picked: Vec<PoolElement> = match mode {
        Alternates::SelfOnly => Vec::new(),
        Alternates::Auto => others.cloned().collect(),
        Alternates::Listed(ids) => {
            let others: Vec<&PoolElement> = others.collect();
            ids.iter()
                .filter_map(|id| others.iter().find(|p| p.pe_id == *id).map(|p| (*p).clone()))
                .collect()
        }
    };
    let mut seen = Vec::with_capacity(picked.len());
    picked.retain(|p| {
        let new = !seen.contains(&p.pe_id);
        seen.push(p.pe_id);
        new
    });
    picked.truncate(MAX_CARD_ALTERNATES);
    picked
}

/// What [`keep_current`] reports, once per change.
#[derive(Debug)]
#[non_exhaustive]
pub enum CardReport<'a> {
    /// The card now names this many PEs besides this one.
    Names(usize),
    /// Resolving the pool failed; the card stays as it was.
    Failed(&'a Error),
}

/// Keeps `card` current for the PE of `config`: resolves its pool once `start` completes
/// (when the PE has registered: before, its pool may not exist yet) and then every
/// [`DEFAULT_STALE`] (the pool's PEs come and go), and publishes its card with
/// [`PeConfig::business_card_with`] whenever the alternates change. `report` hears how
/// many PEs the card names whenever that number changes, and of a failed resolution
/// (which keeps the last card) once per change of error (0x9 after registering: the PE
/// may not resolve its pool, see docs/CLIENTS.md). Runs until `card` has no receiver;
/// with [`Alternates::SelfOnly`] it returns at once.
pub async fn keep_current(
    trust: Arc<TrustStore>,
    config: PeConfig,
    card: watch::Sender<AsapMsg>,
    start: impl Future<Output = ()>,
    mut report: impl FnMut(CardReport<'_>),
) {
    if config.business_card == Alternates::SelfOnly {
        return;
    }
    tokio::select! {
        () = start => {}
        () = card.closed() => return,
    }
    let mut pu = PuConfig::new(
        Vec::<std::net::SocketAddr>::new(),
        config.pool_handle.clone(),
    );
    pu.registrars.clone_from(&config.registrars);
    pu.discovery.clone_from(&config.discovery);
    pu.insecure_legacy = config.insecure_legacy;
    pu.namespace.clone_from(&config.namespace);
    let users = PoolUser::new(trust, pu);
    let mut last_error: Option<String> = None;
    let mut last_count: Option<usize> = None;
    let mut every = tokio::time::interval(DEFAULT_STALE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = card.closed() => return,
        }
        match users.resolve_with_retries().await {
            Ok(resolved) => {
                let others =
                    alternates(&config.business_card, config.pe_id, &resolved.pool_elements);
                let next = config.business_card_with(&others);
                card.send_if_modified(|c| {
                    let changed = *c != next;
                    if changed {
                        *c = next;
                    }
                    changed
                });
                last_error = None;
                if last_count != Some(others.len()) {
                    report(CardReport::Names(others.len()));
                    last_count = Some(others.len());
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    report(CardReport::Failed(&e));
                    last_error = Some(text);
                    last_count = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::num::NonZeroU16;

    use super::*;
    use crate::wire::param::{Address, Policy, Transport, TransportUse};

    fn id(n: u32) -> PeId {
        PeId::new(n).expect("non-zero")
    }

    fn entry(n: u32) -> PeEntry {
        PeEntry {
            pool_element: PoolElement {
                pe_id: id(n),
                home_server_id: 0,
                registration_life: 300_000,
                user_transport: Transport::Tcp {
                    port: NonZeroU16::new(7000).expect("non-zero"),
                    transport_use: TransportUse::DataPlusControl,
                    addr: Address::new(Ipv4Addr::LOCALHOST),
                },
                policy: Policy::RoundRobin,
                asap_transport: None,
                labels: Default::default(),
                status: Default::default(),
                serving_identity: None,
            },
            registrant: None,
        }
    }

    fn ids(pes: &[PoolElement]) -> Vec<u32> {
        pes.iter().map(|p| p.pe_id.get()).collect()
    }

    #[test]
    fn the_card_names_the_pools_other_pes_or_the_listed_ones_never_itself_and_at_most_eight() {
        let resolved: Vec<PeEntry> = [3, 1, 2, 3].into_iter().map(entry).collect();
        assert_eq!(
            ids(&alternates(&Alternates::Auto, id(1), &resolved)),
            [3, 2]
        );
        assert!(alternates(&Alternates::SelfOnly, id(1), &resolved).is_empty());
        // Listed: in the listed order, only those the pool has, never the PE itself.
        let listed = Alternates::Listed(vec![id(2), id(9), id(1), id(3)]);
        assert_eq!(ids(&alternates(&listed, id(1), &resolved)), [2, 3]);
        // A big pool: the first eight of the registrar's order.
        let big: Vec<PeEntry> = (1..=40).map(entry).collect();
        let auto = alternates(&Alternates::Auto, id(5), &big);
        assert_eq!(auto.len(), MAX_CARD_ALTERNATES);
        assert_eq!(ids(&auto), [1, 2, 3, 4, 6, 7, 8, 9]);
    }

    #[test]
    fn the_flag_parses_self_auto_and_pe_ids_and_refuses_the_rest() {
        assert_eq!("self".parse(), Ok(Alternates::SelfOnly));
        assert_eq!("auto".parse(), Ok(Alternates::Auto));
        assert_eq!(
            "0x0000002a, 7".parse(),
            Ok(Alternates::Listed(vec![id(42), id(7)]))
        );
        for bad in ["", "0", "0x", "x12", "auto,1", "4294967296"] {
            assert!(bad.parse::<Alternates>().is_err(), "{bad:?}");
        }
        let nine = (1..=9).map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        assert!(
            nine.parse::<Alternates>()
                .unwrap_err()
                .contains("at most 8")
        );
    }
}
