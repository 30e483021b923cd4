//! SetPresence{status, text} and GetPresence{user} (see `shard::presence`).

use ringrouter_proto::reply;
use ringrouter_proto::v1::{GetPresence, SetPresence};
use ringrouter_proto::Status;

use crate::shard::{SessionKey, Shard};

impl Shard {
    /// A SetPresence from session `key`.
    pub(crate) fn on_set_presence(&mut self, key: SessionKey, p: SetPresence) {
        let f = reply::presence_result(p.request_id, Status::Unavailable, "not yet", None);
        self.push_frame(key, &f);
    }

    /// A GetPresence from session `key`.
    pub(crate) fn on_get_presence(&mut self, key: SessionKey, g: GetPresence) {
        let f = reply::presence_result(g.request_id, Status::Unavailable, "not yet", None);
        self.push_frame(key, &f);
    }
}
