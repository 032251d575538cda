//! `observability:`: the Prometheus endpoint and the kernel log level.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{error::Source, locate::join, PolicyErrors};

/// `observability:` as written; absent keys are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of observability settings: prometheus, kernel_log"
)]
pub struct ObservabilitySection {
    /// Address of the Prometheus endpoint (`GET /metrics`); absent: no endpoint.
    pub prometheus: Option<String>,
    /// The most verbose level of the XDP program's own log messages (`KernelLog`).
    pub kernel_log: Option<String>,
}

/// `observability:` with every absent key filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observability {
    /// Where the Prometheus endpoint listens; `None`: off (the default).
    pub prometheus: Option<SocketAddr>,
    pub kernel_log: KernelLog,
}

/// `observability.kernel_log`: which of the XDP program's log messages (aya-log) are sent to
/// imfw's log. Each level includes the ones above it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelLog {
    Off,
    /// Faults that lose inspection or state: a flow the table refused, a missing stage.
    Error,
    /// Also faults that lose a record or fail closed: a full event ring, a failed redirect.
    /// The default: rare, each worth an operator's look, and each also counted.
    #[default]
    Warn,
    /// Also one message per classified flow (app, method, verdict, server port).
    Info,
    /// Also one message per malformed packet.
    Debug,
}

impl KernelLog {
    pub const ALL: [KernelLog; 5] = [
        KernelLog::Off,
        KernelLog::Error,
        KernelLog::Warn,
        KernelLog::Info,
        KernelLog::Debug,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KernelLog::Off => "off",
            KernelLog::Error => "error",
            KernelLog::Warn => "warn",
            KernelLog::Info => "info",
            KernelLog::Debug => "debug",
        }
    }

    /// `Config::kernel_log`.
    pub fn config_value(self) -> u32 {
        use imfw_common::config::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_OFF, LOG_WARN};
        match self {
            KernelLog::Off => LOG_OFF,
            KernelLog::Error => LOG_ERROR,
            KernelLog::Warn => LOG_WARN,
            KernelLog::Info => LOG_INFO,
            KernelLog::Debug => LOG_DEBUG,
        }
    }
}

/// Checks `observability:` and fills in its defaults.
pub(crate) fn settings(
    o: &ObservabilitySection,
    src: &Source,
    errs: &mut PolicyErrors,
) -> Observability {
    let mut out = Observability::default();
    if let Some(text) = &o.prometheus {
        match text.trim().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => out.prometheus = Some(a),
            Ok(_) => errs.0.push(src.err(
                &join("observability", "prometheus"),
                format!("`{text}` has port 0; name the port Prometheus scrapes, such as 127.0.0.1:9464"),
            )),
            Err(_) => errs.0.push(src.err(
                &join("observability", "prometheus"),
                format!("`{text}` is not an address and port; expected one such as 127.0.0.1:9464 or [::1]:9464"),
            )),
        }
    }
    if let Some(text) = &o.kernel_log {
        let want = text.trim();
        match KernelLog::ALL.iter().find(|l| l.name() == want) {
            Some(l) => out.kernel_log = *l,
            None => errs.0.push(src.err(
                &join("observability", "kernel_log"),
                format!(
                    "`{text}` is not a kernel log level; expected off, error, warn, info or debug"
                ),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{super::parse, KernelLog, Observability};

    fn errors(text: &str) -> Vec<super::super::PolicyError> {
        match parse(text, "t.yaml") {
            Ok(_) => panic!("policy accepted:\n{text}"),
            Err(e) => e.0,
        }
    }

    #[track_caller]
    fn one_error(text: &str, line: usize, column: usize, needle: &str) {
        let e = errors(text);
        assert_eq!(e.len(), 1, "expected one error, got {e:?}");
        assert_eq!(
            (e[0].line, e[0].column),
            (line, column),
            "wrong position: {}",
            e[0]
        );
        assert!(e[0].message.contains(needle), "`{needle}` not in: {}", e[0]);
    }

    #[test]
    fn off_by_default() {
        let p = parse("version: 1\n", "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability, Observability::default());
        assert_eq!(p.observability.prometheus, None);
        let p = parse("version: 1\nobservability:\n", "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability, Observability::default());
    }

    #[test]
    fn the_endpoint_is_read() {
        let p = parse(
            "version: 1\nobservability: {prometheus: \"127.0.0.1:9464\"}\n",
            "t.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.observability.prometheus,
            Some("127.0.0.1:9464".parse().unwrap_or_else(|_| unreachable!()))
        );
        let p = parse(
            "version: 1\nobservability:\n  prometheus: \"[::1]:9100\"\n",
            "t.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability.prometheus.map(|a| a.port()), Some(9100));
    }

    #[test]
    fn the_kernel_log_level_is_read() {
        let p = parse("version: 1\n", "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability.kernel_log, KernelLog::Warn);
        for l in KernelLog::ALL {
            let text = format!("version: 1\nobservability:\n  kernel_log: {}\n", l.name());
            let p = parse(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.observability.kernel_log, l);
            let c = p.compile().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.config.kernel_log, l.config_value());
        }
        // The numbers the program compares with (aya-log's levels, off below them).
        let values: Vec<u32> = KernelLog::ALL.iter().map(|l| l.config_value()).collect();
        assert_eq!(values, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn bad_kernel_log_levels_are_located() {
        one_error(
            "version: 1\nobservability:\n  kernel_log: verbose\n",
            3,
            15,
            "not a kernel log level; expected off, error, warn, info or debug",
        );
        one_error(
            "version: 1\nobservability: {prometheus: \"127.0.0.1:9464\", kernel_log: WARN}\n",
            2,
            59,
            "`WARN` is not a kernel log level",
        );
        one_error(
            "version: 1\nobservability:\n  kernel_log: [warn]\n",
            3,
            15,
            "kernel_log",
        );
    }

    #[test]
    fn bad_settings_are_located() {
        one_error(
            "version: 1\nobservability:\n  prometheus: localhost\n",
            3,
            15,
            "not an address and port",
        );
        one_error(
            "version: 1\nobservability: {prometheus: \"127.0.0.1:0\"}\n",
            2,
            29,
            "port 0",
        );
        one_error(
            "version: 1\nobservability:\n  grafana: yes\n",
            3,
            3,
            "grafana",
        );
    }
}
