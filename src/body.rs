//! Reading request bodies with a limit, and parsing them into typed requests with
//! errors that say what is wrong.

use crate::error::HubError;
use actix_web::error::PayloadError;
use actix_web::web;
use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

/// Reads the whole body (a `web::Payload`, or the raw payload an extractor
/// gets), refusing (413) past `limit_bytes`.
pub(crate) async fn read_limited(
    mut payload: impl Stream<Item = Result<bytes::Bytes, PayloadError>> + Unpin,
    limit_bytes: usize,
) -> Result<bytes::Bytes, HubError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            PayloadError::Overflow => HubError::PayloadTooLarge { limit_bytes },
            other => HubError::BadRequest(format!("could not read the request body: {other}")),
        })?;
        if body.len() + chunk.len() > limit_bytes {
            return Err(HubError::PayloadTooLarge { limit_bytes });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses JSON into `T`; the error names the field or position that is wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, HubError> {
    if body.is_empty() {
        return Err(HubError::BadRequest(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| HubError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Reads and parses in one step (operator and billing endpoints: small bodies).
pub(crate) async fn json_body<T: DeserializeOwned>(
    payload: web::Payload,
    limit_bytes: usize,
) -> Result<T, HubError> {
    parse_json(&read_limited(payload, limit_bytes).await?)
}
