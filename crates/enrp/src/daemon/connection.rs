//! One task per ASAP connection: TLS handshake (none on a legacy listener), then reading
//! frames for the core and writing what the core sends, until either side ends it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ::asap::transport::{MessageReader, ReadError, write_message};
use ::asap::wire::{AsapMsg, Decoded, Framer, MsgType};
use identity::audit::{AuditAction, Durability};
use store::audit::{AuditLog, Outcome, Record};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use trust::{LiveConnection, Peer, Protocol, TrustStore};

use super::driver::{self, AuditJob};
use super::limits::{Buckets, Kind, Over};
use super::listen::{self, BoxStream, Listener};
use super::on_wake::OnWake;
use super::tally::{self, Tally};
use super::{ConnHandle, Counters, Event, Outgoing, Settings, Shared};
use enrp_core::registrar::{ClientView, ConnId, ConnRng, Input, ReadView, Refresh, Remote};

pub(super) static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts ASAP connections on `listener` until the daemon stops: mutual TLS, or with
/// `legacy`, none (a plain SCTP listener for RSPLIB and the like; its clients are known
/// by their address and confined to the core's legacy namespace).
pub(super) async fn accept_loop(listener: Listener, legacy: bool, shared: Shared) {
    let mut stop = shared.stop.clone();
    let slots = listen::slots(&shared.settings, &shared.counters, Protocol::Asap);
    loop {
        let Some((stream, addr, addrs, slot)) =
            listen::next_association(&listener, &slots, &mut stop, "ASAP").await
        else {
            return;
        };
        let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
        let task = serve(conn, (stream, slot), addr, addrs, legacy, shared.clone());
        tokio::spawn(task);
    }
}

/// Audits a connection refused before it reached the core (handshake failures, revoked
/// or unusable identities): counted always, written in aggregate ([`super::refusals`]:
/// one record per source per second, at most the budget per listener), so that nobody
/// without credentials can make the registrar write a row per connection. Batched:
/// nothing waits for its commit.
pub(super) async fn audit_refusal(
    audit: &AuditLog,
    counters: &Counters,
    protocol: Protocol,
    addr: std::net::SocketAddr,
    peer: Option<&Peer>,
    reason: &'static str,
    detail: String,
) {
    let (scope, record) = refusal(counters, protocol, addr, peer, reason, &detail);
    let Some(record) = counters.note_refusal(scope, record) else {
        return;
    };
    if let Err(e) = audit.append(record, Durability::Batched).await {
        tracing::error!(error = %e, "cannot audit a refused connection");
    }
}

/// [`audit_refusal`] where nothing may wait: the record, if it is to be written, goes
/// with the next aggregate records (within a second).
pub(super) fn refused_later(
    counters: &Counters,
    protocol: Protocol,
    addr: std::net::SocketAddr,
    reason: &'static str,
    detail: String,
) {
    let (scope, record) = refusal(counters, protocol, addr, None, reason, &detail);
    counters.note_refusal_later(scope, record);
}

/// Counts a refused connection; its audit record and the scope it is aggregated in.
fn refusal(
    counters: &Counters,
    protocol: Protocol,
    addr: std::net::SocketAddr,
    peer: Option<&Peer>,
    reason: &'static str,
    detail: &str,
) -> (&'static str, Record) {
    counters.handshake_failed(reason);
    let mut record = Record::new(
        super::now_ms(),
        AuditAction::Handshake,
        Outcome::Refused(reason.into()),
    );
    record.remote = Some(addr);
    if let Some(p) = peer {
        record.actor = Some(p.id().clone());
        record.serial = Some(p.serial().clone());
    }
    // The text comes from the TLS library or a certificate: keep it bounded and printable.
    record.detail = Some(super::audit_text(detail));
    let scope = match protocol {
        Protocol::Asap => "asap",
        Protocol::Enrp => "enrp",
    };
    (scope, record)
}

/// Either end of a TLS stream, for what a finished handshake proves.
pub(super) trait TlsSession {
    /// The session's state: ALPN, peer certificates.
    fn common(&self) -> &tokio_rustls::rustls::CommonState;
}

impl<S> TlsSession for tokio_rustls::server::TlsStream<S> {
    fn common(&self) -> &tokio_rustls::rustls::CommonState {
        self.get_ref().1
    }
}

impl<S> TlsSession for tokio_rustls::client::TlsStream<S> {
    fn common(&self) -> &tokio_rustls::rustls::CommonState {
        self.get_ref().1
    }
}

/// Awaits a TLS handshake (bounded by the handshake timeout), then insists on
/// `protocol`'s ALPN (rustls lets a client that offers none through, spec §11.2) and a
/// SPIFFE identity. Every failure is counted and audited. Shared by the ASAP listener and
/// both ends of ENRP.
pub(super) async fn authenticate<T: TlsSession>(
    handshake: impl Future<Output = std::io::Result<T>>,
    protocol: Protocol,
    addr: std::net::SocketAddr,
    settings: &Settings,
    audit: &AuditLog,
    counters: &Counters,
) -> Option<(T, Peer)> {
    let refused = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => match protocol
            .check_alpn(tls.common())
            .and_then(|()| Peer::from_tls(tls.common()))
        {
            Ok(peer) => return Some((tls, peer)),
            Err(e) => {
                tracing::info!(%addr, ?protocol, error = %e, "connection refused after handshake");
                ("identity", e.to_string())
            }
        },
        Ok(Err(e)) => {
            tracing::info!(%addr, ?protocol, error = %e, "TLS handshake failed");
            ("tls-handshake", e.to_string())
        }
        Err(_) => {
            tracing::info!(%addr, ?protocol, "TLS handshake timed out");
            ("tls-timeout", String::new())
        }
    };
    let (reason, detail) = refused;
    audit_refusal(audit, counters, protocol, addr, None, reason, detail).await;
    None
}

