//! Ping{nonce} from a client is answered with Pong{nonce}; a Pong answers the router's
//! heartbeat Ping (any frame counts as a sign of life, see `Shard::on_frame`).

use ringrouter_proto::reply;
use ringrouter_proto::v1::Ping;

use crate::shard::{Flow, SessionKey, Shard};

impl Shard {
    /// Ping: a Pong with the same nonce.
    pub(crate) fn on_ping(&mut self, key: SessionKey, p: Ping) -> Flow {
        self.push_frame(key, &reply::pong(p.nonce));
        Flow::Continue
    }
}
