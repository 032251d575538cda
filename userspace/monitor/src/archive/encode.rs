//! The record body of an [`Entry`], written straight into the write buffer.
//!
//! Every message of every monitored flow passes through here, so this is the archive's hot
//! path. It writes exactly the bytes `serde_json::to_writer` writes for the same
//! [`BodyOut`](super::format::BodyOut) (the tests compare the two on random entries), so the
//! format, verify, search and export are unchanged. What it saves: serde's generic
//! machinery, a byte-at-a-time escape scan, and `Display` formatting of IPv4 addresses.
//!
//! The structs are destructured without `..`: a field added to [`Message`] and friends is a
//! compile error here rather than a field silently missing from the archive.

use std::io::Write;
use std::net::SocketAddr;

use super::format::{Entry, FlowId, UnixMillis};
use crate::message::{
    Action, Attachment, Decision, Direction, Message, MessageKind, Protocol, RuleMatch,
    TransferKind,
};

/// Appends `{"seq":…,"time":…[,"incomplete":true],"event":<entry>}` to `out`.
pub(crate) fn write_body(
    out: &mut Vec<u8>,
    seq: u64,
    time: UnixMillis,
    incomplete: bool,
    entry: &Entry<'_>,
) {
    out.extend_from_slice(b"{\"seq\":");
    write_u64(out, seq);
    out.extend_from_slice(b",\"time\":");
    write_u64(out, time);
    if incomplete {
        out.extend_from_slice(b",\"incomplete\":true");
    }
    out.extend_from_slice(b",\"event\":");
    write_entry(out, entry);
    out.push(b'}');
}

fn write_entry(out: &mut Vec<u8>, entry: &Entry<'_>) {
    // Internally tagged (`#[serde(tag = "type")]`): the tag comes first, then the fields in
    // declaration order.
    let (tag, app, flow) = match *entry {
        Entry::Message { app, flow, .. } => ("message", app, flow),
        Entry::FlowBlocked { app, flow, .. } => ("flow_blocked", app, flow),
        Entry::FlowReset { app, flow, .. } => ("flow_reset", app, flow),
        Entry::FlowGap { app, flow, .. } => ("flow_gap", app, flow),
        Entry::FlowEnd { app, flow } => ("flow_end", app, flow),
        Entry::FlowAnomaly { app, flow, .. } => ("flow_anomaly", app, flow),
    };
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b"\",\"app\":");
    write_str(out, app);
    out.extend_from_slice(b",\"flow\":");
    write_flow(out, flow);
    match *entry {
        Entry::Message {
            message, decision, ..
        } => {
            out.extend_from_slice(b",\"message\":");
            write_message(out, message);
            out.extend_from_slice(b",\"decision\":");
            write_decision(out, decision);
        }
        Entry::FlowBlocked { reason, .. }
        | Entry::FlowReset { reason, .. }
        | Entry::FlowAnomaly { reason, .. } => {
            out.extend_from_slice(b",\"reason\":");
            write_str(out, reason);
        }
        Entry::FlowGap {
            direction, bytes, ..
        } => {
            out.extend_from_slice(b",\"direction\":");
            write_name(out, direction_name(direction));
            out.extend_from_slice(b",\"bytes\":");
            write_u64(out, bytes);
        }
        Entry::FlowEnd { .. } => {}
    }
    out.push(b'}');
}

fn write_flow(out: &mut Vec<u8>, flow: FlowId) {
    let FlowId { client, server } = flow;
    out.extend_from_slice(b"{\"client\":\"");
    write_addr(out, client);
    out.extend_from_slice(b"\",\"server\":\"");
    write_addr(out, server);
    out.extend_from_slice(b"\"}");
}

/// `SocketAddr`'s `Display`, which is what serde writes for it in JSON; no escaping needed
/// (digits, dots, colons, brackets, `%`).
fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            let mut digits = itoa::Buffer::new();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(digits.format(v4.port()).as_bytes());
        }
        // Rare enough on the monitored path to take the formatter; writing to a Vec cannot
        // fail.
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_message(out: &mut Vec<u8>, message: &Message) {
    let Message {
        protocol,
        direction,
        kind,
        sender,
        recipients,
        body,
        attachments,
        stream_offset,
    } = message;
    out.extend_from_slice(b"{\"protocol\":");
    write_name(out, protocol_name(*protocol));
    out.extend_from_slice(b",\"direction\":");
    write_name(out, direction_name(*direction));
    out.extend_from_slice(b",\"kind\":");
    write_name(out, kind_name(*kind));
    out.extend_from_slice(b",\"sender\":");
    write_opt_str(out, sender.as_deref());
    out.extend_from_slice(b",\"recipients\":[");
    for (i, r) in recipients.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, r);
    }
    out.extend_from_slice(b"],\"body\":");
    write_str(out, body);
    out.extend_from_slice(b",\"attachments\":[");
    for (i, a) in attachments.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_attachment(out, a);
    }
    out.extend_from_slice(b"],\"stream_offset\":");
    write_u64(out, *stream_offset);
    out.push(b'}');
}

