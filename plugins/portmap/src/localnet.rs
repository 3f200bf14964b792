//! `route_localnet` on the link towards the pod, so `127.0.0.1:hostPort`
//! can be DNATed out of the loopback range (IPv4 with snat only, as in the
//! reference). Like the reference, DEL leaves it set: other pods behind the
//! same bridge may still rely on it.

use weft_cni::Error;
use weft_netlink::{write_sysctl, IpFamily, Netlink};

use crate::attachment::Attachment;
use crate::config::PortmapConfig;

pub fn enable(att: &Attachment, config: &PortmapConfig) -> Result<(), Error> {
    let Some(target) = att.v4.filter(|_| config.snat) else {
        return Ok(());
    };
    let kernel = |what: &str, e: weft_netlink::Error| Error::kernel(what, e);
    let mut nl = Netlink::new().map_err(|e| kernel("open netlink", e))?;
    let pod = target.pod.ip();
    let routes = nl
        .routes(IpFamily::V4)
        .map_err(|e| kernel("list routes", e))?;
    let best = routes
        .iter()
        .filter(|r| r.dst.contains(pod) && r.oif.is_some())
        .max_by_key(|r| r.dst.prefix());
    let Some(oif) = best.and_then(|r| r.oif) else {
        return Err(Error::kernel(
            format!("find the link towards {pod}"),
            "no route",
        ));
    };
    let link = nl
        .link_by_index(oif)
        .map_err(|e| kernel("look up the link towards the pod", e))?
        .ok_or_else(|| Error::kernel(format!("link #{oif} towards {pod}"), "gone"))?;
    write_sysctl(&format!("net/ipv4/conf/{}/route_localnet", link.name), "1")
        .map_err(|e| kernel("enable route_localnet", e))?;
    Ok(())
}
