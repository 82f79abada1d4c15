//! Decode arbitrary bytes as an ENRP message; whatever decodes must re-encode to bytes
//! that decode to the same message.
#![no_main]

use asap::wire::EnrpMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(first) = EnrpMsg::decode(data) else {
        return;
    };
    let bytes = first.msg.to_bytes().expect("a decoded message encodes");
    let second = EnrpMsg::decode(&bytes).expect("our own encoding decodes");
    assert_eq!(first.msg, second.msg);
});