async fn serve(
    conn: ConnId,
    (stream, mut slot): (BoxStream, listen::Slot),
    addr: std::net::SocketAddr,
    addrs: Vec<std::net::IpAddr>,
    legacy: bool,
    shared: Shared,
) {
    let (view, jobs) = (Arc::clone(&shared.view), shared.audit_jobs.clone());
    let (settings, trust, events, audit, counters, stop) = shared.parts();
    if legacy {
        // No handshake: admitted as it is (the address is all there is to know).
        slot.established();
        tracing::info!(?conn, %addr, "legacy ASAP connection (unauthenticated)");
        let io = Io {
            settings: &settings,
            events: &events,
            counters: &counters,
            view: &view,
            jobs: &jobs,
        };
        run(
            conn,
            stream,
            legacy_client(addr),
            addrs,
            None,
            io,
            stop,
            None,
        )
        .await;
        return;
    }
    // A fresh config per handshake: revocations and trust changes apply at once.
    let acceptor = TlsAcceptor::from(trust.server_config(Protocol::Asap));
    let Some((tls, peer)) = authenticate(
        acceptor.accept(stream),
        Protocol::Asap,
        addr,
        &settings,
        &audit,
        &counters,
    )
    .await
    else {
        return;
    };
    slot.established();
    let Some(_identity) =
        listen::admit_identity(&counters, peer.id(), settings.max_connections_per_identity)
    else {
        tracing::info!(%addr, id = %peer.id(), "too many connections of this identity: closed");
        let detail = format!(
            "more than {} connections of this identity",
            settings.max_connections_per_identity
        );
        let reason = "per-identity-cap";
        audit_refusal(
            &audit,
            &counters,
            Protocol::Asap,
            addr,
            Some(&peer),
            reason,
            detail,
        )
        .await;
        return;
    };
    let Some((client, live)) = admit(&peer, addr, &trust, &audit, &counters).await else {
        return;
    };
    let io = Io {
        settings: &settings,
        events: &events,
        counters: &counters,
        view: &view,
        jobs: &jobs,
    };
    run(conn, tls, client, addrs, Some(live), io, stop, None).await;
}

/// A legacy client: no handshake and no certificate, the address is all there is to know.
fn legacy_client(addr: std::net::SocketAddr) -> Remote {
    Remote {
        id: enrp_core::registrar::legacy_identity(addr.ip()),
        serial: identity::Serial::from_bytes(&[]),
        addr,
    }
}

/// Registers an authenticated connection for revocation, then checks its identity once
/// more (registered first, so that a revocation landing during the handshake is not
/// missed). `None`, audited, when it is no longer trusted.
async fn admit(
    peer: &Peer,
    addr: std::net::SocketAddr,
    trust: &TrustStore,
    audit: &AuditLog,
    counters: &Counters,
) -> Option<(Remote, LiveConnection)> {
    match trust.register_connection(peer) {
        Ok(live) => Some((
            Remote {
                id: peer.id().clone(),
                serial: peer.serial().clone(),
                addr,
            },
            live,
        )),
        Err(e) => {
            tracing::info!(%addr, id = %peer.id(), error = %e, "revoked during the handshake");
            audit_refusal(
                audit,
                counters,
                Protocol::Asap,
                addr,
                Some(peer),
                "revoked",
                e.to_string(),
            )
            .await;
            None
        }
    }
}

/// What a connection task needs of the daemon.
#[derive(Clone, Copy)]
struct Io<'a> {
    settings: &'a Settings,
    events: &'a mpsc::Sender<Event>,
    /// Also the rate limiter ([`super::limits`]).
    counters: &'a Counters,
    /// Resolutions are answered from it, where they arrive ([`read_loop`]).
    view: &'a ReadView,
    /// Where those resolutions are audited: the core task's way to the audit writer.
    jobs: &'a mpsc::WeakSender<AuditJob>,
}

/// Most handshakes with taken-over PEs in flight at once (spec §12.6): a takeover of
/// many PEs dials them in this many streams, not all at once.
pub(super) const MAX_PE_DIALS: usize = 64;

/// A connect to a PE's listener (TCP or SCTP) that takes longer is abandoned.
const PE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What [`Action::DialPe`](enrp_core::registrar::Action::DialPe) asks for.
#[derive(Debug)]
pub(super) struct PeDial {
    pub(super) pe: enrp_core::registrar::PeKey,
    pub(super) addr: ::asap::addr::TransportAddr,
    pub(super) registrant: identity::SpiffeId,
}

