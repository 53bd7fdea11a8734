//! The one place that writes responses gatehouse makes itself: direct responses, redirects
//! and errors. Every one carries the request id and the route's response header edits.

use super::Ctx;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method};
use pingora::prelude::*;
use pingora::proxy::Session;

/// Write a complete response. The body is left out for HEAD requests; Content-Length is
/// always the body's length.
pub async fn send(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 3))?;
    for (name, value) in headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    prepare(session, &mut resp, ctx);
    let head = session.req_header().method == Method::HEAD;
    let empty = body.is_empty() || head;
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// What every response to the client gets: the request id and the route's response edits.
/// While the process drains (shutdown or upgrade), the response also closes the connection,
/// so that the client's next request opens a new one to whichever process still accepts.
pub fn prepare(session: &mut Session, resp: &mut ResponseHeader, ctx: &Ctx) {
    if session.is_process_shutting_down() || super::drain::draining() {
        session.set_keepalive(None);
    }
    decorate(resp, ctx);
}

fn decorate(resp: &mut ResponseHeader, ctx: &Ctx) {
    let edits = ctx.route().map(|r| &r.policy.response_headers);
    resp.reserve_headers(1 + edits.map_or(0, |e| e.additions()));
    if !ctx.request_id.is_empty() {
        let name = (&super::X_REQUEST_ID, "X-Request-Id");
        let _ = resp.insert_header(name, ctx.request_id.clone());
    }
    if let Some(edits) = edits {
        edits.apply(resp);
    }
}

fn text_plain() -> (HeaderName, HeaderValue) {
    (
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    )
}

/// A short plain-text error page, e.g. `404 Not Found`, with extra headers.
pub async fn error_with(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    mut headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = Bytes::from(format!("{status} {reason}\n"));
    headers.push(text_plain());
    send(session, ctx, status, &headers, body).await
}

pub async fn error(session: &mut Session, ctx: &Ctx, status: u16) -> Result<()> {
    error_with(session, ctx, status, Vec::new()).await
}

/// A redirect with a Location and a one-line body.
pub async fn redirect(session: &mut Session, ctx: &Ctx, code: u16, location: String) -> Result<()> {
    let body = Bytes::from(format!("Redirecting to {location}\n"));
    let loc = HeaderValue::try_from(location).map_err(|_| {
        Error::explain(
            ErrorType::InternalError,
            "redirect location is not a valid header",
        )
    })?;
    let headers = [(header::LOCATION, loc), text_plain()];
    send(session, ctx, code, &headers, body).await
}
