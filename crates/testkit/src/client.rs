//! A PE's side of a registration over a real `asap::client::Connection` (benches that
//! load a running registrar). Panics on a failure: the caller is a test or a bench.

use asap::client::Connection;
use asap::wire::AsapMsg;

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
