//! ENRP peer connections (spec §9, §11.2, §12): the ENRP listener, one dialer per
//! configured peer or peer learnt from a list (spec §9.2), and one task per authenticated connection that cuts frames for the
//! core and writes what the core sends.
//!
//! Only [`accept_loop`] and [`dial_loop`] know the transport (TLS over TCP or SCTP,
//! `listen.rs`). The TLS handshakes ([`accept_tls`],
//! [`connect_tls`]) and the connection itself ([`serve_peer`]) are generic over the stream
//! (`AsyncRead + AsyncWrite`), so that a simulated network (turmoil) can carry them.
//!
//! Which peer may do what is the core's decision (`enrp_core::registrar::enrp`, `crates/enrp-core/src/registrar/enrp/`): this file proves
//! the identity (mutual TLS, ALPN `rserpool-enrp/1`) and derives the Server ID that
//! every message of the connection must carry (ARCHITECTURE.md §3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::asap::addr::TransportAddr;
use ::asap::transport::{MessageReader, ReadError};
use ::asap::wire::param::ServerId;
use ::asap::wire::{EnrpMsg, Framer};
use store::audit::AuditLog;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trust::{LiveConnection, Peer, Protocol, TrustStore};

use super::connection::{NEXT_CONN, audit_refusal, authenticate, stopped, write_loop};
use super::listen::{self, BoxStream, Listener, Security};
use super::{ConnHandle, Counters, Event, LegacyPeer, Settings, Shared};
use enrp_core::registrar::{ConnId, Input, Remote, legacy_peer_identity};
use enrp_core::server_id_of;

/// First redial delay after a lost or refused connection; doubles up to [`REDIAL_MAX`].
const REDIAL_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two dials of one peer.
const REDIAL_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long was a working one: the next redial starts fast.
const STABLE: Duration = Duration::from_secs(2);
/// One dial's TCP connect is given up after this long and tried again (after the redial
/// delay) with a fresh SYN. Without it, a dial started during a network partition waits
/// for TCP's own SYN retransmissions, 1, 3, 7, 15, 31 and 63 s after it: a peer could
/// stay unconnected for tens of seconds after the partition healed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most registrars dialed because a peer listed them (spec §9.2) at once: the core caps
/// each list response, this caps all of them together.
const MAX_DISCOVERED: usize = 256;

/// Accepts ENRP connections until the daemon stops: mutual TLS, or with
/// [`Security::Plain`] legacy associations (plain SCTP, one message per SCTP message).
/// Those have no handshake: one is admitted when its first message's Sender ID is a
/// configured legacy peer's and its address is that peer's (ARCHITECTURE.md §4);
/// otherwise it is audited and closed.
pub(super) async fn accept_loop(listener: Listener, security: Security, shared: Shared) {
    let (settings, trust, events, audit, counters, mut stop) = shared.parts();
    let slots = listen::slots(&settings, &counters, Protocol::Enrp);
    let what = match security {
        Security::Tls => "ENRP",
        Security::Plain => "legacy ENRP",
    };
    loop {
        let Some((stream, addr, slot)) =
            listen::next_connection(&listener, &slots, &mut stop, what).await
        else {
            return;
        };
        let settings = Arc::clone(&settings);
        let trust = Arc::clone(&trust);
        let events = events.clone();
        let audit = audit.clone();
        let counters = Arc::clone(&counters);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut slot = slot;
            if security == Security::Plain {
                // No handshake: its first message decides (within the handshake timeout).
                slot.established();
                let legacy = Legacy {
                    settings: &settings,
                    events: &events,
                    audit: &audit,
                    counters: &counters,
                };
                serve_legacy(stream, addr, None, legacy, stop).await;
                return;
            }
            let Some((tls, peer)) =
                accept_tls(stream, addr, &settings, &trust, &audit, &counters).await
            else {
                return;
            };
            slot.established();
            serve_peer(
                tls, peer, addr, false, &settings, &trust, events, &audit, &counters, stop,
            )
            .await;
        });
    }
}

