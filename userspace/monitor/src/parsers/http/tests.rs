use proptest::prelude::*;

use super::*;
use crate::message::{MessageKind, TransferKind};
use crate::parsers::testutil::{assert_split_invariant, run_split, run_whole};
use crate::parsers::Parser;

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;

fn req(method: &str, target: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "{method} {target} HTTP/1.1\r\nHost: chat.example\r\nAuthorization: Bearer t\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn json_req(method: &str, target: &str, body: &str) -> Vec<u8> {
    req(
        method,
        target,
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
}

fn chunked(method: &str, target: &str, ct: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut v = format!(
        "{method} {target} HTTP/1.1\r\nContent-Type: {ct}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    )
    .into_bytes();
    for c in body.chunks(chunk) {
        v.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
    v
}

fn multipart_body(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (name, file, data) in parts {
        v.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => v.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/pdf\r\n\r\n")
                    .as_bytes(),
            ),
            None => v.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        v.extend_from_slice(data);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    v
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

type Summary = (MessageKind, Option<String>, Vec<String>, String);

fn summary(m: &Message) -> Summary {
    (
        m.kind,
        m.sender.clone(),
        m.recipients.clone(),
        m.body.clone(),
    )
}

fn s(kind: MessageKind, sender: Option<&str>, to: &[&str], body: &str) -> Summary {
    (
        kind,
        sender.map(str::to_owned),
        to.iter().map(|t| (*t).to_owned()).collect(),
        body.to_owned(),
    )
}

#[test]
#[expect(clippy::too_many_lines, reason = "one conversation, spelled out")]
fn chat_apis() {
    let mut c1 = json_req(
        "PUT",
        "/_matrix/client/v3/rooms/%21room%3Amatrix.example/send/m.room.message/txn1",
        r#"{"msgtype":"m.text","body":"hello matrix"}"#,
    );
    // Pipelined right behind it: a notice, a file event and a reaction (not a message).
    c1.extend(json_req(
        "PUT",
        "/_matrix/client/r0/rooms/!r:m.example/send/m.room.message/2",
        r#"{"msgtype":"m.notice","body":"bot says"}"#,
    ));
    c1.extend(json_req(
        "PUT",
        "/_matrix/client/v3/rooms/!r:m.example/send/m.room.message/3",
        r#"{"msgtype":"m.file","body":"caption","filename":"q3.xlsx","info":{"size":4096,"mimetype":"application/vnd.ms-excel"},"url":"mxc://m.example/abc"}"#,
    ));
    c1.extend(json_req(
        "PUT",
        "/_matrix/client/v3/rooms/!r:m.example/send/m.reaction/4",
        r#"{"m.relates_to":{}}"#,
    ));
    let mut c2 = req(
        "POST",
        "/_matrix/media/v3/upload?filename=secret%20plan.pdf",
        "Content-Type: application/pdf\r\n",
        &[0u8; 3000],
    );
    c2.extend(chunked(
        "POST",
        "/api/v4/posts",
        "application/json",
        br#"{"channel_id":"ch1","message":"mattermost hi","file_ids":["f1"]}"#,
        7,
    ));
    c2.extend(json_req(
        "POST",
        "/api/v1/chat.postMessage",
        r##"{"channel":"#general","text":"rocket hi","alias":"bot","attachments":[{"title":"doc","title_link":"https://files.example/doc.pdf"}]}"##,
    ));
    c2.extend(json_req(
        "POST",
        "/api/v1/chat.sendMessage",
        r#"{"message":{"rid":"R1","msg":"rocket two"}}"#,
    ));
    c2.extend(req(
        "POST",
        "/api/chat.postMessage",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        b"token=x&channel=C123&text=slack+form%21",
    ));
    c2.extend(json_req(
        "POST",
        "/api/chat.postMessage",
        r#"{"channel":"C9","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"from blocks"}}]}"#,
    ));
    c2.extend(req("GET", "/api/v4/users/me", "", b""));
    let script: &[(Direction, &[u8])] = &[
        (C2S, &c1),
        (S2C, &ok(r#"{"event_id":"$1"}"#)),
        (C2S, &c2),
        (
            S2C,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ),
    ];
    let msgs = assert_split_invariant(Protocol::Http, script);
    let got: Vec<Summary> = msgs.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            s(
                MessageKind::Chat,
                None,
                &["!room:matrix.example"],
                "hello matrix"
            ),
            s(MessageKind::Notice, None, &["!r:m.example"], "bot says"),
            s(MessageKind::FileOffer, None, &["!r:m.example"], "caption"),
            s(
                MessageKind::FileOffer,
                None,
                &["/_matrix/media/v3/upload"],
                ""
            ),
            s(MessageKind::Chat, None, &["ch1"], "mattermost hi"),
            s(MessageKind::Chat, Some("bot"), &["#general"], "rocket hi"),
            s(MessageKind::Chat, None, &["R1"], "rocket two"),
            s(MessageKind::Chat, None, &["C123"], "slack form!"),
            s(MessageKind::Chat, None, &["C9"], "from blocks"),
        ]
    );
    assert!(msgs.iter().all(|m| m.protocol == Protocol::Http));
    let file = &msgs[2].attachments[0];
    assert_eq!(file.transfer, TransferKind::HttpUpload);
    assert_eq!(file.name, "q3.xlsx");
    assert_eq!(file.size, Some(4096));
    assert_eq!(file.mime.as_deref(), Some("application/vnd.ms-excel"));
    assert_eq!(file.url.as_deref(), Some("mxc://m.example/abc"));
    let up = &msgs[3].attachments[0];
    assert_eq!(
        (up.name.as_str(), up.size, up.mime.as_deref()),
        ("secret plan.pdf", Some(3000), Some("application/pdf"))
    );
    assert_eq!(
        msgs[4].attachments[0].url.as_deref(),
        Some("/api/v4/files/f1")
    );
    assert_eq!(
        msgs[5].attachments[0].url.as_deref(),
        Some("https://files.example/doc.pdf")
    );
    // Offsets point at the request lines.
    assert_eq!(msgs[0].stream_offset, 0);
    assert!(c1[msgs[1].stream_offset as usize..].starts_with(b"PUT /_matrix/client/r0"));
    let c2_base = c1.len() as u64;
    assert!(c2[(msgs[4].stream_offset - c2_base) as usize..].starts_with(b"POST /api/v4/posts"));
}

#[test]
fn multipart_uploads() {
    let rocket = multipart_body(
        "b0und",
        &[
            ("msg", None, b"see attached"),
            ("file", Some("report.pdf"), &[7u8; 1234]),
        ],
    );
    let mm = multipart_body(
        "MMB",
        &[
            ("channel_id", None, b"chan7"),
            ("files", Some("a.txt"), b"aaa"),
            ("files", Some("b.exe"), b"MZ\x90\x00"),
        ],
    );
    let slack = multipart_body(
        "sl",
        &[
            ("channels", None, b"C1,C2"),
            ("initial_comment", None, b"here"),
            ("file", Some("x.zip"), b"PK\x03\x04"),
        ],
    );
    let mut c = req(
        "POST",
        "/api/v1/rooms.upload/ROOM1",
        "Content-Type: multipart/form-data; boundary=b0und\r\n",
        &rocket,
    );
    c.extend(req(
        "POST",
        "/api/v4/files",
        "Content-Type: multipart/form-data; boundary=\"MMB\"\r\n",
        &mm,
    ));
    c.extend(req(
        "POST",
        "/api/files.upload",
        "Content-Type: multipart/form-data; boundary=sl\r\n",
        &slack,
    ));
    c.extend(req(
        "POST",
        "/api/v4/files?channel_id=c2&filename=raw.bin",
        "Content-Type: application/octet-stream\r\n",
        b"0123456789",
    ));
    c.extend(req(
        "POST",
        "/api/files.getUploadURLExternal",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        b"filename=big.iso&length=700000000",
    ));
    let msgs = assert_split_invariant(Protocol::Http, &[(C2S, &c)]);
    assert_eq!(msgs.len(), 5);
    let names = |m: &Message| -> Vec<(String, Option<u64>)> {
        m.attachments
            .iter()
            .map(|a| (a.name.clone(), a.size))
            .collect()
    };
    assert_eq!(
        summary(&msgs[0]),
        s(MessageKind::FileOffer, None, &["ROOM1"], "see attached")
    );
    assert_eq!(names(&msgs[0]), vec![("report.pdf".into(), Some(1234))]);
    assert_eq!(
        msgs[0].attachments[0].mime.as_deref(),
        Some("application/pdf")
    );
    assert_eq!(msgs[1].recipients, vec!["chan7".to_owned()]);
    assert_eq!(
        names(&msgs[1]),
        vec![("a.txt".into(), Some(3)), ("b.exe".into(), Some(4))]
    );
    assert_eq!(
        summary(&msgs[2]),
        s(MessageKind::FileOffer, None, &["C1", "C2"], "here")
    );
    assert_eq!(names(&msgs[2]), vec![("x.zip".into(), Some(4))]);
    assert_eq!(msgs[3].recipients, vec!["c2".to_owned()]);
    assert_eq!(names(&msgs[3]), vec![("raw.bin".into(), Some(10))]);
    assert_eq!(names(&msgs[4]), vec![("big.iso".into(), Some(700_000_000))]);
}

#[test]
fn a_multipart_upload_beyond_the_bound_keeps_its_file_name_and_size() {
    let data = vec![b'z'; MAX_BODY + 5000];
    let body = multipart_body("B", &[("file", Some("huge.bin"), &data)]);
    let mut c = req(
        "POST",
        "/api/v1/rooms.upload/R",
        "Content-Type: multipart/form-data; boundary=B\r\n",
        &body,
    );
    c.extend(json_req(
        "POST",
        "/api/v1/chat.sendMessage",
        r#"{"message":{"rid":"R","msg":"after"}}"#,
    ));
    for chunk in [1000usize, 65536, usize::MAX] {
        let (msgs, errs) = run_split(Protocol::Http, &[(C2S, &c)], &|len| {
            (0..len).step_by(chunk.min(len)).collect()
        });
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].attachments[0].name, "huge.bin");
        assert_eq!(msgs[0].attachments[0].size, Some(data.len() as u64));
        assert_eq!(msgs[1].body, "after");
    }
}

#[test]
fn bosh() {
    let open = req(
        "POST",
        "/http-bind",
        "Content-Type: text/xml; charset=utf-8\r\n",
        b"<body rid='1' sid='s' xmlns='http://jabber.org/protocol/httpbind'><iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq></body>",
    );
    let bound = b"<body xmlns='http://jabber.org/protocol/httpbind'><iq type='result' id='b' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x.example/web</jid></bind></iq></body>";
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        bound.len()
    )
    .into_bytes();
    resp.extend_from_slice(bound);
    let send = req(
        "POST",
        "/http-bind",
        "Content-Type: text/xml; charset=utf-8\r\n",
        b"<body rid='2' sid='s' xmlns='http://jabber.org/protocol/httpbind'><message to='bob@x.example' type='chat' xmlns='jabber:client'><body>hi &amp; bye</body></message><presence/></body>",
    );
    let incoming = b"<body xmlns='http://jabber.org/protocol/httpbind'><message from='bob@x.example/p' to='alice@x.example/web' xmlns='jabber:client'><body>yo</body></message></body>";
    let mut resp2 = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        incoming.len()
    )
    .into_bytes();
    resp2.extend_from_slice(incoming);
    let script: &[(Direction, &[u8])] = &[(C2S, &open), (S2C, &resp), (C2S, &send), (S2C, &resp2)];
    let msgs = assert_split_invariant(Protocol::Http, script);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0].protocol, Protocol::Xmpp);
    assert_eq!(msgs[0].sender.as_deref(), Some("alice@x.example/web"));
    assert_eq!(msgs[0].recipients, vec!["bob@x.example".to_owned()]);
    assert_eq!(msgs[0].body, "hi & bye");
    let c2s: Vec<u8> = [open.clone(), send.clone()].concat();
    assert!(c2s[msgs[0].stream_offset as usize..].starts_with(b"<message to='bob"));
    assert_eq!(msgs[1].direction, S2C);
    assert_eq!(msgs[1].sender.as_deref(), Some("bob@x.example/p"));
    assert_eq!(msgs[1].body, "yo");
}

