//! `resolvConf`: turn a resolv.conf file into the result's `dns`.
//! `nameserver` lines accumulate, the last `domain` wins, and `search` and
//! `options` lines append all their words. Comments (`#`, `;`), blank lines
//! and lines with a keyword only are skipped, as in the reference.

use std::path::Path;

use weft_cni::{Dns, Error};

pub fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(key), rest) = (words.next(), words.map(str::to_string).collect::<Vec<_>>())
        else {
            continue;
        };
        let Some(first) = rest.first() else { continue };
        match key {
            "nameserver" => dns.nameservers.push(first.clone()),
            "domain" => dns.domain = Some(first.clone()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

pub fn load(path: &Path) -> Result<Dns, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::io(
            format!("cannot read ipam.resolvConf \"{}\"", path.display()),
            &e,
        )
    })?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_keywords() {
        let dns = parse(
            "# comment\n; other comment\nnameserver 10.96.0.10\nnameserver  fd00::10 extra\n\
             domain a.example\ndomain cluster.local\nsearch ns.svc.cluster.local svc.cluster.local\n\
             search cluster.local\noptions ndots:5 edns0\nnameserver\nsortlist 1.2.3.4\n   \n",
        );
        assert_eq!(dns.nameservers, ["10.96.0.10", "fd00::10"]);
        assert_eq!(dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(
            dns.search,
            ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        );
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
        assert!(parse("").is_empty());
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let e = load(Path::new("/nonexistent/weft/resolv.conf")).unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("ipam.resolvConf"));
    }
}
