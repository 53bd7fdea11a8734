//! The one place that writes responses gatehouse makes itself: direct responses and errors.

use crate::runtime::DirectResponse;
use bytes::Bytes;
use http::{header, Method};
use pingora::prelude::*;
use pingora::proxy::Session;

/// Write a complete response. The body is left out for HEAD requests; Content-Length is
/// always the body's length.
pub async fn send(
    session: &mut Session,
    status: u16,
    headers: &[(http::HeaderName, http::HeaderValue)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    let head = session.req_header().method == Method::HEAD;
    let empty = body.is_empty() || head;
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

pub async fn direct(session: &mut Session, d: &DirectResponse) -> Result<()> {
    send(session, d.status.as_u16(), &d.headers, d.body.clone()).await
}

/// A short plain-text error page, e.g. `404 Not Found`.
pub async fn error(session: &mut Session, status: u16) -> Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = Bytes::from(format!("{status} {reason}\n"));
    let ct = (
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    send(session, status, &[ct], body).await
}
