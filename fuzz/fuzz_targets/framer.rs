//! Feed arbitrary bytes to the ASAP framer in chunks whose sizes the input chooses: the
//! frames it yields must be the same as with one big push, each a whole message whose
//! length field equals its size, and nothing may panic or grow without bound.
#![no_main]

use asap::wire::{AsapMsg, Framer, limits::MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], chunk: impl Fn(usize) -> usize) -> (Vec<Vec<u8>>, bool) {
    let mut framer = Framer::asap(MAX_MESSAGE_LEN);
    let mut frames = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = chunk(i).clamp(1, rest.len()).min(framer.available().max(1));
        i += 1;
        if framer.push(&rest[..n]).is_err() {
            return (frames, true);
        }
        rest = &rest[n..];
        loop {
            match framer.pop() {
                Ok(Some(f)) => {
                    assert!(f.len() >= 4 && f.len() % 4 == 0 && f.len() <= MAX_MESSAGE_LEN);
                    assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len());
                    let _ = AsapMsg::decode(&f);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        assert!(framer.buffered() <= framer.capacity());
    }
    (frames, false)
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (sizes, data) = input;
    let whole = run(&data, |_| usize::MAX);
    let split = run(&data, |i| usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1)));
    assert_eq!(whole, split);
});
