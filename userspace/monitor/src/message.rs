//! Types shared by the rooms of the content path: the parsers produce [`Message`]s, the
//! content policy returns a [`Decision`] for each, the archive stores both.

use serde::{Deserialize, Serialize};

/// Which way the bytes travelled. The client is the side that opened the TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    pub fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }

    #[must_use]
    pub fn reverse(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }
}

/// Protocols whose content the controller can read (the others are end-to-end encrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Xmpp,
    Irc,
    Mqtt,
    /// Plain-HTTP chat APIs (Matrix, Mattermost, Rocket.Chat, Slack; XMPP over BOSH).
    Http,
    /// MSN Messenger (MSNP).
    Msnp,
    /// Yahoo Messenger (YMSG).
    Ymsg,
    /// AIM/ICQ (OSCAR).
    Oscar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A chat message: XMPP `<message>`, IRC `PRIVMSG`, an MQTT `PUBLISH`.
    Chat,
    /// IRC `NOTICE`, XMPP `<message type='headline'>`: shown, not answered.
    Notice,
    /// A message that only offers a file (DCC SEND, XMPP SI/Jingle/upload slot).
    FileOffer,
}

/// How a file is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// IRC CTCP `DCC SEND`.
    DccSend,
    /// XMPP stream initiation file transfer (XEP-0096).
    XmppSi,
    /// XMPP Jingle file transfer (XEP-0234).
    XmppJingle,
    /// XMPP HTTP file upload slot request or its URLs (XEP-0363).
    XmppHttpUpload,
    /// A URL sent as out-of-band data (XEP-0066).
    OutOfBand,
    /// A file uploaded to, or referenced in a post of, a chat web API (Matrix media and
    /// `m.file` events, Mattermost files, Rocket.Chat uploads and attachments, Slack files).
    HttpUpload,
    /// MSN Messenger `text/x-msmsgsinvite` file-transfer invitation.
    MsnInvite,
    /// Yahoo Messenger file-transfer service packet.
    YmsgFileTransfer,
    /// AIM/ICQ ICBM channel 2 rendezvous proposing a file transfer.
    OscarRendezvous,
}

/// A file offered or sent in a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub transfer: TransferKind,
    /// File name as offered (may be empty when the protocol gives only a URL).
    pub name: String,
    /// Size in bytes, when the offer states it.
    pub size: Option<u64>,
    pub mime: Option<String>,
    /// Where the file can be fetched (upload slot GET URL, OOB URL).
    pub url: Option<String>,
}

/// One message read from a monitored flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub protocol: Protocol,
    pub direction: Direction,
    pub kind: MessageKind,
    /// Sender as the protocol names it (JID, IRC nick or prefix, MQTT client id), when known.
    pub sender: Option<String>,
    /// Recipients (JID, channel or nick, MQTT topic).
    pub recipients: Vec<String>,
    /// The text, decoded (XML entities, UTF-8 with replacement of invalid sequences).
    pub body: String,
    pub attachments: Vec<Attachment>,
    /// Offset in the direction's byte stream where the message started.
    pub stream_offset: u64,
}

/// What the content policy does with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Deliver; nothing matched (or only `allow` rules).
    Allow,
    /// Deliver and record the match.
    Log,
    /// Stop the flow: drop verdict in XDP, TCP RST to both ends.
    Block,
}

/// The content policy's decision on one message, with the rules that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The strongest action of all matching rules (`Block` > `Log` > `Allow`).
    pub action: Action,
    /// One entry per matching rule.
    pub matches: Vec<RuleMatch>,
}

impl Decision {
    pub fn allow() -> Decision {
        Decision {
            action: Action::Allow,
            matches: Vec::new(),
        }
    }
}

/// One rule that matched, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    /// The rule's name in the policy.
    pub rule: String,
    pub action: Action,
    /// Human-readable reason: the keyword, the pattern kind and a redacted excerpt, the URL, the file.
    pub reason: String,
}
