//! portmap: hostPort mappings for a pod, as the reference plugin's config
//! asks, in weft's own nftables table (or its own iptables chains). Every
//! rule carries the attachment's key, so DEL needs neither the netns nor
//! the mappings, and GC can drop attachments the runtime no longer knows.

mod attachment;
mod config;
mod conntrack;
mod iptables;
mod localnet;
mod lock;
mod nft;
mod record;

use std::process::ExitCode;

use weft_cni::{CniResult, Error, ErrorCode, Plugin, Request};
use weft_firewall::nft_works;

use attachment::Attachment;
use config::{Backend, PortmapConfig};
use record::Record;

struct Portmap;

fn backend(config: &PortmapConfig) -> Backend {
    config.backend.unwrap_or_else(|| {
        if nft_works() {
            Backend::Nftables
        } else {
            Backend::Iptables
        }
    })
}

impl Plugin for Portmap {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let config = PortmapConfig::parse(req)?;
        let prev = req.prev_result()?.ok_or_else(|| {
            Error::config("portmap must be called as a chained plugin: no prevResult")
        })?;
        if config.mappings.is_empty() {
            return Ok(prev);
        }
        let att = Attachment::new(req, &prev, &config)?;
        let recording = record::begin(&att.key)?;
        let made = match backend(&config) {
            Backend::Nftables => nft::add(&att, &config).map(|made| made.map(Record::Nft)),
            Backend::Iptables => {
                lock::acquire().and_then(|_lock| iptables::add(&att, &config).map(|()| None))
            }
        };
        match made {
            Ok(made) => recording.finish(made),
            Err(e) => {
                recording.abandon();
                return Err(e);
            }
        }
        if let Err(e) = localnet::enable(&att, &config) {
            let _ = teardown(req, &config);
            return Err(e);
        }
        conntrack::flush_udp(&att, &config.mappings, conntrack::Flow::ToHostPort);
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        // DEL is best-effort: mappings ADD refused must not keep their
        // attachment's cleanup from running.
        let config = PortmapConfig::parse(req).unwrap_or_else(|e| {
            weft_cni::log::warn(&format!(
                "DEL: {e}; removing this attachment's rules anyway"
            ));
            PortmapConfig::teardown_only()
        });
        // The mappings and prevResult are optional here: rules are found by
        // key. When they are present, stale UDP flows to the pod go too.
        if let Some(prev) = req.prev_result().ok().flatten() {
            if let Ok(att) = Attachment::new(req, &prev, &config) {
                conntrack::flush_udp(&att, &config.mappings, conntrack::Flow::ToPod);
            }
        }
        teardown(req, &config)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let config = PortmapConfig::parse(req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| Error::config("portmap CHECK needs prevResult"))?;
        if config.mappings.is_empty() {
            return Ok(());
        }
        let att = Attachment::new(req, &prev, &config)?;
        match record::load(&att.key) {
            Some(Record::Nft(made)) => nft::check(&att, &config, Some(&made)),
            _ => match backend(&config) {
                Backend::Nftables => nft::check(&att, &config, None),
                Backend::Iptables => iptables::check(&att, &config),
            },
        }
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let config = PortmapConfig::parse(req)?;
        if config.backend == Some(Backend::Nftables) && !nft_works() {
            return Err(Error::new(
                ErrorCode::NotAvailable,
                "the nftables backend was requested but nft does not work here",
            ));
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let config = PortmapConfig::parse(req)?;
        let stale = attachment::stale(req, &req.valid_attachments()?);
        match backend(&config) {
            Backend::Nftables => nft::remove(&stale, None),
            Backend::Iptables => lock::acquire().and_then(|_lock| iptables::remove(&stale)),
        }?;
        record::forget_where(&stale);
        Ok(())
    }
}

/// Remove every rule of this attachment, and then its record.
fn teardown(req: &Request, config: &PortmapConfig) -> Result<(), Error> {
    let key = attachment::key(req);
    let mine = |k: &str| k == key;
    // A record names the backend too, so DEL need not probe for it.
    match record::load(&key) {
        Some(Record::Nft(made)) => nft::remove(&mine, Some(&made)),
        _ => match backend(config) {
            Backend::Nftables => nft::remove(&mine, None),
            Backend::Iptables => lock::acquire().and_then(|_lock| iptables::remove(&mine)),
        },
    }?;
    record::forget(&key);
    Ok(())
}

fn main() -> ExitCode {
    if let Some(held) = weft_firewall::hold_if_asked() {
        return held;
    }
    weft_cni::skel::main(&Portmap)
}