/// Dials taken-over PEs (spec §12.6), at most [`MAX_PE_DIALS`] at a time. Each is
/// authenticated as the identity it registered with, then served like an accepted
/// connection, starting with the H=1 keep-alive. A legacy PE (RSPLIB's) is dialed over
/// plain SCTP and served like a client of the legacy listener: known by its address.
pub(super) async fn dial_pes(mut dials: mpsc::Receiver<PeDial>, shared: Shared) {
    let (view, jobs) = (Arc::clone(&shared.view), shared.audit_jobs.clone());
    let (settings, trust, events, audit, counters, mut stop) = shared.parts();
    let slots = Arc::new(Semaphore::new(MAX_PE_DIALS));
    loop {
        let dial = tokio::select! {
            d = dials.recv() => match d { Some(d) => d, None => return },
            _ = stop.changed() => return,
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (settings, trust, events) = (Arc::clone(&settings), Arc::clone(&trust), events.clone());
        let (audit, counters, stop) = (audit.clone(), Arc::clone(&counters), stop.clone());
        let (view, jobs) = (Arc::clone(&view), jobs.clone());
        tokio::spawn(async move {
            let legacy = enrp_core::registrar::is_legacy(&dial.registrant);
            let security = if legacy {
                listen::Security::Plain
            } else {
                listen::Security::Tls
            };
            let dialed = connect_pe(&dial.addr, security).await;
            let io = Io {
                settings: &settings,
                events: &events,
                counters: &counters,
                view: &view,
                jobs: &jobs,
            };
            let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
            let then = Some(Input::PeDialed {
                conn,
                pe: dial.pe.clone(),
            });
            let Some((stream, addr, addrs)) = dialed else {
                return;
            };
            if legacy {
                drop(slot);
                tracing::info!(?conn, %addr, "dialed a legacy PE (unauthenticated)");
                run(
                    conn,
                    stream,
                    legacy_client(addr),
                    addrs,
                    None,
                    io,
                    stop,
                    then,
                )
                .await;
                return;
            }
            let tls = dial_pe(stream, addr, &dial, &settings, &trust, &audit, &counters).await;
            // The handshake is done: the slot goes to the next dial while this one serves.
            drop(slot);
            let Some((tls, peer)) = tls else { return };
            let Some((client, live)) = admit(&peer, addr, &trust, &audit, &counters).await else {
                return;
            };
            run(conn, tls, client, addrs, Some(live), io, stop, then).await;
        });
    }
}

/// Opens the transport to a PE's listener, bounded by [`PE_CONNECT_TIMEOUT`].
async fn connect_pe(
    to: &::asap::addr::TransportAddr,
    security: listen::Security,
) -> Option<(BoxStream, std::net::SocketAddr, Vec<std::net::IpAddr>)> {
    match tokio::time::timeout(
        PE_CONNECT_TIMEOUT,
        listen::dial_association(to, Protocol::Asap, security),
    )
    .await
    {
        Ok(Ok(dialed)) => Some(dialed),
        Ok(Err(e)) => {
            tracing::info!(%to, error = %e, "PE listener unreachable");
            None
        }
        Err(_) => {
            tracing::info!(%to, "PE listener: connect timed out");
            None
        }
    }
}

/// The mutual TLS handshake with a dialed PE, which must present `dial.registrant`'s
/// certificate.
async fn dial_pe(
    stream: BoxStream,
    addr: std::net::SocketAddr,
    dial: &PeDial,
    settings: &Settings,
    trust: &TrustStore,
    audit: &AuditLog,
    counters: &Counters,
) -> Option<(tokio_rustls::client::TlsStream<BoxStream>, Peer)> {
    let expected = identity::IdentityPattern::exact(&dial.registrant);
    let config = match trust.client_config_expecting(Protocol::Asap, expected) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the client configuration for a PE");
            return None;
        }
    };
    // The name is not checked: the PE is authenticated by its SPIFFE ID (above).
    let name = tokio_rustls::rustls::pki_types::ServerName::from(addr.ip());
    let connector = tokio_rustls::TlsConnector::from(config);
    authenticate(
        connector.connect(name, stream),
        Protocol::Asap,
        addr,
        settings,
        audit,
        counters,
    )
    .await
}

/// Serves one ASAP connection, accepted or dialed, until either side ends it (or, with
/// `live`, its identity is revoked). `addrs` are all the client's addresses
/// ([`Input::Connected`]). `then` goes to the core right after the connection is
/// announced.
#[allow(clippy::too_many_arguments)]
async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(
    conn: ConnId,
    stream: S,
    client: Remote,
    addrs: Vec<std::net::IpAddr>,
    mut live: Option<LiveConnection>,
    io: Io<'_>,
    stop: watch::Receiver<bool>,
    then: Option<Input>,
) {
    let Io {
        settings,
        events,
        counters,
        view,
        jobs,
    } = io;
    let addr = client.addr;
    let limited = client.clone();
    tracing::debug!(?conn, %addr, id = %client.id, "ASAP connection");
    let (tx, rx) = mpsc::channel(settings.send_queue);
    let kill = Arc::new(Notify::new());
    let in_flight = AtomicUsize::new(0);
    let (resolutions, noted) = (counters.tallies.start(conn), Notify::new());
    let refreshed = RefreshQueue::default();
    let served = Mutex::new(Vec::new());
    let heard = AtomicU64::new(0);
    let here = Here {
        view,
        jobs,
        served: &served,
        in_flight: &in_flight,
        client: None,
        rng: None,
        ids: Vec::new(),
        resolutions: &resolutions,
        noted: &noted,
        refreshed: &refreshed,
    };
    let handle = ConnHandle {
        tx,
        kill: Arc::clone(&kill),
    };
    if events
        .send(Event::Connected {
            conn,
            client,
            addrs,
            writer: handle,
        })
        .await
        .is_err()
    {
        counters.tallies.end(conn);
        return; // Shutting down.
    }
    if let Some(input) = then
        && events.send(Event::Input(input)).await.is_err()
    {
        counters.tallies.end(conn);
        return;
    }
    let (read_half, write_half) = tokio::io::split(stream);
    let reader = MessageReader::new(read_half, Framer::asap(settings.max_message_len));
    let revoked = async {
        match live.as_mut() {
            Some(live) => live.closed().await,
            // A legacy client has no certificate to revoke.
            None => std::future::pending().await,
        }
    };
    // The rare events, polled only when one of them woke the task (`OnWake`): not on
    // every message, as the branches of `select!` are.
    let rare = std::pin::pin!(async {
        tokio::select! {
            () = idle(&heard, settings.idle_timeout) => tracing::debug!(?conn, "idle: closing"),
            reason = revoked => tracing::info!(?conn, ?reason, "closing: revoked"),
            () = kill.notified() => {}
            () = stopped(stop) => {}
            () = write_tally_every(&resolutions, &noted, jobs, counters) => {}
            () = send_refreshed_every(conn, &refreshed, events) => {}
        }
    });
    // One task reads and writes. `biased`: the read loop is polled first and the write
    // loop right after it, in the same poll, so that an answer the read loop queued
    // leaves at once; in select!'s random order, half the time the write loop came first
    // and the answer waited for the task's next turn behind every other ready connection
    // (issue 20: the resolutions' p99 was twice their median on one server CPU).
    tokio::select! {
        biased;
        () = read_loop(conn, reader, events, &heard, &limited, counters, here) => {}
        () = write_counted(write_half, rx, &in_flight, &served) => {}
        () = OnWake::new(rare) => {}
    }
    // Nothing counted is lost when the connection ends (or the daemon stops).
    write_tally(&resolutions, jobs, counters);
    counters.tallies.end(conn);
    if send_refreshed(conn, &refreshed, events).await.is_ok() {
        let _ = events.send(Event::Input(Input::Closed { conn })).await;
    }
}

pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a connection task needs to answer resolutions itself (issue 20, "reads where
/// they arrive"): the core's [`ReadView`], the audit log, its buffer of answers, and the
/// count of requests it handed to the core whose answers the write loop has not yet taken
/// (registrations, deregistrations, resolutions: each gets exactly one answer of its
/// kind, [`answers_in`]).
///
/// Read-your-writes: while that count is not zero, resolutions go to the core too, behind
/// the requests in flight. So a PE whose registration's answer is still held for its
/// durable audit record gets its resolution's answer after it, and sees itself; once the
/// count is zero, the core has carried out every change this connection asked for, and
/// the view (changed in the same core step) has them.
struct Here<'a> {
    view: &'a ReadView,
    jobs: &'a mpsc::WeakSender<AuditJob>,
    /// The answers made here, encoded, that the write loop has not taken yet: it takes
    /// them when it is polled next, which `run`'s `biased` select does right after the
    /// read loop, in the same poll (no channel message, no wake-up, no buffer per answer).
    served: &'a Mutex<Vec<u8>>,
    in_flight: &'a AtomicUsize,
    /// The connection as the core announced it; `None` until the core has it.
    client: Option<Arc<ClientView>>,
    /// This connection's selection stream ([`ReadView::rng_for`]), made at first use.
    rng: Option<ConnRng>,
    /// The PE IDs its last resolution chose (kept for the allocation).
    ids: Vec<::asap::wire::param::PeId>,
    /// Its resolutions and unchanged re-registrations answered here, not yet audited
    /// ([`tally`]); written by [`write_tally_every`], told by `noted` when the first is in.
    resolutions: &'a Mutex<Tally>,
    noted: &'a Notify,
    /// Its unchanged re-registrations acknowledged here that the core has not had yet.
    refreshed: &'a RefreshQueue,
}

/// Whether the fast path ended the connection.
enum Served {
    /// Answered here (or dropped: a revoked client's request counts for nothing).
    Done,
    /// Not for here: the core answers it.
    ToCore(Decoded<AsapMsg>),
    /// [`MAX_SERVED`] bytes of answers made here wait: the client does not read its
    /// answers (threat T-15).
    Full,
    /// Answered here, and [`MAX_REFRESHED`] re-registrations wait for the core: they go
    /// now.
    Flush,
}

