//! The lab: a client, a gateway, a server and a recording host, each in its own network
//! namespace, joined by veth pairs and addressed from the documentation ranges.
//!
//! ```text
//!  client eth0 ---- imfw-lan0 [gw] imfw-wan0 ---- eth0 server
//!  192.0.2.2        192.0.2.1          198.51.100.1      198.51.100.2
//!  2001:db8:1::2    2001:db8:1::1      2001:db8:2::1     2001:db8:2::2
//!                          imfw-rec0 ---- eth0 rec
//!                          203.0.113.1    203.0.113.2
//! ```
//!
//! The gateway forwards IPv4 and IPv6; `imfw` runs there with XDP on `imfw-lan0` and
//! `imfw-wan0`, and redirects into `imfw-rec0`, whose peer has NAPI enabled so that redirected frames arrive.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::Path,
    process::ExitStatus,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    imfw_proc::ImfwProc,
    netns::{self, Netns},
};

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const GW_LAN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const GW_WAN4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const GW_REC4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const REC4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const GW_LAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const GW_WAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// The client's network, as a policy rule names it.
pub const CLIENT_NET4: &str = "192.0.2.0/24";
pub const CLIENT_NET6: &str = "2001:db8:1::/64";

/// The interface name of every host's single veth.
pub const HOST_IF: &str = "eth0";
/// Gateway interfaces (names as the default policy's examples use them).
pub const GW_LAN_IF: &str = "imfw-lan0";
pub const GW_WAN_IF: &str = "imfw-wan0";
pub const GW_REC_IF: &str = "imfw-rec0";

/// The four namespaces and, once started, `imfw` on the gateway. Dropping it stops `imfw`
/// and removes the namespaces (fields drop in declaration order: `imfw` first).
#[derive(Debug)]
pub struct Lab {
    imfw: Option<ImfwProc>,
    pub client: Netns,
    pub gw: Netns,
    pub server: Netns,
    pub rec: Netns,
    /// Gateway interface towards the client.
    pub gw_lan: String,
    /// Gateway interface towards the server.
    pub gw_wan: String,
    /// Gateway interface towards the recording host (redirect target).
    pub gw_rec: String,
}

