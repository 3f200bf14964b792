//! Many route, neighbour and FDB changes in one go, pipelined on the
//! socket (see socket.rs): what a daemon programming thousands of
//! peers at start needs, at a fraction of one round trip per change.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;

use crate::neigh::{fdb_msg, neigh_msg};
use crate::route::{route_msg, Purpose};
use crate::{Error, Netlink, Route};

/// One change in a [`Netlink::apply`] batch, as the single-request
/// methods of the same names do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    ReplaceRoute(Route),
    DelRoute(Route),
    ReplaceNeighbour {
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    },
    DelNeighbour {
        index: u32,
        ip: IpAddr,
    },
    ReplaceFdb {
        index: u32,
        mac: [u8; 6],
        dst: IpAddr,
    },
    DelFdb {
        index: u32,
        mac: [u8; 6],
        dst: IpAddr,
    },
}

impl Change {
    fn message(&self) -> Result<(RouteNetlinkMessage, u16), Error> {
        const REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;
        Ok(match self {
            Change::ReplaceRoute(r) => (
                RouteNetlinkMessage::NewRoute(route_msg(r, Purpose::Add)?),
                REPLACE,
            ),
            Change::DelRoute(r) => (
                RouteNetlinkMessage::DelRoute(route_msg(r, Purpose::Delete)?),
                0,
            ),
            Change::ReplaceNeighbour { index, ip, mac } => (
                RouteNetlinkMessage::NewNeighbour(neigh_msg(*index, *ip, Some(*mac))),
                REPLACE,
            ),
            Change::DelNeighbour { index, ip } => (
                RouteNetlinkMessage::DelNeighbour(neigh_msg(*index, *ip, None)),
                0,
            ),
            Change::ReplaceFdb { index, mac, dst } => (
                RouteNetlinkMessage::NewNeighbour(fdb_msg(*index, *mac, *dst)),
                REPLACE,
            ),
            Change::DelFdb { index, mac, dst } => (
                RouteNetlinkMessage::DelNeighbour(fdb_msg(*index, *mac, *dst)),
                0,
            ),
        })
    }
}

impl Netlink {
    /// Apply `changes` in order, many per datagram; one result per change
    /// (a change that fails does not stop the others). `Err` when the
    /// socket itself fails: then none is known to be done.
    pub fn apply(&mut self, changes: &[Change]) -> Result<Vec<Result<(), Error>>, Error> {
        let mut results: Vec<Option<Result<(), Error>>> = Vec::with_capacity(changes.len());
        let mut encoded = Vec::new();
        for c in changes {
            match c.message() {
                Ok(m) => {
                    encoded.push(m);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut sent = self
            .sock
            .request_batch(encoded, "apply changes")?
            .into_iter();
        Ok(results
            .into_iter()
            .map(|r| {
                r.or_else(|| sent.next())
                    .unwrap_or_else(|| Err(Error::Protocol("apply changes: no result".into())))
            })
            .collect())
    }
}