impl Here<'_> {
    /// Answers `msg` here if it is a resolution or an unchanged re-registration this task
    /// may answer; else hands it back.
    async fn serve(&mut self, conn: ConnId, msg: Decoded<AsapMsg>, counters: &Counters) -> Served {
        // Unrecognized parameters are reported by the core, after the answer (spec §3.3).
        let here = matches!(
            msg.msg,
            AsapMsg::HandleResolution { .. } | AsapMsg::Registration { .. }
        );
        if !here || !msg.unrecognized.is_empty() || self.in_flight.load(Ordering::Acquire) != 0 {
            return Served::ToCore(msg);
        }
        if self.client.is_none() {
            self.client = self.view.client(conn);
        }
        let Some(client) = &self.client else {
            return Served::ToCore(msg); // The core has not had its `Connected` yet.
        };
        if let AsapMsg::Registration { .. } = msg.msg {
            return self.refresh(msg, counters);
        }
        let AsapMsg::HandleResolution {
            namespace,
            pool_handle,
            option,
            hints,
        } = msg.msg
        else {
            return Served::Done; // Unreachable: matched above.
        };
        // Answered only with its record to come: no answer once the daemon is stopping.
        let Some(jobs) = self.jobs.upgrade() else {
            return Served::Done;
        };
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if served.len() >= MAX_SERVED {
            return Served::Full;
        }
        let rng = self.rng.get_or_insert_with(|| self.view.rng_for(conn));
        // Encoded straight into the write loop's buffer, from the handlespace's entries.
        let Some(answered) = self.view.resolve_into(
            client,
            namespace,
            pool_handle,
            option,
            &hints,
            rng.rng(),
            &mut self.ids,
            &mut served,
        ) else {
            return Served::Done;
        };
        drop(served);
        if let Some(e) = &answered.error {
            // Nothing was written; the resolution is still counted and recorded.
            tracing::error!(?conn, error = %e, "cannot encode a resolution response");
        }
        // Counted as the answer leaves; its record, in aggregate, within the interval or
        // when the connection ends ([`tally`]).
        counters.count_resolution(Some(&answered.namespace), answered.outcome);
        let written = self.tally(|t| {
            t.note(
                Some(&answered.namespace),
                Some(&answered.pool_handle),
                answered.outcome,
                answered.pes,
                || answered.event(client),
                super::now_ms,
            )
        });
        hand_records(written, &jobs, counters);
        Served::Done
    }

    /// Notes an answer made here in the connection's audit tally with `note`, and wakes
    /// the tally's writer for the first of an interval; the records to write at once.
    fn tally(&self, note: impl FnOnce(&mut Tally) -> Vec<Record>) -> Vec<Record> {
        let mut t = self
            .resolutions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = t.is_empty();
        let written = note(&mut t);
        drop(t);
        if first {
            self.noted.notify_one();
        }
        written
    }

    /// Acknowledges `msg`, a registration, here if it is an unchanged re-registration
    /// ([`ReadView::refresh`]); else hands it back for the core.
    fn refresh(&mut self, msg: Decoded<AsapMsg>, counters: &Counters) -> Served {
        let Some(client) = &self.client else {
            return Served::ToCore(msg);
        };
        let AsapMsg::Registration {
            namespace,
            pool_handle,
            pool_element,
        } = &msg.msg
        else {
            return Served::ToCore(msg);
        };
        // Its record comes in the tally: none once the daemon is stopping, so the core
        // judges it (and audits it) then.
        let Some(jobs) = self.jobs.upgrade() else {
            return Served::ToCore(msg);
        };
        let Some(ns) = self
            .view
            .refresh(client, namespace.as_ref(), pool_handle, pool_element)
        else {
            return Served::ToCore(msg);
        };
        let pe_id = pool_element.pe_id;
        {
            let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
            if served.len() >= MAX_SERVED {
                return Served::Full;
            }
            let ack = AsapMsg::RegistrationResponse {
                reject: false,
                pool_handle: pool_handle.clone(),
                pe_id,
                error: None,
            };
            if let Err(e) = ack.encode(&mut served) {
                // Not for a PE the core stored (its pool handle encoded then): a bug.
                tracing::error!(error = %e, "cannot encode a registration response");
                return Served::ToCore(msg);
            }
        }
        counters.count_refresh(&ns);
        let written = self.tally(|t| {
            t.note_refresh(
                &ns,
                pool_handle,
                pe_id,
                || client.refresh_event(&ns, pool_handle, pe_id),
                super::now_ms,
            )
        });
        hand_records(written, &jobs, counters);
        let AsapMsg::Registration {
            pool_handle,
            pool_element,
            ..
        } = msg.msg
        else {
            return Served::Done; // Unreachable: matched above.
        };
        let full = self.refreshed.push(Refresh {
            namespace: ns,
            pool_handle,
            pool_element,
        });
        if full {
            return Served::Flush;
        }
        Served::Done
    }
}

/// Most unchanged re-registrations a connection holds for the core ([`RefreshQueue`]);
/// at this many they go at once. A PE re-registers every few seconds, so the usual
/// [`REFRESH_DELAY`] holds at most one per PE of the connection.
const MAX_REFRESHED: usize = 1024;

/// A connection's unchanged re-registrations acknowledged here that the core has not had
/// yet: they go by [`send_refreshed`], before anything else of the connection goes to the
/// core, and by [`send_refreshed_every`] within [`REFRESH_DELAY`] of the first.
#[derive(Default)]
struct RefreshQueue {
    queued: Mutex<Vec<Refresh>>,
    /// Told when the first of a batch is queued ([`send_refreshed_every`] waits for it).
    noted: Notify,
}

