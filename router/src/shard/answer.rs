//! Who waits for the outcome of a message that went through another shard or the
//! store ([`Answer`]), and the result of a room message, which waits for every shard
//! with members ([`RoomAck`], [`FanPart`]). The SendResult itself is sent by
//! `Shard::reply_send` (`delivery.rs`).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

use ringrouter_proto::Status;

use super::session::SessionId;
use super::Shard;

/// Who waits for a message to be stored.
#[derive(Debug)]
pub enum Answer {
    /// Nobody (the sender did not ask for a SendResult).
    Nobody,
    /// The sending session and its request id.
    Sender(SessionId, u64),
    /// One shard's share of a room message (see [`RoomAck`]).
    Part(Arc<FanPart>),
}

impl From<Option<(SessionId, u64)>> for Answer {
    fn from(r: Option<(SessionId, u64)>) -> Self {
        match r {
            Some((id, request_id)) => Answer::Sender(id, request_id),
            None => Answer::Nobody,
        }
    }
}

/// The SendResult of a room message whose sender asked for one: it is sent once every
/// shard with members has delivered or stored its members' copies (so OK means what it
/// means for a direct message: delivered or stored, on disk in sync mode). Any failure
/// wins over OK (the last one reported, e.g. RATE_LIMITED for a member's full queue).
#[derive(Debug)]
pub struct RoomAck {
    shards_left: AtomicUsize,
    worst: AtomicI32,
    reply: (SessionId, u64),
    msg_id: u64,
}

impl RoomAck {
    /// Waits for `shards` shards.
    pub fn new(shards: usize, reply: (SessionId, u64), msg_id: u64) -> Arc<RoomAck> {
        Arc::new(RoomAck {
            shards_left: AtomicUsize::new(shards),
            worst: AtomicI32::new(Status::Ok as i32),
            reply,
            msg_id,
        })
    }

    fn record(&self, status: Status) {
        if status != Status::Ok {
            self.worst.store(status as i32, Ordering::Relaxed);
        }
    }

    /// One shard is done.
    pub fn shard_done(&self, sh: &mut Shard, status: Status) {
        self.record(status);
        if self.shards_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let worst =
                Status::try_from(self.worst.load(Ordering::Relaxed)).unwrap_or(Status::Internal);
            sh.reply_send(Some(self.reply), self.msg_id, worst);
        }
    }
}

/// One shard's share of a [`RoomAck`]: the store steps of its members still running.
#[derive(Debug)]
pub struct FanPart {
    pending: AtomicUsize,
    worst: AtomicI32,
    ack: Arc<RoomAck>,
}

impl FanPart {
    /// A share with one step (the fan-out itself) pending.
    pub fn new(ack: Arc<RoomAck>) -> Arc<FanPart> {
        Arc::new(FanPart {
            pending: AtomicUsize::new(1),
            worst: AtomicI32::new(Status::Ok as i32),
            ack,
        })
    }

    /// One more step to wait for.
    pub fn add(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A step finished.
    pub fn finish(&self, sh: &mut Shard, status: Status) {
        if status != Status::Ok {
            self.worst.store(status as i32, Ordering::Relaxed);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let worst =
                Status::try_from(self.worst.load(Ordering::Relaxed)).unwrap_or(Status::Internal);
            self.ack.shard_done(sh, worst);
        }
    }
}
