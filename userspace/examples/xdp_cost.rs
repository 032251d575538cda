//! A first look at the XDP program's cost per packet, in the kernel (`BPF_PROG_TEST_RUN`'s own
//! timing). Run as root: `cargo run --release -p imfw --example xdp_cost`. The full benchmark
//! with references is `cargo xtask bench` (a later issue).

use std::net::Ipv4Addr;

use imfw::{dataplane::Dataplane, policy};
use imfw_tests::{
    packets::{tcp4, tcp_flags},
    protocols::ClientHello,
};

fn main() -> anyhow::Result<()> {
    let text = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(path)?,
        None => policy::default_policy_text().to_owned(),
    };
    let c = policy::parse(&text, "policy.yaml").and_then(|p| p.compile()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut dp = Dataplane::load(1 << 16)?;
    dp.apply_offline(&c)?;
    let client = Ipv4Addr::new(192, 0, 2, 10);
    let server = Ipv4Addr::new(198, 51, 100, 20);

    // Decided flows: the same packet again and again hits one flow-table entry.
    let ch = ClientHello::new("web.whatsapp.com").build();
    let dropped = tcp4(client, 40000, server, 443, tcp_flags::ACK, &ch);
    dp.test_run(&dropped)?;
    let (_, ns) = dp.test_run_timed(&dropped, 1_000_000)?;
    println!("decided flow (drop), 1M repeats:           {ns:>7.1} ns/packet");
    let web = tcp4(client, 40001, server, 443, tcp_flags::ACK, &ClientHello::new("www.example.com").build());
    for _ in 0..8 {
        dp.test_run(&web)?;
    }
    let (_, ns) = dp.test_run_timed(&web, 1_000_000)?;
    println!("decided flow (unclassified, allow):        {ns:>7.1} ns/packet");

    // First payload packets: a new flow each time (one run per flow).
    let n = 20_000u32;
    for (label, payload) in [("TLS ClientHello, other name", ClientHello::new("www.example.com").build()), ("IRC registration (signature)", b"NICK alice\r\nUSER alice 0 * :A\r\n".to_vec()), ("TLS ClientHello, IM name", ch.clone())] {
        let mut total = 0.0;
        for i in 0..n {
            let f = tcp4(client, 1024 + (i % 60000) as u16, Ipv4Addr::from(0xc633_6400u32 + (i / 60000) + 1), 443, tcp_flags::ACK, &payload);
            let (_, t) = dp.test_run_timed(&f, 1)?;
            total += t;
            if i % 256 == 0 {
                dp.drain_events();
            }
        }
        println!("first payload packet, {label:<28} {:>7.1} ns/packet (mean of {n} new flows)", total / f64::from(n));
    }
    Ok(())
}
