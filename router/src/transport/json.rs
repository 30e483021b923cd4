//! The `ringrouter.v1.json` encoding of frames (protobuf JSON mapping).

use ringrouter_proto::v1::{ClientFrame, ServerFrame};

/// A client frame from a JSON text message.
pub(crate) fn client_frame_from_json(text: &[u8]) -> Result<ClientFrame, String> {
    let _ = text;
    Err("the JSON mapping is not built yet".into())
}

/// A server frame as a JSON text message.
pub(crate) fn server_frame_to_json(frame: &ServerFrame) -> String {
    let _ = frame;
    String::new()
}
