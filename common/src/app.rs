//! Stable application ids.
//!
//! Ids 1..=`BUILTIN_MAX` belong to the built-in catalogue and are never reused; apps an
//! operator defines in the policy get ids from `CUSTOM_FIRST` on, in order of appearance.
//! Id 0 means "not an IM app / not classified".

/// No app: the flow is not (or not yet) known to be instant messaging.
pub const APP_NONE: u16 = 0;
/// Highest id the built-in catalogue may use.
pub const BUILTIN_MAX: u16 = 127;
/// First id handed to operator-defined apps.
pub const CUSTOM_FIRST: u16 = 128;
/// Size of per-app tables (counters, policy rows); app ids are always below this.
pub const MAX_APPS: u16 = 256;

/// The built-in apps with their stable ids. Names are the canonical ids used in policies,
/// `imfw classify --json` and the accuracy scorer.
pub const BUILTIN_APPS: &[(u16, &str)] = &[
    (1, "whatsapp"),
    (2, "telegram"),
    (3, "signal"),
    (4, "discord"),
    (5, "slack"),
    (6, "teams"),
    (7, "zoom"),
    (8, "webex"),
    (9, "wechat"),
    (10, "qq"),
    (11, "line"),
    (12, "viber"),
    (13, "kakaotalk"),
    (14, "threema"),
    (15, "snapchat"),
    (16, "messenger"),
    (17, "googlechat"),
    (18, "imo"),
    (19, "dingtalk"),
    (20, "xmpp"),
    (21, "irc"),
    (22, "mattermost"),
    (23, "matrix"),
    (24, "rocketchat"),
    (25, "wire"),
    (26, "tox"),
    (27, "gadugadu"),
    (28, "oscar"),
    (29, "ymsg"),
    (30, "msn"),
    (31, "mqtt"),
    (APP_ECH, "ech"),
];

/// Not an app: a TLS or QUIC flow whose ClientHello hides its real server name with Encrypted
/// Client Hello, and whose outer (public) name and server address name no app. The policy
/// chooses what happens to it (`apps: {ech: ...}`); `defaults.action` and `all` do not cover
/// it, so it is allowed unless named.
pub const APP_ECH: u16 = 32;

/// The name of a built-in app id.
pub fn builtin_name(id: u16) -> Option<&'static str> {
    let mut i = 0;
    while i < BUILTIN_APPS.len() {
        if BUILTIN_APPS[i].0 == id {
            return Some(BUILTIN_APPS[i].1);
        }
        i += 1;
    }
    None
}

/// The id of a built-in app name.
pub fn builtin_id(name: &str) -> Option<u16> {
    BUILTIN_APPS.iter().find(|(_, n)| *n == name).map(|(id, _)| *id)
}