fn write_attachment(out: &mut Vec<u8>, attachment: &Attachment) {
    let Attachment {
        transfer,
        name,
        size,
        mime,
        url,
    } = attachment;
    out.extend_from_slice(b"{\"transfer\":");
    write_name(out, transfer_name(*transfer));
    out.extend_from_slice(b",\"name\":");
    write_str(out, name);
    out.extend_from_slice(b",\"size\":");
    match size {
        Some(n) => write_u64(out, *n),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"mime\":");
    write_opt_str(out, mime.as_deref());
    out.extend_from_slice(b",\"url\":");
    write_opt_str(out, url.as_deref());
    out.push(b'}');
}

fn write_decision(out: &mut Vec<u8>, decision: &Decision) {
    let Decision { action, matches } = decision;
    out.extend_from_slice(b"{\"action\":");
    write_name(out, action_name(*action));
    out.extend_from_slice(b",\"matches\":[");
    for (i, m) in matches.iter().enumerate() {
        let RuleMatch {
            rule,
            action,
            reason,
        } = m;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"rule\":");
        write_str(out, rule);
        out.extend_from_slice(b",\"action\":");
        write_name(out, action_name(*action));
        out.extend_from_slice(b",\"reason\":");
        write_str(out, reason);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

// The `rename_all = "snake_case"` spellings of the unit variants.

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Xmpp => "xmpp",
        Protocol::Irc => "irc",
        Protocol::Mqtt => "mqtt",
        Protocol::Http => "http",
        Protocol::Msnp => "msnp",
        Protocol::Ymsg => "ymsg",
        Protocol::Oscar => "oscar",
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::ClientToServer => "client_to_server",
        Direction::ServerToClient => "server_to_client",
    }
}

fn kind_name(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Chat => "chat",
        MessageKind::Notice => "notice",
        MessageKind::FileOffer => "file_offer",
    }
}

fn transfer_name(t: TransferKind) -> &'static str {
    match t {
        TransferKind::DccSend => "dcc_send",
        TransferKind::XmppSi => "xmpp_si",
        TransferKind::XmppJingle => "xmpp_jingle",
        TransferKind::XmppHttpUpload => "xmpp_http_upload",
        TransferKind::OutOfBand => "out_of_band",
        TransferKind::HttpUpload => "http_upload",
        TransferKind::MsnInvite => "msn_invite",
        TransferKind::YmsgFileTransfer => "ymsg_file_transfer",
        TransferKind::OscarRendezvous => "oscar_rendezvous",
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Log => "log",
        Action::Block => "block",
    }
}