/// Dials `target` (`HOST:PORT` over TCP, `sctp:IP:PORT[+IP:PORT...]` over SCTP) and keeps a connection to it while the daemon runs, or,
/// with `give_up`, until it has had no connection for that long (a learnt peer that is
/// gone for good is not dialed forever).
pub(super) async fn dial_loop(target: String, give_up: Option<Duration>, shared: Shared) {
    let (settings, trust, events, audit, counters, stop) = shared.parts();
    let mut delay = REDIAL_MIN;
    let mut last_up = tokio::time::Instant::now();
    // The Server ID that answered here last: while the core has another connection to it
    // (it dialed us too, and the tie-break kept that one), dialing again would only make
    // a connection the tie-break closes, at every redial.
    let mut answered: Option<ServerId> = None;
    while !*stop.borrow() {
        if give_up.is_some_and(|g| last_up.elapsed() >= g) {
            tracing::info!(%target, "no connection to a learnt peer for too long: not dialed again");
            return;
        }
        if let Some(sid) = answered
            && peer_connected(&events, sid).await
        {
            if give_up.is_some() {
                // A learnt peer: the other connection serves; if it dies, the core asks
                // for a dial again when it declares the peer dead.
                tracing::debug!(%target, "peer connected otherwise: dialer ends");
                return;
            }
            last_up = tokio::time::Instant::now();
            delay = REDIAL_MIN;
            tokio::select! {
                () = tokio::time::sleep(REDIAL_MAX) => continue,
                () = stopped(stop.clone()) => return,
            }
        }
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&target))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            Ok((stream, addr)) => {
                if let Some((tls, peer)) =
                    connect_tls(stream, &target, addr, &settings, &trust, &audit, &counters).await
                {
                    answered = Some(server_id_of(peer.id()));
                    serve_peer(
                        tls,
                        peer,
                        addr,
                        true,
                        &settings,
                        &trust,
                        events.clone(),
                        &audit,
                        &counters,
                        stop.clone(),
                    )
                    .await;
                    last_up = tokio::time::Instant::now();
                }
            }
            Err(e) => tracing::debug!(%target, error = %e, "peer unreachable"),
        }
        delay = if started.elapsed() >= STABLE {
            REDIAL_MIN
        } else {
            (delay * 2).min(REDIAL_MAX)
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(stop.clone()) => return,
        }
    }
}

/// Opens the transport to `target` (see [`dial_loop`]). TCP targets may name a host.
async fn connect(target: &str) -> std::io::Result<(BoxStream, SocketAddr)> {
    if target.starts_with("sctp:") {
        let to = target
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        return listen::dial(&to, Protocol::Enrp, Security::Tls).await;
    }
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr()?;
    Ok((Box::new(tcp), addr))
}

/// Whether the core has a connection up to `server_id` (false when it is stopping).
async fn peer_connected(events: &mpsc::Sender<Event>, server_id: ServerId) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if events
        .send(Event::Query(super::control::Query::PeerConnected(
            server_id, tx,
        )))
        .await
        .is_err()
    {
        return false;
    }
    rx.await.unwrap_or(false)
}

