//! The session family after login: Logout ends the session; Login and Register are
//! pre-login frames (`crate::prelogin`), refused on a logged-in session.

use ringrouter_proto::v1::{Login, Register};
use ringrouter_proto::Status;

use crate::shard::{CloseReason, Flow, SessionKey, Shard};

impl Shard {
    /// Logout: the session closes after its queue is flushed; the reader stops.
    pub(crate) fn on_logout(&mut self, key: SessionKey) -> Flow {
        self.close(key, CloseReason::Logout, None);
        Flow::Stop
    }

    /// A second Login on a logged-in session.
    pub(crate) fn on_login_again(&mut self, key: SessionKey, l: Login) -> Flow {
        self.push_error(key, Status::BadRequest, "already logged in", l.request_id);
        Flow::Continue
    }

    /// Register on a logged-in session.
    pub(crate) fn on_register_after_login(&mut self, key: SessionKey, r: Register) -> Flow {
        self.push_error(
            key,
            Status::BadRequest,
            "register on a connection that is logged in already (Register comes before Login)",
            r.request_id,
        );
        Flow::Continue
    }
}