impl Lab {
    /// Builds the topology and waits (at most 10 s) until every link is up and every address
    /// usable.
    pub fn new() -> Result<Self> {
        crate::util::require_root()?;
        netns::remove_stale();
        let lab = Lab {
            imfw: None,
            client: Netns::with_role("client")?,
            gw: Netns::with_role("gw")?,
            server: Netns::with_role("server")?,
            rec: Netns::with_role("rec")?,
            gw_lan: GW_LAN_IF.into(),
            gw_wan: GW_WAN_IF.into(),
            gw_rec: GW_REC_IF.into(),
        };
        lab.build().context("building the lab")?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        netns::veth_pair(&self.client, HOST_IF, &self.gw, &self.gw_lan)?;
        netns::veth_pair(&self.gw, &self.gw_wan, &self.server, HOST_IF)?;
        netns::veth_pair(&self.gw, &self.gw_rec, &self.rec, HOST_IF)?;

        let addr = |ns: &Netns, ifname: &str, a: &str| -> Result<()> {
            if a.contains(':') {
                // nodad: usable at once, no 1-2 s of duplicate address detection.
                ns.ip(&["-6", "addr", "add", a, "dev", ifname, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", a, "dev", ifname])?;
            }
            Ok(())
        };
        addr(&self.client, HOST_IF, "192.0.2.2/24")?;
        addr(&self.client, HOST_IF, "2001:db8:1::2/64")?;
        addr(&self.gw, &self.gw_lan, "192.0.2.1/24")?;
        addr(&self.gw, &self.gw_lan, "2001:db8:1::1/64")?;
        addr(&self.gw, &self.gw_wan, "198.51.100.1/24")?;
        addr(&self.gw, &self.gw_wan, "2001:db8:2::1/64")?;
        addr(&self.gw, &self.gw_rec, "203.0.113.1/24")?;
        addr(&self.server, HOST_IF, "198.51.100.2/24")?;
        addr(&self.server, HOST_IF, "2001:db8:2::2/64")?;
        addr(&self.rec, HOST_IF, "203.0.113.2/24")?;

        self.gw.sysctl("net/ipv4/ip_forward", "1")?;
        self.gw.sysctl("net/ipv6/conf/all/forwarding", "1")?;

        // Senders never hand XDP a frame larger than the MTU; the recorder's end needs NAPI.
        netns::disable_offloads(&self.client, HOST_IF)?;
        netns::disable_offloads(&self.server, HOST_IF)?;
        netns::disable_offloads(&self.gw, &self.gw_lan)?;
        netns::disable_offloads(&self.gw, &self.gw_wan)?;
        netns::disable_offloads(&self.gw, &self.gw_rec)?;
        netns::enable_napi(&self.rec, HOST_IF)?;

        for (ns, ifname) in self.links() {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        self.client
            .ip(&["route", "add", "default", "via", "192.0.2.1"])?;
        self.client
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])?;
        self.server
            .ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        self.server
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
        self.wait_ready(Duration::from_secs(10))
    }

    fn links(&self) -> [(&Netns, &str); 6] {
        [
            (&self.client, HOST_IF),
            (&self.gw, &self.gw_lan),
            (&self.gw, &self.gw_wan),
            (&self.gw, &self.gw_rec),
            (&self.server, HOST_IF),
            (&self.rec, HOST_IF),
        ]
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut waiting = Vec::new();
            for (ns, ifname) in self.links() {
                let link = ns.ip(&["-o", "link", "show", "dev", ifname])?;
                if !link.contains("LOWER_UP") {
                    waiting.push(format!("{}:{ifname} carrier", ns.name()));
                }
            }
            for ns in [&self.client, &self.gw, &self.server] {
                let tentative = ns.ip(&["-6", "-o", "addr", "show", "tentative"])?;
                if !tentative.trim().is_empty() {
                    waiting.push(format!("{}: tentative IPv6 address", ns.name()));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("lab not ready after {limit:?}: {}", waiting.join(", "));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `imfw run` on the gateway with this policy, XDP on the LAN and WAN interfaces.
    pub fn start_imfw(&mut self, policy_yaml: &str) -> Result<&ImfwProc> {
        self.start_imfw_with(&ImfwProc::bin(), policy_yaml)
    }

    /// As [`Lab::start_imfw`], with the binary at `bin`.
    pub fn start_imfw_with(&mut self, bin: &Path, policy_yaml: &str) -> Result<&ImfwProc> {
        if self.imfw.is_some() {
            bail!("imfw already runs in this lab");
        }
        let p = ImfwProc::start(bin, &self.gw, policy_yaml, &[&self.gw_lan, &self.gw_wan])?;
        Ok(self.imfw.insert(p))
    }

    /// As [`Lab::start_imfw`], with `extra` arguments to `imfw run` in place of
    /// `--detach-on-exit` (e.g. `--pin-dir DIR`).
    pub fn start_imfw_args(&mut self, policy_yaml: &str, extra: &[&str]) -> Result<&ImfwProc> {
        self.start_imfw_bin_args(&ImfwProc::bin(), policy_yaml, extra)
    }

    /// As [`Lab::start_imfw_args`], with the binary at `bin` (an upgrade to another build).
    pub fn start_imfw_bin_args(
        &mut self,
        bin: &Path,
        policy_yaml: &str,
        extra: &[&str],
    ) -> Result<&ImfwProc> {
        if self.imfw.is_some() {
            bail!("imfw already runs in this lab");
        }
        let p = ImfwProc::start_args(
            bin,
            &self.gw,
            policy_yaml,
            &[&self.gw_lan, &self.gw_wan],
            extra,
        )?;
        Ok(self.imfw.insert(p))
    }

    /// Kills `imfw` with SIGKILL (a crash) and returns its log.
    pub fn kill_imfw(&mut self) -> Result<String> {
        let mut p = self
            .imfw
            .take()
            .ok_or_else(|| anyhow::anyhow!("imfw was not started in this lab"))?;
        p.kill()?;
        Ok(p.log_text())
    }

    /// Stops `imfw` with SIGTERM and returns its log; fails when it did not exit cleanly.
    pub fn stop_imfw_log(&mut self) -> Result<String> {
        let mut p = self
            .imfw
            .take()
            .ok_or_else(|| anyhow::anyhow!("imfw was not started in this lab"))?;
        let st = p.stop()?;
        if !st.success() {
            bail!("imfw exited {st}; log:\n{}", p.log_tail());
        }
        Ok(p.log_text())
    }

    /// The running `imfw`. Panics when none was started.
    pub fn imfw(&self) -> &ImfwProc {
        self.imfw
            .as_ref()
            .expect("imfw was not started in this lab")
    }

    /// Stops `imfw` (SIGTERM, then SIGKILL after 10 s) and returns how it exited.
    pub fn stop_imfw(&mut self) -> Result<ExitStatus> {
        match self.imfw.take() {
            Some(mut p) => p.stop(),
            None => bail!("imfw was not started in this lab"),
        }
    }

    /// What `imfw` logged last, for failure messages ("" when it was not started).
    pub fn imfw_log_tail(&self) -> String {
        self.imfw
            .as_ref()
            .map(ImfwProc::log_tail)
            .unwrap_or_default()
    }

    /// The server's address of the family of `v6`.
    pub fn server_ip(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(SERVER6)
        } else {
            IpAddr::V4(SERVER4)
        }
    }

    /// Opens a TCP connection from the client to `dst` (the handshake crosses the gateway).
    pub fn client_connect(&self, dst: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.client
            .enter_with(|| TcpStream::connect_timeout(&dst, timeout))?
            .with_context(|| format!("client: TCP connect to {dst}"))
    }
}
