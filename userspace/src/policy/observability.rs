//! `observability:`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{error::Source, locate::join, PolicyErrors};

/// `observability:` as written; absent keys are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of observability settings: prometheus"
)]
pub struct ObservabilitySection {
    /// Address of the Prometheus endpoint (`GET /metrics`); absent: no endpoint.
    pub prometheus: Option<String>,
}

/// `observability:` with every absent key filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observability {
    /// Where the Prometheus endpoint listens; `None`: off (the default).
    pub prometheus: Option<SocketAddr>,
}

/// Checks `observability:` and fills in its defaults.
pub(crate) fn settings(
    o: &ObservabilitySection,
    src: &Source,
    errs: &mut PolicyErrors,
) -> Observability {
    let mut out = Observability { prometheus: None };
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
    use super::{super::parse, Observability};

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