#[test]
fn bosh_cannot_be_blinded_by_an_inner_tls_switch() {
    let proceed = b"<body xmlns='http://jabber.org/protocol/httpbind'><proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></body>";
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        proceed.len()
    )
    .into_bytes();
    resp.extend_from_slice(proceed);
    let ask = req(
        "POST",
        "/bosh",
        "Content-Type: text/xml\r\n",
        b"<body rid='1'/>",
    );
    let send = req(
        "POST",
        "/bosh",
        "Content-Type: text/xml\r\n",
        b"<body rid='2'><message to='b@x'><body>still seen</body></message></body>",
    );
    let (msgs, _) = run_whole(Protocol::Http, &[(C2S, &ask), (S2C, &resp), (C2S, &send)]);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, "still seen");
}

#[test]
fn upgrade_to_websocket_is_unreadable() {
    let mut p = Parser::new(Protocol::Http);
    let mut out = Vec::new();
    let up = b"GET /websocket HTTP/1.1\r\nHost: rc.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n";
    p.feed(C2S, 0, up, &mut out).unwrap();
    assert_eq!(p.state(C2S), StreamState::Readable);
    let sw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
    p.feed(S2C, 0, sw, &mut out).unwrap();
    assert_eq!(p.state(C2S), StreamState::Upgraded);
    assert_eq!(p.state(S2C), StreamState::Upgraded);
    assert!(!p.is_inspectable());
    let post = json_req(
        "POST",
        "/api/v1/chat.postMessage",
        r#"{"channel":"a","text":"b"}"#,
    );
    p.feed(C2S, up.len() as u64, &post, &mut out).unwrap();
    assert!(out.is_empty());

    // A CONNECT tunnel likewise; a refused one is not.
    let mut p = Parser::new(Protocol::Http);
    let connect = b"CONNECT chat.example:443 HTTP/1.1\r\n\r\n";
    let refused = b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n";
    p.feed(C2S, 0, connect, &mut out).unwrap();
    p.feed(S2C, 0, refused, &mut out).unwrap();
    assert!(p.is_inspectable());
    p.feed(C2S, connect.len() as u64, connect, &mut out)
        .unwrap();
    p.feed(
        S2C,
        refused.len() as u64,
        b"HTTP/1.1 200 OK\r\n\r\n",
        &mut out,
    )
    .unwrap();
    assert_eq!(p.error_count(), 0);
    assert!(!p.is_inspectable());
}

