//! The chat web API calls read from HTTP requests, each from its vendor's API reference:
//!
//! - Matrix client-server API (spec.matrix.org, "Client-Server API" v1.x):
//!   `PUT /_matrix/client/{r0,v3,...}/rooms/{roomId}/send/m.room.message/{txnId}` (section
//!   "Sending events to a room"; `m.room.message` msgtypes in "Instant Messaging"), and the
//!   content repository's `POST /_matrix/media/{r0,v3}/upload?filename=` and
//!   `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.
//! - Mattermost API v4 (api.mattermost.com): `POST /api/v4/posts`, `PUT /api/v4/posts/{id}`
//!   and `.../patch` (edits), `POST /api/v4/files` (multipart, or raw with `channel_id` and
//!   `filename` in the query).
//! - Rocket.Chat REST API (developer.rocket.chat): `POST /api/v1/chat.postMessage`,
//!   `POST /api/v1/chat.sendMessage`, `POST /api/v1/rooms.upload/{rid}` and
//!   `rooms.media/{rid}` (multipart).
//! - Slack Web API (api.slack.com/methods): `chat.postMessage` and its siblings (JSON or
//!   form-encoded), `files.upload` (multipart or form), `files.getUploadURLExternal`.
//! - XMPP over BOSH (XEP-0124 section 7, XEP-0206): a POST with an XML `<body/>` wrapper.
//!
//! Everything else (other paths, GETs, end-to-end encrypted Matrix events) gives no message.

use memchr::{memchr, memmem};
use serde_json::Value;

use super::Want;
use crate::message::{Attachment, Direction, Message, MessageKind, Protocol, TransferKind};
use crate::parsers::lossy;

/// Most parts of a multipart body looked at (the body itself is within `MAX_BODY`).
const MAX_PARTS: usize = 256;

/// What a request is, decided from its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    None,
    MatrixSend {
        room: String,
        event_type: String,
    },
    MattermostPost {
        path: String,
    },
    MattermostFiles {
        path: String,
        channel: Option<String>,
    },
    RocketPostMessage,
    RocketSendMessage,
    RocketUpload {
        rid: String,
    },
    SlackChat {
        path: String,
        query: String,
    },
    SlackFilesUpload {
        path: String,
        query: String,
    },
    SlackUploadUrl {
        path: String,
        query: String,
    },
    BoshRequest,
    BoshResponse,
}

/// A request head, as far as the routes need it.
pub(super) struct Request<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub content_type: &'a str,
    pub content_length: Option<u64>,
}

/// A complete body, or the kept prefix of one.
pub(super) struct Body<'a> {
    pub bytes: &'a [u8],
    /// The body's full length.
    pub len: u64,
    /// `bytes` is only the start of the body.
    pub truncated: bool,
    pub content_type: &'a str,
    /// Stream offset of the request line.
    pub start: u64,
    /// Stream offset of the body's first byte.
    pub bytes_start: u64,
}

/// The media type without parameters, lowercased.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub(super) fn is_xml(content_type: &str) -> bool {
    matches!(
        media_type(content_type).as_str(),
        "text/xml" | "application/xml"
    )
}

fn is_multipart(content_type: &str) -> bool {
    media_type(content_type) == "multipart/form-data"
}

fn is_form(content_type: &str) -> bool {
    media_type(content_type) == "application/x-www-form-urlencoded"
}

/// Path and query of a request target; an absolute-form target (to a proxy, RFC 9112
/// section 3.2.2) loses its scheme and authority.
fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let mut t = target;
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = memchr(b'/', rest).map_or(&b"/"[..], |n| &rest[n..]);
        }
    }
    match memchr(b'?', t) {
        Some(n) => (&t[..n], &t[n + 1..]),
        None => (t, &[]),
    }
}

