//! What a client address counts as for per-address bounds (`--max-connections-per-ip`,
//! `--max-registrations-per-ip`). A leaf module: the connection slots (`shared`) and the
//! registration gate (`net::signup`) both use it.

use std::net::IpAddr;

/// What an address counts as: an IPv4 address (also when mapped into IPv6), or the /64
/// prefix of an IPv6 one (one host usually holds a whole /64).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}