#[test]
fn responses_to_head_and_no_body_statuses() {
    // The HEAD response's Content-Length describes the GET it stands for: no body follows,
    // so the next response is read at once.
    let c = [
        req("HEAD", "/x", "", b""),
        json_req(
            "POST",
            "/api/chat.postMessage",
            r#"{"channel":"C","text":"t"}"#,
        ),
    ]
    .concat();
    let s2c = b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let mut p = Parser::new(Protocol::Http);
    let mut out = Vec::new();
    p.feed(C2S, 0, &c, &mut out).unwrap();
    p.feed(S2C, 0, s2c, &mut out).unwrap();
    assert_eq!(p.error_count(), 0);
    assert_eq!(p.state(S2C), StreamState::Readable);
    p.feed(
        S2C,
        s2c.len() as u64,
        b"HTTP/1.1 204 No Content\r\n\r\n",
        &mut out,
    )
    .unwrap();
    assert_eq!(p.error_count(), 0);
    assert_eq!(out.len(), 1);
}

#[test]
fn oversized_items_are_skipped_and_parsing_resumes() {
    let big = format!(r#"{{"channel":"C","text":"{}"}}"#, "x".repeat(MAX_BODY));
    let mut c = json_req("POST", "/api/chat.postMessage", &big);
    c.extend(json_req(
        "POST",
        "/api/chat.postMessage",
        r#"{"channel":"C","text":"next"}"#,
    ));
    // A head over the bound: its body length is unknown, the next request line is found.
    let mut long_head = b"POST /api/chat.postMessage HTTP/1.1\r\n".to_vec();
    for i in 0..2000 {
        long_head.extend_from_slice(format!("X-Pad-{i}: aaaaaaaa\r\n").as_bytes());
    }
    long_head.extend_from_slice(b"\r\n");
    c.extend_from_slice(&long_head);
    c.extend(json_req(
        "POST",
        "/api/chat.postMessage",
        r#"{"channel":"C","text":"last"}"#,
    ));
    for chunk in [777usize, usize::MAX] {
        let (msgs, errs) = run_split(Protocol::Http, &[(C2S, &c)], &|len| {
            (0..len).step_by(chunk.min(len)).collect()
        });
        let bodies: Vec<&str> = msgs.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, vec!["next", "last"]);
        assert!(errs.contains(&ParseError::TooLarge {
            protocol: Protocol::Http,
            offset: 0,
            limit: MAX_BODY
        }));
    }
    let mut p = Parser::new(Protocol::Http);
    let _ = p.feed(C2S, 0, &c, &mut Vec::new());
    assert_eq!(
        p.error_count(),
        2,
        "the body and the head over their bounds"
    );
    // A chunked body over the bound.
    let mut c = chunked(
        "POST",
        "/api/chat.postMessage",
        "application/json",
        big.as_bytes(),
        60_000,
    );
    c.extend(json_req(
        "POST",
        "/api/chat.postMessage",
        r#"{"channel":"C","text":"after"}"#,
    ));
    let (msgs, errs) = run_whole(Protocol::Http, &[(C2S, &c)]);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, "after");
    assert_eq!(errs.len(), 1);
}