fn message(
    kind: MessageKind,
    sender: Option<String>,
    recipients: Vec<String>,
    body: String,
    attachments: Vec<Attachment>,
    start: u64,
) -> Message {
    Message {
        protocol: Protocol::Http,
        direction: Direction::ClientToServer,
        kind,
        sender,
        recipients,
        body,
        attachments,
        stream_offset: start,
    }
}

fn upload(
    name: String,
    size: Option<u64>,
    mime: Option<String>,
    url: Option<String>,
) -> Attachment {
    Attachment {
        transfer: TransferKind::HttpUpload,
        name,
        size,
        mime,
        url,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Decides what a request is and what of its body is needed. Uploads whose body is the file
/// itself are reported here, from the head, so that a policy can act before the file is
/// through.
#[expect(clippy::too_many_lines, reason = "one routing table")]
pub(super) fn route(req: &Request, start: u64, out: &mut Vec<Message>) -> (Route, Want) {
    let (path, query) = split_target(req.target);
    let path_text = lossy(path).into_owned();
    let segs: Vec<&[u8]> = path.split(|&b| b == b'/').skip(1).collect();
    let post = req.method == b"POST";
    let put = req.method == b"PUT";
    let ct = req.content_type;
    let raw_upload =
        |name: String, url: Option<String>, recipient: String, out: &mut Vec<Message>| {
            out.push(message(
                MessageKind::FileOffer,
                None,
                vec![recipient],
                String::new(),
                vec![upload(
                    name,
                    req.content_length,
                    non_empty(media_type(ct).as_str()),
                    url,
                )],
                start,
            ));
        };
    match segs.as_slice() {
        [b"_matrix", b"client", _, b"rooms", room, b"send", event_type, ..] if put || post => (
            Route::MatrixSend {
                room: pct_decode(room, false),
                event_type: pct_decode(event_type, false),
            },
            Want::Whole,
        ),
        [b"_matrix", b"media", _, b"upload"] if post => {
            let name = query_param(query, "filename").unwrap_or_default();
            raw_upload(name, None, path_text, out);
            (Route::None, Want::Discard)
        }
        [b"_matrix", b"media", _, b"upload", server, media] if put => {
            let name = query_param(query, "filename").unwrap_or_default();
            let url = format!(
                "mxc://{}/{}",
                pct_decode(server, false),
                pct_decode(media, false)
            );
            raw_upload(name, Some(url), path_text, out);
            (Route::None, Want::Discard)
        }
        [b"api", b"v4", b"posts"] if post => {
            (Route::MattermostPost { path: path_text }, Want::Whole)
        }
        [b"api", b"v4", b"posts", _] | [b"api", b"v4", b"posts", _, b"patch"] if put => {
            (Route::MattermostPost { path: path_text }, Want::Whole)
        }
        [b"api", b"v4", b"files"] if post => {
            let channel = query_param(query, "channel_id");
            if is_multipart(ct) {
                (
                    Route::MattermostFiles {
                        path: path_text,
                        channel,
                    },
                    Want::Prefix,
                )
            } else {
                let name = query_param(query, "filename").unwrap_or_default();
                raw_upload(name, None, channel.unwrap_or(path_text), out);
                (Route::None, Want::Discard)
            }
        }
        [b"api", b"v1", b"chat.postMessage"] if post => (Route::RocketPostMessage, Want::Whole),
        [b"api", b"v1", b"chat.sendMessage"] if post => (Route::RocketSendMessage, Want::Whole),
        [b"api", b"v1", b"rooms.upload" | b"rooms.media", rid] if post => (
            Route::RocketUpload {
                rid: pct_decode(rid, false),
            },
            Want::Prefix,
        ),
        [b"api", method] if post => {
            let path = path_text;
            let query = lossy(query).into_owned();
            match *method {
                b"chat.postMessage"
                | b"chat.postEphemeral"
                | b"chat.meMessage"
                | b"chat.scheduleMessage"
                | b"chat.update" => (Route::SlackChat { path, query }, Want::Whole),
                b"files.upload" => (
                    Route::SlackFilesUpload { path, query },
                    if is_multipart(ct) {
                        Want::Prefix
                    } else {
                        Want::Whole
                    },
                ),
                b"files.getUploadURLExternal" => {
                    (Route::SlackUploadUrl { path, query }, Want::Whole)
                }
                _ => (Route::None, Want::Discard),
            }
        }
        _ if post && is_xml(ct) => (Route::BoshRequest, Want::Whole),
        _ => (Route::None, Want::Discard),
    }
}

/// Reads the messages of a complete request body.
#[expect(clippy::too_many_lines, reason = "one arm per API call, each short")]
pub(super) fn interpret(
    route: &Route,
    body: &Body,
    out: &mut Vec<Message>,
) -> Result<(), &'static str> {
    let start = body.start;
    match route {
        Route::None | Route::BoshRequest | Route::BoshResponse => Ok(()),
        Route::MatrixSend { room, event_type } => {
            // Other event types (reactions, redactions, `m.room.encrypted` from end-to-end
            // encrypted rooms) carry no readable text.
            if event_type != "m.room.message" {
                return Ok(());
            }
            let v = json(body.bytes)?;
            let text = str_of(&v, "body").to_owned();
            let msgtype = str_of(&v, "msgtype");
            let (kind, attachments) = match msgtype {
                "m.notice" => (MessageKind::Notice, Vec::new()),
                "m.file" | "m.image" | "m.video" | "m.audio" => {
                    let name = match str_of(&v, "filename") {
                        "" => text.clone(),
                        f => f.to_owned(),
                    };
                    let info = v.get("info");
                    let size = info.and_then(|i| i.get("size")).and_then(Value::as_u64);
                    let mime = info
                        .and_then(|i| i.get("mimetype"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    let url = v
                        .get("url")
                        .or_else(|| v.get("file").and_then(|f| f.get("url")))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    (MessageKind::FileOffer, vec![upload(name, size, mime, url)])
                }
                _ => (MessageKind::Chat, Vec::new()),
            };
            if text.is_empty() && attachments.is_empty() {
                return Ok(());
            }
            out.push(message(
                kind,
                None,
                vec![room.clone()],
                text,
                attachments,
                start,
            ));
            Ok(())
        }
        Route::MattermostPost { path } => {
            let v = json(body.bytes)?;
            let text = str_of(&v, "message").to_owned();
            let attachments: Vec<Attachment> = v
                .get("file_ids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|id| {
                    upload(
                        String::new(),
                        None,
                        None,
                        Some(format!("/api/v4/files/{id}")),
                    )
                })
                .collect();
            let channel = non_empty(str_of(&v, "channel_id")).unwrap_or_else(|| path.clone());
            push_chat(out, None, channel, text, attachments, start);
            Ok(())
        }
        Route::MattermostFiles { path, channel } => {
            let parts = multipart(body)?;
            let channel = channel
                .clone()
                .or_else(|| {
                    parts
                        .iter()
                        .find(|p| p.name == "channel_id" && p.filename.is_none())
                        .map(|p| lossy(p.data).into_owned())
                })
                .unwrap_or_else(|| path.clone());
            let files = file_parts(&parts);
            if !files.is_empty() {
                out.push(message(
                    MessageKind::FileOffer,
                    None,
                    vec![channel],
                    String::new(),
                    files,
                    start,
                ));
            }
            Ok(())
        }
        Route::RocketPostMessage => {
            let v = json(body.bytes)?;
            let room = match str_of(&v, "roomId") {
                "" => str_of(&v, "channel"),
                r => r,
            };
            let sender = non_empty(str_of(&v, "alias"));
            let attachments = rocket_attachments(&v);
            push_chat(
                out,
                sender,
                room.to_owned(),
                str_of(&v, "text").to_owned(),
                attachments,
                start,
            );
            Ok(())
        }
        Route::RocketSendMessage => {
            let v = json(body.bytes)?;
            let Some(m) = v.get("message") else {
                return Err("chat.sendMessage without a message");
            };
            let attachments = rocket_attachments(m);
            let sender = non_empty(str_of(m, "alias"));
            push_chat(
                out,
                sender,
                str_of(m, "rid").to_owned(),
                str_of(m, "msg").to_owned(),
                attachments,
                start,
            );
            Ok(())
        }
        Route::RocketUpload { rid } => {
            let parts = multipart(body)?;
            let text = ["msg", "description"]
                .iter()
                .filter_map(|n| parts.iter().find(|p| p.name == *n && p.filename.is_none()))
                .map(|p| lossy(p.data).into_owned())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            let files = file_parts(&parts);
            if !files.is_empty() || !text.is_empty() {
                let kind = if files.is_empty() {
                    MessageKind::Chat
                } else {
                    MessageKind::FileOffer
                };
                out.push(message(kind, None, vec![rid.clone()], text, files, start));
            }
            Ok(())
        }
        Route::SlackChat { path, query } => {
            let args = Args::read(body, query)?;
            let mut text = args.get("text").unwrap_or_default();
            if text.is_empty() {
                // Messages built only from blocks: their text objects (Block Kit).
                if let Some(Value::Array(blocks)) = args.json.as_ref().and_then(|v| v.get("blocks"))
                {
                    text = blocks
                        .iter()
                        .filter_map(|b| {
                            b.get("text")
                                .and_then(|t| t.get("text"))
                                .and_then(Value::as_str)
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                }
            }
            let channel = args.get("channel").unwrap_or_else(|| path.clone());
            push_chat(out, args.get("username"), channel, text, Vec::new(), start);
            Ok(())
        }
        Route::SlackFilesUpload { path, query } => {
            let (args, mut files) = if is_multipart(body.content_type) {
                let parts = multipart(body)?;
                let files = file_parts(&parts);
                let fields = parts
                    .iter()
                    .filter(|p| p.filename.is_none())
                    .map(|p| (p.name.clone(), lossy(p.data).into_owned()))
                    .collect();
                (
                    Args {
                        json: None,
                        pairs: fields,
                    },
                    files,
                )
            } else {
                (Args::read(body, query)?, Vec::new())
            };
            if files.is_empty() {
                // Text content given as the `content` argument instead of a file.
                if let Some(content) = args.get("content") {
                    files.push(upload(
                        String::new(),
                        Some(content.len() as u64),
                        None,
                        None,
                    ));
                }
            }
            if let Some(name) = args.get("filename") {
                for f in &mut files {
                    f.name.clone_from(&name);
                }
            }
            if files.is_empty() {
                return Ok(());
            }
            let recipients: Vec<String> = args
                .get("channels")
                .map(|c| {
                    c.split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .filter(|c: &Vec<String>| !c.is_empty())
                .unwrap_or_else(|| vec![path.clone()]);
            let text = args.get("initial_comment").unwrap_or_default();
            out.push(message(
                MessageKind::FileOffer,
                None,
                recipients,
                text,
                files,
                start,
            ));
            Ok(())
        }
        Route::SlackUploadUrl { path, query } => {
            let args = Args::read(body, query)?;
            let Some(name) = args.get("filename") else {
                return Ok(());
            };
            let size = args.get("length").and_then(|l| l.trim().parse().ok());
            out.push(message(
                MessageKind::FileOffer,
                None,
                vec![path.clone()],
                String::new(),
                vec![upload(name, size, None, None)],
                start,
            ));
            Ok(())
        }
    }
}

/// A chat message, or a file offer when only files were sent.
fn push_chat(
    out: &mut Vec<Message>,
    sender: Option<String>,
    room: String,
    text: String,
    attachments: Vec<Attachment>,
    start: u64,
) {
    if text.is_empty() && attachments.is_empty() {
        return;
    }
    let kind = if text.is_empty() {
        MessageKind::FileOffer
    } else {
        MessageKind::Chat
    };
    out.push(message(kind, sender, vec![room], text, attachments, start));
}

/// Rocket.Chat message attachments (`title`, `title_link`, media URLs).
fn rocket_attachments(v: &Value) -> Vec<Attachment> {
    v.get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let url = ["title_link", "image_url", "audio_url", "video_url"]
                .iter()
                .find_map(|k| a.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()))?;
            Some(upload(
                str_of(a, "title").to_owned(),
                None,
                None,
                Some(url.to_owned()),
            ))
        })
        .collect()
}

fn json(bytes: &[u8]) -> Result<Value, &'static str> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| "request body is not JSON")?;
    if v.is_object() {
        Ok(v)
    } else {
        Err("request body is not a JSON object")
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Slack arguments: a JSON object, or form fields, with the query string as a fallback
/// (Slack accepts arguments in either).
struct Args {
    json: Option<Value>,
    pairs: Vec<(String, String)>,
}

impl Args {
    fn read(body: &Body, query: &str) -> Result<Args, &'static str> {
        let mut pairs = Vec::new();
        let mut json_v = None;
        let trimmed = body.bytes.trim_ascii_start();
        if media_type(body.content_type) == "application/json" || trimmed.first() == Some(&b'{') {
            json_v = Some(json(body.bytes)?);
        } else if is_form(body.content_type) || !trimmed.is_empty() {
            pairs = form(body.bytes);
        }
        pairs.extend(form(query.as_bytes()));
        Ok(Args {
            json: json_v,
            pairs,
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.json.as_ref().and_then(|j| j.get(key)) {
            return match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Array(a) => Some(
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => None,
            };
        }
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// `application/x-www-form-urlencoded` (WHATWG URL standard, section 5.1).
fn form(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match memchr(b'=', p) {
            Some(n) => (pct_decode(&p[..n], true), pct_decode(&p[n + 1..], true)),
            None => (pct_decode(p, true), String::new()),
        })
        .collect()
}

fn query_param(query: &[u8], name: &str) -> Option<String> {
    form(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Percent-decoding (RFC 3986 section 2.1); `+` is a space in form data. Invalid escapes are
/// kept as they are; invalid UTF-8 is replaced.
fn pct_decode(s: &[u8], plus: bool) -> String {
    if !s.iter().any(|&b| b == b'%' || (plus && b == b'+')) {
        return lossy(s).into_owned();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| {
                let h = std::str::from_utf8(h).ok()?;
                u8::from_str_radix(h, 16).ok()
            });
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if plus && b == b'+' { b' ' } else { b });
        i += 1;
    }
    lossy(&out).into_owned()
}

/// Parameters of a header value (`type; a=b; c="d;e"`), names lowercased, quoted strings
/// unescaped (RFC 9110 section 5.6.6).
fn params(value: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = memchr(b';', value).map_or(value.len(), |n| n + 1);
    while i < value.len() {
        let rest = &value[i..];
        let eq = memchr(b'=', rest);
        let semi = memchr(b';', rest);
        let Some(eq) = eq.filter(|&e| semi.is_none_or(|s| e < s)) else {
            i += semi.map_or(rest.len(), |s| s + 1);
            continue;
        };
        let name = lossy(rest[..eq].trim_ascii()).to_ascii_lowercase();
        let mut j = eq + 1;
        while rest.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let mut val = Vec::new();
        if rest.get(j) == Some(&b'"') {
            j += 1;
            while let Some(&c) = rest.get(j) {
                j += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        if let Some(&n) = rest.get(j) {
                            val.push(n);
                            j += 1;
                        }
                    }
                    _ => val.push(c),
                }
            }
            j = memchr(b';', &rest[j.min(rest.len())..]).map_or(rest.len(), |n| j + n + 1);
        } else {
            let end = memchr(b';', &rest[j..]).map_or(rest.len(), |n| j + n);
            val.extend_from_slice(rest[j..end].trim_ascii());
            j = (end + 1).min(rest.len());
        }
        out.push((name, lossy(&val).into_owned()));
        i += j.max(1);
    }
    out
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One part of a `multipart/form-data` body (RFC 7578).
struct Part<'a> {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: &'a [u8],
    /// The part's full size; for the last part of a truncated body, the size it has if it is
    /// the body's last part (what the body's length leaves after the closing delimiter).
    size: u64,
}

fn multipart<'a>(body: &Body<'a>) -> Result<Vec<Part<'a>>, &'static str> {
    let ct = params(body.content_type.as_bytes());
    let boundary = param(&ct, "boundary").ok_or("multipart body without a boundary")?;
    if boundary.is_empty() || boundary.len() > 70 {
        // RFC 2046 section 5.1.1: 1 to 70 characters.
        return Err("bad multipart boundary");
    }
    let bytes = body.bytes;
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary.as_bytes());
    let finder = memmem::Finder::new(&delim);
    // The first delimiter may open the body without the CRLF before it.
    let mut at = if bytes.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        finder.find(bytes).ok_or("no multipart delimiter")? + delim.len()
    };
    let mut parts = Vec::new();
    while parts.len() < MAX_PARTS {
        let rest = &bytes[at.min(bytes.len())..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(eol) = memchr(b'\n', rest) else {
            break;
        };
        let head_start = at + eol + 1;
        let Some(head_len) = memmem::find(&bytes[head_start.min(bytes.len())..], b"\r\n\r\n")
        else {
            break;
        };
        let head = &bytes[head_start..head_start + head_len];
        let data_start = head_start + head_len + 4;
        let (mut name, mut filename, mut content_type) = (String::new(), None, None);
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr(b':', line) else {
                continue;
            };
            let field = &line[..colon];
            let value = line[colon + 1..].trim_ascii();
            if field.eq_ignore_ascii_case(b"content-disposition") {
                let p = params(value);
                param(&p, "name").unwrap_or_default().clone_into(&mut name);
                filename = param(&p, "filename*")
                    .map(ext_value)
                    .or_else(|| param(&p, "filename").map(str::to_owned));
            } else if field.eq_ignore_ascii_case(b"content-type") {
                content_type = non_empty(&media_type(&lossy(value)));
            }
        }
        let tail = &bytes[data_start.min(bytes.len())..];
        let Some(n) = finder.find(tail) else {
            // The last part runs to the end of what was kept.
            let size = if body.truncated {
                let closing = delim.len() as u64 + 4;
                body.len
                    .saturating_sub(data_start as u64)
                    .saturating_sub(closing)
            } else {
                tail.len() as u64
            };
            parts.push(Part {
                name,
                filename,
                content_type,
                data: tail,
                size,
            });
            break;
        };
        parts.push(Part {
            name,
            filename,
            content_type,
            data: &tail[..n],
            size: n as u64,
        });
        at = data_start + n + delim.len();
    }
    Ok(parts)
}

/// RFC 8187 `charset'lang'value` (as in `filename*=UTF-8''na%C3%AFve.txt`).
fn ext_value(v: &str) -> String {
    let mut it = v.splitn(3, '\'');
    match (it.next(), it.next(), it.next()) {
        (Some(_), Some(_), Some(enc)) => pct_decode(enc.as_bytes(), false),
        _ => v.to_owned(),
    }
}

/// The attachments of the file parts (those with a file name).
fn file_parts(parts: &[Part]) -> Vec<Attachment> {
    parts
        .iter()
        .filter_map(|p| {
            let name = p.filename.clone()?;
            Some(upload(name, Some(p.size), p.content_type.clone(), None))
        })
        .collect()
}

/// XEP-0124 section 7: the stanzas inside a `<body ...>...</body>` wrapper, and where they
/// start in `bytes`. `None` when the payload is not a BOSH body or holds no stanza.
pub(super) fn bosh_inner(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut i = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if bytes[i..].starts_with(b"<?") {
        i += memmem::find(&bytes[i..], b"?>")? + 2;
        i += bytes[i..].iter().position(|b| !b.is_ascii_whitespace())?;
    }
    let tag = bytes.get(i..)?.strip_prefix(b"<body")?;
    if !tag
        .first()
        .is_some_and(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
    {
        return None;
    }
    // The end of the start tag: the first `>` outside a quoted attribute value.
    let mut quote = 0u8;
    let mut end = None;
    for (k, &b) in tag.iter().enumerate() {
        match (quote, b) {
            (0, b'"' | b'\'') => quote = b,
            (0, b'>') => {
                end = Some(k);
                break;
            }
            (q, _) if q == b => quote = 0,
            _ => {}
        }
    }
    let end = end?;
    if end > 0 && tag[end - 1] == b'/' {
        return None;
    }
    let inner_start = i + 5 + end + 1;
    let inner = &bytes[inner_start..];
    let inner_end = memmem::rfind(inner, b"</body").unwrap_or(inner.len());
    let inner = &inner[..inner_end];
    if inner.trim_ascii().is_empty() {
        return None;
    }
    Some((inner_start, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parameters() {
        let p = params(br#"form-data; name="files"; filename="a; b \"c\".pdf""#);
        assert_eq!(param(&p, "name"), Some("files"));
        assert_eq!(param(&p, "filename"), Some("a; b \"c\".pdf"));
        let p = params(b"multipart/form-data;boundary=XyZ ; charset=utf-8");
        assert_eq!(param(&p, "boundary"), Some("XyZ"));
        assert_eq!(param(&p, "charset"), Some("utf-8"));
        assert!(params(b"text/plain").is_empty());
        // Unterminated quote and stray separators do not panic.
        let _ = params(br#"a; b="c"#);
        let _ = params(b";;=;=x;y=");
    }

    #[test]
    fn percent_and_form_decoding() {
        assert_eq!(
            pct_decode(b"%21abc%3Aexample.org", false),
            "!abc:example.org"
        );
        assert_eq!(pct_decode(b"a+b%2", true), "a b%2");
        assert_eq!(pct_decode(b"%zz%", false), "%zz%");
        assert_eq!(
            form(b"channel=C1&text=hi+there%21&empty&=x"),
            vec![
                ("channel".into(), "C1".into()),
                ("text".into(), "hi there!".into()),
                ("empty".into(), String::new()),
                (String::new(), "x".into()),
            ]
        );
        assert_eq!(ext_value("UTF-8''na%C3%AFve.txt"), "naïve.txt");
    }

    #[test]
    fn targets() {
        assert_eq!(split_target(b"/a/b?x=1"), (&b"/a/b"[..], &b"x=1"[..]));
        assert_eq!(
            split_target(b"http://h.example:8008/_matrix?q"),
            (&b"/_matrix"[..], &b"q"[..])
        );
        assert_eq!(split_target(b"http://h.example"), (&b"/"[..], &b""[..]));
    }

    #[test]
    fn bosh_wrapper() {
        let b =
            b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind' a='x>y'><message/></body>";
        let (at, inner) = bosh_inner(b).unwrap();
        assert_eq!(inner, b"<message/>");
        assert_eq!(&b[at..at + 10], b"<message/>");
        assert_eq!(bosh_inner(b"<?xml version='1.0'?>\n<body sid='s'/>"), None);
        assert_eq!(bosh_inner(b"<bodyx></bodyx>"), None);
        assert_eq!(bosh_inner(b"<body a='unterminated>"), None);
        assert_eq!(bosh_inner(b"   "), None);
    }
}