impl RefreshQueue {
    /// Queues `refresh`; `true` when the queue holds [`MAX_REFRESHED`]: it must go now.
    fn push(&self, refresh: Refresh) -> bool {
        let mut queued = self.lock();
        if queued.is_empty() {
            self.noted.notify_one();
        }
        queued.push(refresh);
        queued.len() >= MAX_REFRESHED
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Refresh>> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands the core the unchanged re-registrations of `conn` acknowledged so far, if any:
/// before any other input of the connection, so that the core sees its messages in order.
/// The channel's room is reserved first and the queue taken only with it: senders are
/// served in the order they asked, so nothing this task sends after this call overtakes
/// them, and a call dropped while it waits has taken nothing (cancel-safe).
async fn send_refreshed(
    conn: ConnId,
    refreshed: &RefreshQueue,
    events: &mpsc::Sender<Event>,
) -> Result<(), ()> {
    if refreshed.lock().is_empty() {
        return Ok(());
    }
    let permit = events.reserve().await.map_err(|_| ())?;
    let taken = std::mem::take(&mut *refreshed.lock());
    if !taken.is_empty() {
        permit.send(Event::Input(Input::Refreshed {
            conn,
            refreshed: taken,
        }));
    }
    Ok(())
}

/// Writes a connection's tally every [`tally::INTERVAL`] after its first resolution or
/// unchanged re-registration in it; never ends.
async fn write_tally_every(
    resolutions: &Mutex<Tally>,
    noted: &Notify,
    jobs: &mpsc::WeakSender<AuditJob>,
    counters: &Counters,
) {
    loop {
        noted.notified().await;
        tokio::time::sleep(tally::INTERVAL).await;
        write_tally(resolutions, jobs, counters);
    }
}

/// How long an unchanged re-registration acknowledged by a connection task may wait for
/// the core ([`send_refreshed_every`]): what it does there (the PE's keep-alive starts
/// over, peers hear of it) is late by at most this, far below the keep-alive interval and
/// timeout (5 s each by default), and a busy connection sends its re-registrations ten
/// times a second instead of each on its own. (A PE that re-registers instead of
/// answering its keep-alive may time out in between; the core then registers it again,
/// both audited: `enrp_core::registrar::Refresh`.)
pub(crate) const REFRESH_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Hands the core a connection's unchanged re-registrations [`REFRESH_DELAY`] after the
/// first of them; ends only when the core task is gone.
async fn send_refreshed_every(
    conn: ConnId,
    refreshed: &RefreshQueue,
    events: &mpsc::Sender<Event>,
) {
    loop {
        refreshed.noted.notified().await;
        tokio::time::sleep(REFRESH_DELAY).await;
        if send_refreshed(conn, refreshed, events).await.is_err() {
            return;
        }
    }
}

/// Hands what the tally holds to the audit writer. When the core task is already gone
/// (the daemon is stopping) it stays in the tally: the daemon's stop writes it
/// ([`tally::Tallies::drain`]).
fn write_tally(resolutions: &Mutex<Tally>, jobs: &mpsc::WeakSender<AuditJob>, counters: &Counters) {
    let Some(jobs) = jobs.upgrade() else {
        return;
    };
    let records = resolutions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(super::now_ms());
    hand_records(records, &jobs, counters);
}

/// Hands resolution records to the writer as the core task hands its own
/// ([`driver::hand_over`]): checked, then queued (Batched) without waiting, so that a
/// stalled disk delays no resolution (when the backlog is full a record is dropped and
/// counted in an `audit:gap` record).
fn hand_records(records: Vec<Record>, jobs: &mpsc::Sender<AuditJob>, counters: &Counters) {
    for record in records {
        // A record the log would refuse is a bug here (as in [`driver::record_of`]).
        if let Err(e) = record.check() {
            tracing::error!(error = %e, "audit record refused; resolutions not recorded");
            continue;
        }
        let _ = driver::hand_over(AuditJob::batched(record), jobs, counters);
    }
}

/// Whether a request's message gets exactly one answer of its own kind from the core
/// ([`answers_in`]): registrations, deregistrations, resolutions.
fn awaits_answer(msg: &AsapMsg) -> bool {
    matches!(
        msg,
        AsapMsg::Registration { .. }
            | AsapMsg::Deregistration { .. }
            | AsapMsg::HandleResolution { .. }
    )
}

/// How many answers to requests [`awaits_answer`] counted `bytes` holds. The driver gathers
/// a step's messages for a connection into one buffer, so it may hold several messages:
/// each begins with its 4-byte header, type first and length last (spec §6, §12.2), back
/// to back as the driver encoded them.
fn answers_in(bytes: &[u8]) -> usize {
    let answers = [
        MsgType::ASAP_REGISTRATION_RESPONSE,
        MsgType::ASAP_DEREGISTRATION_RESPONSE,
        MsgType::ASAP_HANDLE_RESOLUTION_RESPONSE,
    ];
    let mut n = 0;
    let mut rest = bytes;
    while let [t, _, hi, lo, ..] = *rest {
        if answers.iter().any(|m| m.0 == t) {
            n += 1;
        }
        // Our own encoder wrote these lengths (≥ 4); a shorter one would loop forever.
        let len = usize::from(u16::from_be_bytes([hi, lo])).max(4);
        rest = rest.get(len..).unwrap_or_default();
    }
    n
}

/// Ends when nothing was `heard` for `timeout` (to within a quarter of it).
///
/// A watch that wakes four times per timeout instead of a timer per message: wrapping
/// each read in `tokio::time::timeout` read the clock and put a timer into the wheel
/// and took it out again for every message (issue 20; in the SCTP guest every clock
/// read is a system call).
async fn idle(heard: &AtomicU64, timeout: std::time::Duration) {
    const STEPS: u32 = 4;
    // Not zero: a zero timeout would spin.
    let step = (timeout / STEPS).max(std::time::Duration::from_millis(1));
    let (mut seen, mut quiet) = (heard.load(Ordering::Relaxed), 0);
    loop {
        tokio::time::sleep(step).await;
        let now = heard.load(Ordering::Relaxed);
        if now != seen {
            (seen, quiet) = (now, 0);
            continue;
        }
        quiet += 1;
        if quiet >= STEPS {
            return;
        }
    }
}

/// Reads the connection's messages and serves them (here or through the core) until
/// it ends; counts each in `heard` for [`idle`].
async fn read_loop<R: AsyncRead + Unpin>(
    conn: ConnId,
    mut reader: MessageReader<R>,
    events: &mpsc::Sender<Event>,
    heard: &AtomicU64,
    client: &Remote,
    counters: &Counters,
    mut here: Here<'_>,
) {
    let mut buckets = Buckets::default();
    loop {
        let next = reader.next().await;
        heard.fetch_add(1, Ordering::Relaxed);
        let event = match next {
            Ok(Some(frame)) => match AsapMsg::decode(&frame) {
                Ok(msg) => {
                    let kind = Kind::of(&msg.msg);
                    // Low disk: no new registrations (their records may not fit); the
                    // rest, deregistrations included, is served.
                    // Nor while the store does not answer: their records cannot be made
                    // durable, so they would be refused after the commit's timeout anyway.
                    let registration = matches!(msg.msg, AsapMsg::Registration { .. });
                    let admitted = if registration && counters.low_disk.load(Ordering::Relaxed) {
                        Some(Err(Over::Disk))
                    } else if registration && counters.store_down.load(Ordering::Relaxed) {
                        Some(Err(Over::Store))
                    } else {
                        kind.map(|k| {
                            let now = || tokio::time::Instant::now().into_std();
                            counters.limiter.admit(&mut buckets, &client.id, k, now)
                        })
                    };
                    let counted = awaits_answer(&msg.msg);
                    let event = match admitted {
                        Some(Err(over)) => Event::Limited {
                            conn,
                            client: client.clone(),
                            msg: msg.msg,
                            over,
                        },
                        _ => match here.serve(conn, msg, counters).await {
                            Served::Done => continue,
                            Served::Flush => {
                                if send_refreshed(conn, here.refreshed, events).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Served::Full => {
                                tracing::warn!(?conn, "send queue full: closing the connection");
                                return;
                            }
                            Served::ToCore(msg) => Event::Input(Input::Asap { conn, msg }),
                        },
                    };
                    if counted {
                        here.in_flight.fetch_add(1, Ordering::AcqRel);
                    }
                    event
                }
                // A registration or deregistration that fails validation gets its own
                // response (spec §7.1, §7.9), built from its bytes: the core, which sees
                // only the decode error, would answer ASAP_ERROR.
                Err(error) => match error
                    .cause()
                    .and_then(|cause| ::asap::wire::rejection(&frame, &cause))
                {
                    Some(response) => {
                        // Answered (by the core task) with a registration or
                        // deregistration response: in flight like the valid ones.
                        here.in_flight.fetch_add(1, Ordering::AcqRel);
                        Event::Invalid {
                            conn,
                            error,
                            response,
                        }
                    }
                    None => Event::Input(Input::Malformed { conn, error }),
                },
            },
            Ok(None) => return,
            Err(ReadError::Framing(error)) => {
                // The core audits it; the connection ends here without reply (§12.2).
                if send_refreshed(conn, here.refreshed, events).await.is_ok() {
                    let _ = events
                        .send(Event::Input(Input::Malformed { conn, error }))
                        .await;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(?conn, error = %e, "connection ended");
                return;
            }
        };
        // Bounded: a client that sends faster than the core works waits here. What was
        // acknowledged here goes first: the core sees the connection's messages in order.
        if send_refreshed(conn, here.refreshed, events).await.is_err()
            || events.send(event).await.is_err()
        {
            return;
        }
    }
}

/// Most bytes gathered into one write: messages queued together (keep-alives come in
/// bursts) leave in one TLS record and one system call instead of one each.
const MAX_BATCH: usize = 64 * 1024;

/// Most bytes of answers made by the read loop ([`Here::served`]) that may wait for the
/// write loop; past it the client does not read its answers and the connection ends
/// (threat T-15). As many as the send queue's 4,096 messages of 1 KiB (an answer of three
/// PEs is ~300 bytes; the largest possible, 64 KiB).
const MAX_SERVED: usize = 4 << 20;

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(w: W, rx: mpsc::Receiver<Outgoing>) {
    write_counted(w, rx, &AtomicUsize::new(0), &Mutex::new(Vec::new())).await;
}

/// The next message of the core's, or `None` when answers made here wait in `served`
/// (checked each time this is polled, so that the read loop need not wake anyone), or
/// when the core's side has closed.
async fn next_out(rx: &mut mpsc::Receiver<Outgoing>, served: &Mutex<Vec<u8>>) -> Option<Outgoing> {
    std::future::poll_fn(|cx| {
        if !served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            return std::task::Poll::Ready(None);
        }
        rx.poll_recv(cx)
            .map(|out| Some(out.unwrap_or(Outgoing::Close)))
    })
    .await
}

/// [`write_loop`], counting down `in_flight` for each answer of the core to a counted
/// request ([`Here`]) as it takes it, and writing the answers the read loop made itself
/// (`served`): those are made only while nothing counted is in flight, so they leave
/// after every answer of the core's to this connection's earlier requests.
async fn write_counted<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Outgoing>,
    in_flight: &AtomicUsize,
    served: &Mutex<Vec<u8>>,
) {
    // Answers made here since the last write go after the core's messages taken before.
    let take_served = |batch: &mut Vec<u8>| {
        let mut s = served.lock().unwrap_or_else(PoisonError::into_inner);
        batch.extend_from_slice(&s);
        s.clear();
    };
    let mut batch = Vec::with_capacity(4096);
    loop {
        let open = match next_out(&mut rx, served).await {
            Some(out) => gather(&mut w, &mut rx, &mut batch, out, in_flight).await,
            None => true,
        };
        take_served(&mut batch);
        if !batch.is_empty() {
            if write_message(&mut w, &batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        if !open {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Adds `first` and the core's messages queued behind it to `batch`, writing whenever it
/// reaches [`MAX_BATCH`]; `false` at [`Outgoing::Close`] or when a write failed (the
/// connection ends).
async fn gather<W: AsyncWrite + Unpin>(
    w: &mut W,
    rx: &mut mpsc::Receiver<Outgoing>,
    batch: &mut Vec<u8>,
    first: Outgoing,
    in_flight: &AtomicUsize,
) -> bool {
    let mut next = Some(first);
    while let Some(out) = next.take() {
        // Audit before ack was kept by the core task: what arrives here may leave.
        let bytes = match out {
            Outgoing::Message { bytes } => {
                let answers = answers_in(&bytes);
                if answers > 0 {
                    // Never below zero (every answer of these kinds was counted by the
                    // read loop, but a wrap would send every resolution to the core).
                    let _ = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(answers))
                    });
                }
                bytes
            }
            Outgoing::Close => return false,
        };
        batch.extend_from_slice(&bytes);
        if batch.len() >= MAX_BATCH {
            if write_message(w, batch).await.is_err() {
                return false;
            }
            batch.clear();
        }
        next = rx.try_recv().ok();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::asap::wire::param::{PeId, PoolHandle, ServerId};

    /// The queue of re-registrations acknowledged here says it is full at
    /// [`MAX_REFRESHED`] (the read loop then sends it at once), and all of it reaches the
    /// core in one input; the next one starts a batch and wakes the timer again.
    #[tokio::test]
    async fn a_full_refresh_queue_goes_to_the_core_whole() {
        use ::asap::wire::param::{Address, Policy, PoolElement, Transport, TransportUse};
        let refresh = |id: u32| Refresh {
            namespace: "default".parse().expect("namespace"),
            pool_handle: PoolHandle::new("echo").expect("handle"),
            pool_element: PoolElement {
                pe_id: PeId::new(id).expect("non-zero"),
                home_server_id: 0,
                registration_life: 300_000,
                user_transport: Transport::Tcp {
                    port: std::num::NonZeroU16::new(7777).expect("non-zero"),
                    transport_use: TransportUse::DataOnly,
                    addr: Address::new(std::net::Ipv4Addr::LOCALHOST),
                },
                policy: Policy::RoundRobin,
                asap_transport: None,
                labels: Default::default(),
                status: Default::default(),
                serving_identity: None,
            },
        };
        let noted = |q: &RefreshQueue| {
            let woken = q.noted.notified();
            ready_now(woken)
        };
        let queue = RefreshQueue::default();
        for id in 1..MAX_REFRESHED as u32 {
            assert!(!queue.push(refresh(id)), "full at {id}");
        }
        assert!(noted(&queue), "the first of the batch wakes the timer");
        assert!(!noted(&queue), "only the first");
        assert!(
            queue.push(refresh(MAX_REFRESHED as u32)),
            "full at the limit"
        );
        let (tx, mut rx) = mpsc::channel(1);
        send_refreshed(ConnId(7), &queue, &tx)
            .await
            .expect("the core is there");
        match rx.try_recv() {
            Ok(Event::Input(Input::Refreshed { conn, refreshed })) => {
                assert_eq!(conn, ConnId(7));
                let ids: Vec<u32> = refreshed
                    .iter()
                    .map(|r| r.pool_element.pe_id.get())
                    .collect();
                assert_eq!(ids, (1..=MAX_REFRESHED as u32).collect::<Vec<_>>());
            }
            _ => panic!("no Refreshed input"),
        }
        assert!(queue.lock().is_empty());
        // Nothing queued: nothing sent.
        send_refreshed(ConnId(7), &queue, &tx)
            .await
            .expect("the core is there");
        assert!(rx.try_recv().is_err());
        assert!(!queue.push(refresh(1)));
        assert!(noted(&queue), "a new batch wakes the timer");
    }

    /// Whether `f` is ready at its first poll.
    fn ready_now(f: impl Future) -> bool {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.as_mut().poll(&mut cx).is_ready()
    }

    /// Real time, short: the bounds below do not depend on the machine's speed (a sleep
    /// is never early), only the "not forever" one is loose.
    #[tokio::test]
    async fn a_connection_is_idle_after_its_timeout_of_silence_and_not_before() {
        use std::time::Duration;
        let timeout = Duration::from_millis(400);
        let never = Duration::from_secs(30);
        let heard = AtomicU64::new(0);
        // Silent from the start: closed after the timeout.
        let start = tokio::time::Instant::now();
        tokio::time::timeout(never, idle(&heard, timeout))
            .await
            .expect("an idle connection is closed");
        assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
        // A message every 100 ms keeps it open; the silence after the last one ends it.
        let start = tokio::time::Instant::now();
        let talk = async {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                heard.fetch_add(1, Ordering::Relaxed);
            }
            start.elapsed()
        };
        let (closed, last) = tokio::join!(tokio::time::timeout(never, idle(&heard, timeout)), talk);
        closed.expect("closed once silent");
        assert!(
            start.elapsed() >= last + timeout,
            "closed {:?} after the start, the last message at {last:?}",
            start.elapsed()
        );
    }

    #[test]
    fn every_answer_of_a_gathered_buffer_is_counted() {
        let handle = PoolHandle::new(b"echo").expect("a handle");
        let pe_id = PeId::new(7).expect("an id");
        let answer = AsapMsg::RegistrationResponse {
            reject: false,
            pool_handle: handle.clone(),
            pe_id,
            error: None,
        };
        let keep_alive = AsapMsg::EndpointKeepAlive {
            home: false,
            server_id: ServerId::new(1).expect("an id"),
            pool_handle: handle.clone(),
            pe_id: Some(pe_id),
        };
        let gone = AsapMsg::DeregistrationResponse {
            pool_handle: handle,
            pe_id,
            error: None,
        };
        let mut gathered = Vec::new();
        for msg in [&keep_alive, &answer, &keep_alive, &gone, &keep_alive] {
            msg.encode(&mut gathered).expect("encodes");
        }
        assert_eq!(answers_in(&gathered), 2);
        assert_eq!(answers_in(&keep_alive.to_bytes().expect("encodes")), 0);
        assert_eq!(answers_in(&answer.to_bytes().expect("encodes")), 1);
        assert_eq!(answers_in(&[]), 0);
        // A truncated buffer (never written by the driver) ends the count, not the task.
        assert_eq!(answers_in(&gathered[..gathered.len() - 3]), 2);
    }
}