#[test]
fn gaps() {
    let first = json_req(
        "POST",
        "/api/chat.postMessage",
        r#"{"channel":"C","text":"lost"}"#,
    );
    let second = json_req(
        "POST",
        "/api/chat.postMessage",
        r#"{"channel":"C","text":"kept"}"#,
    );
    // A hole inside a body with a known length: that message is lost, the next is read.
    let mut p = Parser::new(Protocol::Http);
    let mut out = Vec::new();
    let cut = first.len() - 10;
    p.feed(C2S, 0, &first[..cut - 5], &mut out).unwrap();
    let mut rest = first[cut..].to_vec();
    rest.extend_from_slice(&second);
    p.feed(C2S, cut as u64, &rest, &mut out).unwrap();
    assert_eq!(p.state(C2S), StreamState::Readable);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body, "kept");
    assert_eq!(out[0].stream_offset, first.len() as u64);

    // A hole in a head: resynchronised at the next request line.
    let mut p = Parser::new(Protocol::Http);
    let mut out = Vec::new();
    p.feed(C2S, 0, &first[..20], &mut out).unwrap();
    p.gap(C2S);
    assert_eq!(p.state(C2S), StreamState::Resyncing);
    let mut rest = b"ent-Type: application/json\r\n\r\n".to_vec();
    rest.extend_from_slice(&second);
    p.feed(C2S, 40, &rest, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body, "kept");
    assert_eq!(p.state(C2S), StreamState::Readable);

    // A hole past the body's end.
    let mut p = Parser::new(Protocol::Http);
    let mut out = Vec::new();
    p.feed(C2S, 0, &first[..cut], &mut out).unwrap();
    p.feed(C2S, first.len() as u64 + 3, &second[3..], &mut out)
        .unwrap();
    p.feed(C2S, (first.len() + second.len()) as u64, &second, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn malformed_input() {
    let (msgs, errs) = run_whole(
        Protocol::Http,
        &[(
            C2S,
            b"\x00\x01garbage\r\nPOST /api/chat.postMessage HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nPOST /api/chat.postMessage HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        )],
    );
    assert!(msgs.is_empty());
    assert_eq!(errs.len(), 1, "one error per feed");
    let mut p = Parser::new(Protocol::Http);
    let _ = p.feed(
        C2S,
        0,
        b"\x00\x01garbage\r\nPOST /api/chat.postMessage HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nPOST /api/chat.postMessage HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        &mut Vec::new(),
    );
    assert_eq!(p.error_count(), 4);
}

proptest! {
    #[test]
    fn random_bytes_never_panic_and_are_split_invariant(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(0usize..600, 0..8),
        dir in any::<bool>(),
    ) {
        let dir = if dir { C2S } else { S2C };
        let script = [(dir, data.as_slice())];
        let (whole, _) = run_whole(Protocol::Http, &script);
        let (split, _) = run_split(Protocol::Http, &script, &|_| cuts.clone());
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn mutated_requests_never_panic(
        flips in proptest::collection::vec((0usize..4000, any::<u8>()), 1..6),
        cuts in proptest::collection::vec(0usize..1500, 0..8),
    ) {
        let mut c = chunked("POST", "/api/v4/posts", "application/json", br#"{"channel_id":"c","message":"m"}"#, 5);
        c.extend(req("POST", "/api/v4/files", "Content-Type: multipart/form-data; boundary=B\r\n",
            &multipart_body("B", &[("channel_id", None, b"c"), ("files", Some("f"), b"data")])));
        c.extend(req("POST", "/b", "Content-Type: text/xml\r\n", b"<body><message to='a'><body>x</body></message></body>"));
        for (at, byte) in flips {
            let at = at % c.len();
            c[at] = byte;
        }
        let script = [(C2S, c.as_slice())];
        let (whole, _) = run_whole(Protocol::Http, &script);
        let (split, _) = run_split(Protocol::Http, &script, &|_| cuts.clone());
        prop_assert_eq!(whole, split);
    }
}
