//! Decode arbitrary bytes as an ASAP message; whatever decodes must re-encode to bytes
//! that decode to the same message (hickory's decode → encode → decode).
#![no_main]

use asap::wire::AsapMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(first) = AsapMsg::decode(data) else {
        return;
    };
    let bytes = first.msg.to_bytes().expect("a decoded message encodes");
    let second = AsapMsg::decode(&bytes).expect("our own encoding decodes");
    assert_eq!(first.msg, second.msg);
    assert!(second.unrecognized.is_empty(), "skipped parameters are not re-sent");
});