/// Dials each address the core asks for ([`Action::DialPeer`](enrp_core::registrar::Action):
/// a registrar named in a peer list, or a dead peer at its advertised address)
/// with [`dial_loop`], once per registrar (an address shared with a configured peer or
/// one being dialed is not dialed again), at most [`MAX_DISCOVERED`] at once. A learnt
/// peer without a connection for [`Settings::learnt_peer_give_up`] is dropped; a later
/// list may bring it back. An SCTP endpoint is dialed over TLS/SCTP, or, where this
/// host has no SCTP, over TLS/TCP at its primary address ([`dial_target`]).
pub(super) async fn dial_discovered(mut addrs: mpsc::Receiver<TransportAddr>, shared: Shared) {
    let settings = Arc::clone(&shared.settings);
    let mut stop = shared.stop.clone();
    // A configured peer named by host name is compared by its text only.
    let configured: Vec<TransportAddr> = settings
        .peers
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let mut dialing: Vec<TransportAddr> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let addr = tokio::select! {
            a = addrs.recv() => match a {
                Some(a) => a,
                None => break,
            },
            Some(Ok(gone)) = tasks.join_next() => {
                dialing.retain(|d| *d != gone);
                continue;
            }
            _ = stop.changed() => break,
        };
        let target = dial_target(&addr, listen::sctp_available());
        if settings.peers.contains(&target)
            || configured.iter().chain(&dialing).any(|c| c.overlaps(&addr))
        {
            continue;
        }
        if tasks.len() >= MAX_DISCOVERED {
            tracing::warn!(%target, "too many peers learnt from lists: not dialed");
            continue;
        }
        tracing::info!(%target, "dialing a peer learnt from a peer list or declared dead");
        dialing.push(addr.clone());
        let dial = dial_loop(
            target.clone(),
            Some(settings.learnt_peer_give_up),
            shared.clone(),
        );
        tasks.spawn(async move {
            dial.await;
            addr
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What [`dial_loop`] dials for an advertised ENRP address: an SCTP endpoint over
/// TLS/SCTP where this host has SCTP, else over TLS/TCP at its primary address, where an
/// rsp registrar serving both serves TLS/TCP too (the address it advertises first,
/// `crates/enrp-core/src/registrar/enrp/peers.rs`).
fn dial_target(addr: &TransportAddr, sctp_here: bool) -> String {
    match addr {
        TransportAddr::Sctp(_) if !sctp_here => addr.primary().to_string(),
        _ => addr.to_string(),
    }
}

/// Dials a configured legacy peer over plain SCTP and keeps an association to it while the
/// daemon runs, unless it has one to us (RSPLIB sends on the one it dialed: the core keeps
/// that one and closes ours).
pub(super) async fn legacy_dial_loop(peer: LegacyPeer, shared: Shared) {
    let (settings, _, events, audit, counters, stop) = shared.parts();
    let to = ::asap::addr::TransportAddr::Sctp(peer.at.clone());
    let mut delay = REDIAL_MIN;
    while !*stop.borrow() {
        let wait = if peer_connected(&events, peer.server_id).await {
            REDIAL_MAX
        } else {
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(
                CONNECT_TIMEOUT,
                listen::dial(&to, Protocol::Enrp, Security::Plain),
            )
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            {
                Ok((stream, addr)) => {
                    let legacy = Legacy {
                        settings: &settings,
                        events: &events,
                        audit: &audit,
                        counters: &counters,
                    };
                    serve_legacy(stream, addr, Some(peer.server_id), legacy, stop.clone()).await;
                }
                Err(e) => tracing::debug!(%to, error = %e, "legacy peer unreachable"),
            }
            delay = if started.elapsed() >= STABLE {
                REDIAL_MIN
            } else {
                (delay * 2).min(REDIAL_MAX)
            };
            delay
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(stop.clone()) => return,
        }
    }
}

/// What a legacy peer association needs of the daemon.
#[derive(Clone, Copy)]
struct Legacy<'a> {
    settings: &'a Settings,
    events: &'a mpsc::Sender<Event>,
    audit: &'a AuditLog,
    counters: &'a Counters,
}

/// One legacy peer association, accepted (`dialed` is `None`: its first message, within
/// the handshake timeout, must name a configured legacy peer at this address) or dialed
/// to the configured peer `dialed`, until either side ends it.
async fn serve_legacy(
    stream: BoxStream,
    addr: SocketAddr,
    dialed: Option<ServerId>,
    io: Legacy<'_>,
    stop: watch::Receiver<bool>,
) {
    let Legacy {
        settings,
        events,
        audit,
        counters,
    } = io;
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = MessageReader::new(read_half, Framer::enrp(settings.max_message_len));
    let (server_id, first) = match dialed {
        Some(sid) => (sid, None),
        None => {
            let first = tokio::time::timeout(settings.handshake_timeout, reader.next()).await;
            let admitted = match first {
                Ok(Ok(Some(frame))) => {
                    let sender = EnrpMsg::decode(&frame).map(|m| (m.msg.sender, m));
                    let known = sender.as_ref().ok().and_then(|(sid, _)| {
                        settings.legacy_peers.iter().find(|p| {
                            p.server_id == *sid && p.at.addrs().iter().any(|a| a.ip() == addr.ip())
                        })
                    });
                    match (known, sender) {
                        (Some(p), Ok((_, msg))) => Ok((p.server_id, Some(msg))),
                        (_, Ok((sid, _))) => Err(format!(
                            "unauthenticated legacy ENRP association: Server ID {sid} from {} is not a configured legacy peer",
                            addr.ip()
                        )),
                        (_, Err(e)) => Err(format!("unauthenticated legacy ENRP association: {e}")),
                    }
                }
                _ => Err("legacy ENRP association: no message".to_owned()),
            };
            match admitted {
                Ok(first) => first,
                Err(detail) => {
                    tracing::warn!(%addr, %detail, "legacy ENRP association refused");
                    let reason = "legacy peer unknown";
                    audit_refusal(audit, counters, Protocol::Enrp, addr, None, reason, detail)
                        .await;
                    return;
                }
            }
        }
    };
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let client = Remote {
        id: legacy_peer_identity(addr.ip(), server_id),
        serial: identity::Serial::from_bytes(&[]),
        addr,
    };
    tracing::info!(?conn, %addr, %server_id, outbound = dialed.is_some(), "legacy ENRP association (unauthenticated)");
    let announce = Announce {
        conn,
        client,
        server_id,
        outbound: dialed.is_some(),
        first,
    };
    run_peer(announce, reader, write_half, None, settings, events, stop).await;
}

/// A peer connection as the core is told of it.
struct Announce {
    conn: ConnId,
    client: Remote,
    server_id: ServerId,
    outbound: bool,
    /// A message read before the announcement (a legacy peer's first, which named it).
    first: Option<asap::wire::Decoded<EnrpMsg>>,
}

/// Announces a peer connection to the core, then reads frames for it and writes what it
/// sends until either side ends it (or, with `live`, the peer's identity is revoked).
async fn run_peer<R, W>(
    announce: Announce,
    reader: MessageReader<R>,
    write_half: W,
    mut live: Option<LiveConnection>,
    settings: &Settings,
    events: &mpsc::Sender<Event>,
    stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Announce {
        conn,
        client,
        server_id,
        outbound,
        first,
    } = announce;
    let (tx, rx) = mpsc::channel(settings.send_queue);
    let kill = Arc::new(Notify::new());
    let writer = ConnHandle {
        tx,
        kill: Arc::clone(&kill),
    };
    let input = Input::PeerUp {
        conn,
        peer: client,
        server_id,
        outbound,
    };
    if events
        .send(Event::PeerConnected { input, writer })
        .await
        .is_err()
    {
        return;
    }
    if let Some(msg) = first
        && events
            .send(Event::Input(Input::Enrp { conn, msg }))
            .await
            .is_err()
    {
        return;
    }
    let revoked = async {
        match live.as_mut() {
            Some(live) => live.closed().await,
            // A legacy peer has no certificate to revoke.
            None => std::future::pending().await,
        }
    };
    // A peer sends a heartbeat every peer_heartbeat (spec §9.5): one silent for the idle
    // timeout, and at least twice the time after which it counts as dead, is gone.
    let idle = settings
        .idle_timeout
        .max(2 * settings.registrar.timing.peer_last_heard);
    tokio::select! {
        () = read_loop(conn, reader, events, idle) => {}
        () = write_loop(write_half, rx) => {}
        reason = revoked => tracing::info!(?conn, ?reason, "closing ENRP: revoked"),
        () = kill.notified() => {}
        () = stopped(stop) => {}
    }
    let _ = events.send(Event::Input(Input::PeerDown { conn })).await;
}

/// The server side of the ENRP handshake: mutual TLS and ALPN `rserpool-enrp/1`.
/// Failures are audited like those of ASAP.
pub(super) async fn accept_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    addr: SocketAddr,
    settings: &Settings,
    trust: &TrustStore,
    audit: &AuditLog,
    counters: &Counters,
) -> Option<(tokio_rustls::server::TlsStream<S>, Peer)> {
    let acceptor = TlsAcceptor::from(trust.server_config(Protocol::Enrp));
    authenticate(
        acceptor.accept(stream),
        Protocol::Enrp,
        addr,
        settings,
        audit,
        counters,
    )
    .await
}

/// The client side of the ENRP handshake to `target` (`HOST:PORT`). The server is
/// authenticated by its SPIFFE ID (any trusted one; the core checks its `peer` grant),
/// not by the host name.
pub(super) async fn connect_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    target: &str,
    addr: SocketAddr,
    settings: &Settings,
    trust: &TrustStore,
    audit: &AuditLog,
    counters: &Counters,
) -> Option<(tokio_rustls::client::TlsStream<S>, Peer)> {
    let host = target
        .trim_start_matches("sctp:")
        .rsplit_once(':')
        .map_or(target, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name =
        ServerName::try_from(host.to_owned()).unwrap_or_else(|_| ServerName::from(addr.ip()));
    let connector = TlsConnector::from(trust.client_config(Protocol::Enrp));
    authenticate(
        connector.connect(name, stream),
        Protocol::Enrp,
        addr,
        settings,
        audit,
        counters,
    )
    .await
}

/// One authenticated peer connection, until either side ends it: announce it to the core
/// with its derived Server ID, then read frames for the core and write what it sends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_peer<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    peer: Peer,
    addr: SocketAddr,
    outbound: bool,
    settings: &Settings,
    trust: &TrustStore,
    events: mpsc::Sender<Event>,
    audit: &AuditLog,
    counters: &Counters,
    stop: watch::Receiver<bool>,
) {
    // Registered before the last trust check, so a revocation during the handshake counts.
    let live = match trust.register_connection(&peer) {
        Ok(live) => live,
        Err(e) => {
            audit_refusal(
                audit,
                counters,
                Protocol::Enrp,
                addr,
                Some(&peer),
                "revoked",
                e.to_string(),
            )
            .await;
            return;
        }
    };
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let server_id = server_id_of(peer.id());
    let client = Remote {
        id: peer.id().clone(),
        serial: peer.serial().clone(),
        addr,
    };
    tracing::debug!(?conn, %addr, id = %client.id, %server_id, outbound, "ENRP connection");
    let (read_half, write_half) = tokio::io::split(stream);
    let reader = MessageReader::new(read_half, Framer::enrp(settings.max_message_len));
    let announce = Announce {
        conn,
        client,
        server_id,
        outbound,
        first: None,
    };
    run_peer(
        announce,
        reader,
        write_half,
        Some(live),
        settings,
        &events,
        stop,
    )
    .await;
}

