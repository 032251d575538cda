//! `observability:`: the Prometheus endpoint and the kernel program's log level.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{error::Source, locate::join, PolicyErrors};

/// `observability:` as written; absent keys are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of observability settings: prometheus, kernel_log")]
pub struct ObservabilitySection {
    /// Address of the Prometheus endpoint (`GET /metrics`); absent: no endpoint.
    pub prometheus: Option<String>,
    /// Level of the XDP program's own log messages (aya-log).
    pub kernel_log: Option<KernelLog>,
}

/// Which of the XDP program's log messages reach the log. The level is fixed when the
/// program is loaded: messages below it are removed by the verifier, so `off` costs nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl KernelLog {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL`: messages with a level number at or
    /// below it are emitted (error = 1 ... trace = 5); 0 emits none.
    pub fn aya_level(self) -> u8 {
        match self {
            KernelLog::Off => 0,
            KernelLog::Error => 1,
            KernelLog::Warn => 2,
            KernelLog::Info => 3,
            KernelLog::Debug => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelLog::Off => "off",
            KernelLog::Error => "error",
            KernelLog::Warn => "warn",
            KernelLog::Info => "info",
            KernelLog::Debug => "debug",
        }
    }
}

/// `observability:` with every absent key filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observability {
    /// Where the Prometheus endpoint listens; `None`: off (the default).
    pub prometheus: Option<SocketAddr>,
    pub kernel_log: KernelLog,
}

/// Checks `observability:` and fills in its defaults.
pub(crate) fn settings(o: &ObservabilitySection, src: &Source, errs: &mut PolicyErrors) -> Observability {
    let mut out = Observability { prometheus: None, kernel_log: o.kernel_log.unwrap_or_default() };
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
        assert_eq!((e[0].line, e[0].column), (line, column), "wrong position: {}", e[0]);
        assert!(e[0].message.contains(needle), "`{needle}` not in: {}", e[0]);
    }

    #[test]
    fn off_by_default() {
        let p = parse("version: 1\n", "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability, Observability::default());
        assert_eq!(p.observability.prometheus, None);
        assert_eq!(p.observability.kernel_log, KernelLog::Off);
        let p = parse("version: 1\nobservability:\n", "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability, Observability::default());
    }

    #[test]
    fn endpoint_and_kernel_log_are_read() {
        let p = parse("version: 1\nobservability: {prometheus: \"127.0.0.1:9464\", kernel_log: warn}\n", "t.yaml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability.prometheus, Some("127.0.0.1:9464".parse().unwrap_or_else(|_| unreachable!())));
        assert_eq!(p.observability.kernel_log, KernelLog::Warn);
        assert_eq!(p.observability.kernel_log.aya_level(), 2);
        let p = parse("version: 1\nobservability:\n  prometheus: \"[::1]:9100\"\n  kernel_log: debug\n", "t.yaml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.observability.prometheus.map(|a| a.port()), Some(9100));
        assert_eq!(p.observability.kernel_log.aya_level(), 4);
        assert_eq!(KernelLog::Off.aya_level(), 0);
    }

    #[test]
    fn bad_settings_are_located() {
        one_error("version: 1\nobservability:\n  prometheus: localhost\n", 3, 15, "not an address and port");
        one_error("version: 1\nobservability: {prometheus: \"127.0.0.1:0\"}\n", 2, 29, "port 0");
        one_error("version: 1\nobservability:\n  kernel_log: loud\n", 3, 15, "loud");
        one_error("version: 1\nobservability:\n  grafana: yes\n", 3, 3, "grafana");
    }
}