/// A name known to need no escaping.
fn write_name(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string, escaped as serde_json does: `"` and `\` with a backslash, the control
/// characters below U+0020 as `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else
/// (DEL and all non-ASCII included) as it is. Runs that need no escape are copied whole.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut rest = s.as_bytes();
    out.reserve(rest.len() + 2);
    out.push(b'"');
    while let Some(at) = next_escape(rest) {
        let (clean, tail) = rest.split_at(at);
        out.extend_from_slice(clean);
        let Some((&byte, tail)) = tail.split_first() else {
            break;
        };
        write_escape(out, byte);
        rest = tail;
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each zero byte of `word` (Hacker's Delight 6-1). A borrow can set a bit
/// above a zero byte but never below the lowest one, so the lowest bit set is exact.
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// The high bit of each byte that needs an escape (below 0x20, `"` or `\`), exact for the
/// lowest such byte as in [`zero_bytes`]. Bytes of 0x80 and above (UTF-8 sequences) never
/// need one and none of the three tests flags them.
fn escape_bytes(word: u64) -> u64 {
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    control
        | zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
}

/// The index of the lowest flagged byte of a little-endian word.
fn lowest(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether a block holds a byte that needs an escape; branch-free over a fixed-size block,
/// so that it compiles to a few SIMD compares.
fn any_escape(block: &[u8; 32]) -> bool {
    block
        .iter()
        .fold(0u8, |acc, &b| acc | u8::from(needs_escape(b)))
        != 0
}

/// The index of the first byte that needs an escape: 32 bytes at a time through a branch-free
/// test that the compiler turns into a few SIMD compares, then eight at a time.
fn next_escape(bytes: &[u8]) -> Option<usize> {
    let (blocks, tail) = bytes.as_chunks::<32>();
    let mut base = 0;
    for block in blocks {
        if any_escape(block) {
            return block
                .iter()
                .position(|&b| needs_escape(b))
                .map(|p| base + p);
        }
        base += 32;
    }
    let mut words = tail.chunks_exact(8);
    for chunk in &mut words {
        let flags = escape_bytes(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        if flags != 0 {
            return Some(base + lowest(flags));
        }
        base += 8;
    }
    // The last 0 to 7 bytes.
    words
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|p| base + p)
}

fn write_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::super::format::BodyOut;
    use super::*;

    fn serde_body(seq: u64, time: UnixMillis, incomplete: bool, entry: &Entry<'_>) -> String {
        let body = BodyOut {
            seq,
            time,
            incomplete,
            event: entry,
        };
        serde_json::to_string(&body).unwrap()
    }

    fn ours(seq: u64, time: UnixMillis, incomplete: bool, entry: &Entry<'_>) -> String {
        let mut out = b"prefix".to_vec();
        write_body(&mut out, seq, time, incomplete, entry);
        let text = String::from_utf8(out).unwrap();
        text.strip_prefix("prefix").unwrap().to_owned()
    }

    #[test]
    fn every_ascii_character_and_some_others_escape_as_serde_json_does() {
        let mut all: String = (0u8..=0x7f).map(char::from).collect();
        all.push_str("é€😀\u{80}\u{2028}\u{feff}");
        for s in all.char_indices().map(|(i, _)| &all[i..]).chain([
            all.as_str(),
            "",
            "plain text of more than eight bytes",
        ]) {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    /// Strings rich in what needs escaping, at every position relative to the 8-byte words.
    fn text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{20}', '\u{7f}',
            'a', 'é', '€', '😀',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(String::from_iter)
    }

    prop_compose! {
        fn attachment()(
            transfer in prop::sample::select(vec![
                TransferKind::DccSend,
                TransferKind::XmppSi,
                TransferKind::XmppJingle,
                TransferKind::XmppHttpUpload,
                TransferKind::OutOfBand,
                TransferKind::HttpUpload,
                TransferKind::MsnInvite,
                TransferKind::YmsgFileTransfer,
                TransferKind::OscarRendezvous,
            ]),
            name in text(),
            size in any::<Option<u64>>(),
            mime in prop::option::of(text()),
            url in prop::option::of(text()),
        ) -> Attachment {
            Attachment { transfer, name, size, mime, url }
        }
    }

    fn direction() -> impl Strategy<Value = Direction> {
        prop::sample::select(vec![Direction::ClientToServer, Direction::ServerToClient])
    }

    fn action() -> impl Strategy<Value = Action> {
        prop::sample::select(vec![Action::Allow, Action::Log, Action::Block])
    }

    prop_compose! {
        fn message()(
            protocol in prop::sample::select(vec![
                Protocol::Xmpp,
                Protocol::Irc,
                Protocol::Mqtt,
                Protocol::Http,
                Protocol::Msnp,
                Protocol::Ymsg,
                Protocol::Oscar,
            ]),
            direction in direction(),
            kind in prop::sample::select(vec![
                MessageKind::Chat,
                MessageKind::Notice,
                MessageKind::FileOffer,
            ]),
            sender in prop::option::of(text()),
            recipients in prop::collection::vec(text(), 0..3),
            body in text(),
            attachments in prop::collection::vec(attachment(), 0..3),
            stream_offset in any::<u64>(),
        ) -> Message {
            Message { protocol, direction, kind, sender, recipients, body, attachments, stream_offset }
        }
    }

    prop_compose! {
        fn decision()(
            action in action(),
            matches in prop::collection::vec(
                (text(), action(), text())
                    .prop_map(|(rule, action, reason)| RuleMatch { rule, action, reason }),
                0..3,
            ),
        ) -> Decision {
            Decision { action, matches }
        }
    }

    proptest! {
        #[test]
        fn entries_encode_exactly_as_serde_json_does(
            which in 0u8..6,
            seq in any::<u64>(),
            time in any::<u64>(),
            incomplete in any::<bool>(),
            app in text(),
            client in any::<SocketAddr>(),
            server in any::<SocketAddr>(),
            message in message(),
            decision in decision(),
            reason in text(),
            direction in direction(),
            bytes in any::<u64>(),
        ) {
            let flow = FlowId { client, server };
            let app = app.as_str();
            let reason = reason.as_str();
            let entry = match which {
                0 => Entry::Message { app, flow, message: &message, decision: &decision },
                1 => Entry::FlowBlocked { app, flow, reason },
                2 => Entry::FlowReset { app, flow, reason },
                3 => Entry::FlowGap { app, flow, direction, bytes },
                4 => Entry::FlowEnd { app, flow },
                _ => Entry::FlowAnomaly { app, flow, reason },
            };
            prop_assert_eq!(
                ours(seq, time, incomplete, &entry),
                serde_body(seq, time, incomplete, &entry)
            );
        }
    }
}
