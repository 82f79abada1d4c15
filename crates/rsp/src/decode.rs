//! `rsp decode`: ASAP or ENRP messages given in hex, framed as on a TCP connection (spec
//! §12.2), decoded and printed.

use std::io::{self, Read as _};

use anyhow::{Context as _, bail};
use asap::wire::{AsapMsg, EnrpMsg, Framer, limits::MAX_MESSAGE_LEN};

/// Decodes the messages in `hex` (standard input when empty) and prints each.
pub(crate) fn run(enrp: bool, hex: Vec<String>) -> anyhow::Result<()> {
    let text = if hex.is_empty() {
        let mut s = String::new();
        io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        hex.join("")
    };
    let bytes = parse_hex(&text)?;
    if bytes.is_empty() {
        bail!("no bytes to decode");
    }
    let mut framer = if enrp {
        Framer::enrp(MAX_MESSAGE_LEN)
    } else {
        Framer::asap(MAX_MESSAGE_LEN)
    };
    let mut offset = 0;
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = rest.len().min(framer.available());
        framer
            .push(&rest[..n])
            .with_context(|| format!("framing the message at byte {offset}"))?;
        rest = &rest[n..];
        while let Some(frame) = framer
            .pop()
            .with_context(|| format!("framing the message at byte {offset}"))?
        {
            print_message(enrp, &frame).with_context(|| format!("message at byte {offset}"))?;
            offset += frame.len();
        }
    }
    if framer.buffered() > 0 {
        bail!(
            "{} bytes at byte {offset} are not a whole message (truncated)",
            framer.buffered()
        );
    }
    Ok(())
}

fn print_message(enrp: bool, frame: &[u8]) -> anyhow::Result<()> {
    let unrecognized = if enrp {
        let d = EnrpMsg::decode(frame)?;
        println!("{:#?}", d.msg);
        d.unrecognized
    } else {
        let d = AsapMsg::decode(frame)?;
        println!("{:#?}", d.msg);
        d.unrecognized
    };
    for p in unrecognized {
        println!("(unrecognized parameter to report: {p:?})");
    }
    Ok(())
}

pub(crate) fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits ({})", digits.len());
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .with_context(|| format!("not a hex byte at position {}", i * 2))
        })
        .collect()
}
