//! The `ringrouter.v1.json` encoding of frames (protobuf JSON mapping,
//! `ringrouter_proto::json`).

use ringrouter_proto::v1::{ClientFrame, ServerFrame};

/// A client frame from a JSON text message.
pub(crate) fn client_frame_from_json(text: &[u8]) -> Result<ClientFrame, String> {
    ringrouter_proto::json::client_frame_from_json(text).map_err(|e| e.to_string())
}

/// A server frame as a JSON text message.
pub(crate) fn server_frame_to_json(frame: &ServerFrame) -> String {
    ringrouter_proto::json::server_frame_to_json(frame)
}