/// No idle timeout here: the core's liveness timers (PRESENCE, spec §9.5) judge peers.
async fn read_loop<R: AsyncRead + Unpin>(
    conn: ConnId,
    mut reader: MessageReader<R>,
    events: &mpsc::Sender<Event>,
    idle: Duration,
) {
    loop {
        let Ok(next) = tokio::time::timeout(idle, reader.next()).await else {
            tracing::info!(?conn, "ENRP connection idle: closing");
            return;
        };
        let input = match next {
            Ok(Some(frame)) => match EnrpMsg::decode(&frame) {
                Ok(msg) => Input::Enrp { conn, msg },
                Err(error) => Input::EnrpMalformed { conn, error },
            },
            Ok(None) => return,
            Err(ReadError::Framing(error)) => {
                let _ = events
                    .send(Event::Input(Input::EnrpMalformed { conn, error }))
                    .await;
                return;
            }
            Err(e) => {
                tracing::debug!(?conn, error = %e, "ENRP connection ended");
                return;
            }
        };
        if events.send(Event::Input(input)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use asap::wire::param::ServerId;
    use enrp_core::registrar::Config;

    #[test]
    fn an_sctp_peer_is_dialed_over_tcp_where_there_is_no_sctp() {
        let sctp: TransportAddr = "sctp:192.0.2.1:9902+192.0.2.2:9902".parse().expect("sctp");
        assert_eq!(
            dial_target(&sctp, true),
            "sctp:192.0.2.1:9902+192.0.2.2:9902"
        );
        assert_eq!(dial_target(&sctp, false), "192.0.2.1:9902");
        let tcp: TransportAddr = "192.0.2.1:9902".parse().expect("tcp");
        assert_eq!(dial_target(&tcp, true), "192.0.2.1:9902");
    }

    /// A learnt peer that never answers is given up after `give_up`; a configured one
    /// (`None`) is dialed until the daemon stops.
    #[tokio::test]
    async fn a_learnt_peer_without_a_connection_is_given_up() {
        let ca = trust::testing::TestCa::new("acme.test");
        let trust = Arc::new(
            TrustStore::new(ca.leaf("registrar/r1").issue().identity()).expect("trust store"),
        );
        let store = store::db::Store::in_memory().await.expect("store");
        let audit = AuditLog::start(&store, store::audit::AuditConfig::default())
            .await
            .expect("audit log");
        // A port nobody listens on: every connect is refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let settings = Arc::new(Settings::new(
            "127.0.0.1:0".parse().expect("address"),
            Config::new(ServerId::new(1).expect("non-zero")),
        ));
        let (events, _rx) = mpsc::channel(8);
        let (stop_tx, stop) = watch::channel(false);
        let core = enrp_core::registrar::Core::new(settings.registrar.clone(), Vec::new());
        let (jobs, _jobs_rx) = mpsc::channel(1);
        let dial = |give_up| {
            tokio::spawn(dial_loop(
                closed.to_string(),
                give_up,
                Shared {
                    settings: Arc::clone(&settings),
                    trust: Arc::clone(&trust),
                    events: events.clone(),
                    audit: audit.clone(),
                    counters: Arc::new(Counters::default()),
                    stop: stop.clone(),
                    view: Arc::clone(core.read_view()),
                    audit_jobs: jobs.downgrade(),
                },
            ))
        };
        let learnt = dial(Some(Duration::from_millis(300)));
        let configured = dial(None);
        tokio::time::timeout(Duration::from_secs(10), learnt)
            .await
            .expect("the learnt peer is given up")
            .expect("the dialer ends cleanly");
        assert!(!configured.is_finished(), "a configured peer is dialed on");
        stop_tx.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), configured)
            .await
            .expect("the configured dialer stops with the daemon")
            .expect("the dialer ends cleanly");
    }
}
