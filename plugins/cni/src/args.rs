//! CNI_ARGS: `K=V;K2=V2`. As in libcni, a key the plugin does not know is an
//! error unless `IgnoreUnknown` is 1 or true.

use crate::error::Error;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parse `raw`, accepting only `known` keys (IgnoreUnknown is always known).
    pub fn parse(raw: &str, known: &[&str]) -> Result<CniArgs, Error> {
        let mut pairs = Vec::new();
        for item in raw.split(';').filter(|s| !s.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(Error::env(format!(
                    "CNI_ARGS item \"{item}\" is not of the form KEY=VALUE"
                )));
            };
            pairs.push((key.to_string(), value.to_string()));
        }
        let args = CniArgs { pairs };
        let ignore_unknown = args
            .get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        if !ignore_unknown {
            if let Some((key, _)) = args
                .pairs
                .iter()
                .find(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str()))
            {
                return Err(Error::env(format!(
                    "CNI_ARGS key \"{key}\" is unknown to this plugin (set IgnoreUnknown=1 to ignore it)"
                )));
            }
        }
        Ok(args)
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys() {
        let a = CniArgs::parse("IP=10.0.0.5;MAC=aa:bb:cc:dd:ee:ff", &["IP", "MAC"]).unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert_eq!(a.get("MAC"), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(a.get("X"), None);
        assert!(CniArgs::parse("", &[]).is_ok());
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=x", &["IP"])
                .unwrap_err()
                .code(),
            4
        );
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=1.2.3.4", &["IP"]).unwrap();
        assert_eq!(a.get("IP"), Some("1.2.3.4"));
        assert!(CniArgs::parse("IgnoreUnknown=TRUE;A=b", &[]).is_ok());
        assert_eq!(CniArgs::parse("garbage", &[]).unwrap_err().code(), 4);
    }
}
