//! `rsp`: the RSerPool command line. Thin: flags here, work in the `asap` library.

use std::io::{self, Read as _};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use asap::wire::{AsapMsg, EnrpMsg, Framer, limits::MAX_MESSAGE_LEN};
use clap::{Parser, Subcommand};

/// Reliable Server Pooling (ASAP/ENRP) tools.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode ASAP or ENRP messages given in hex and print them.
    ///
    /// Several messages may follow each other back to back, as on a TCP connection
    /// (spec §12.2). Whitespace and `:` in the hex are ignored. Exits 1 at the first
    /// message that does not decode, saying where and why.
    Decode {
        /// The messages are ENRP (registrar to registrar), not ASAP.
        #[arg(long)]
        enrp: bool,
        /// Hex bytes; read from standard input when absent.
        hex: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Decode { enrp, hex } => decode(enrp, hex),
    }
}

fn decode(enrp: bool, hex: Vec<String>) -> anyhow::Result<()> {
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

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
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
