//! A PE's side of a registration over a real `asap::client::Connection` (benches that
//! load a running registrar). Panics on a failure: the caller is a test or a bench.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use asap::client::Connection;
use asap::wire::AsapMsg;
use asap::wire::param::PoolHandle;
use tokio::sync::watch;

use crate::msg::registration;

/// Answers a keep-alive as a PE does (spec §7.5); `true` if `msg` was one.
pub async fn answer_keep_alive(conn: &mut Connection, msg: &AsapMsg) -> bool {
    let AsapMsg::EndpointKeepAlive {
        pool_handle,
        pe_id: Some(pe_id),
        ..
    } = msg
    else {
        return false;
    };
    conn.send(&AsapMsg::EndpointKeepAliveAck {
        pool_handle: pool_handle.clone(),
        pe_id: *pe_id,
    })
    .await
    .expect("send keep-alive ack");
    true
}

/// Sends the registration `msg` and waits for its acceptance, answering keep-alives
/// meanwhile; panics if it is refused.
pub async fn register(conn: &mut Connection, msg: &AsapMsg) {
    conn.send(msg).await.expect("send registration");
    loop {
        let reply = conn.recv().await.expect("registration response");
        match &reply {
            AsapMsg::RegistrationResponse { reject: false, .. } => return,
            AsapMsg::RegistrationResponse { .. } => panic!("registration refused: {reply:?}"),
            _ => {
                answer_keep_alive(conn, &reply).await;
            }
        }
    }
}

/// Registers PEs `first_id..first_id + count` in `handle` on `conn`, with at most `window`
/// registrations in flight, answering keep-alives all along: the first PEs' keep-alives
/// come due before the last PEs of a large run are registered.
pub async fn register_windowed(
    conn: &mut Connection,
    handle: &PoolHandle,
    first_id: u32,
    count: u32,
    window: u32,
) {
    let ip = conn.local_addr().ip();
    let (mut sent, mut acked) = (0, 0);
    while acked < count {
        while sent < count && (sent - acked) < window {
            conn.send(&registration(handle, first_id + sent, ip))
                .await
                .expect("send registration");
            sent += 1;
        }
        let reply = conn.recv().await.expect("registration response");
        match &reply {
            AsapMsg::RegistrationResponse { reject: false, .. } => acked += 1,
            AsapMsg::RegistrationResponse { .. } => panic!("registration refused: {reply:?}"),
            _ => {
                answer_keep_alive(conn, &reply).await;
            }
        }
    }
}

/// Answers keep-alives on `conn`, counting them in `answered`, until `stop` changes;
/// gives the connection back (its PEs stay registered while it is open).
pub async fn answer_keep_alives_until(
    mut conn: Connection,
    mut stop: watch::Receiver<bool>,
    answered: Arc<AtomicU64>,
) -> Connection {
    loop {
        tokio::select! {
            msg = conn.recv() => {
                if answer_keep_alive(&mut conn, &msg.expect("PE connection")).await {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => return conn,
        }
    }
}
