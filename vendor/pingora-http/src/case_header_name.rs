// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The header name and the case to write it in. (gatehouse patch: a [HeaderName] is not
    /// spelled out and parsed back.)
    fn into_names(
        self,
    ) -> std::result::Result<(HeaderName, CaseHeaderName), header::InvalidHeaderName>
    where
        Self: Sized,
    {
        let case = self.into_case_header_name();
        Ok((HeaderName::from_bytes(case.as_slice())?, case))
    }

    /// The header name, and the case to write it in if that is not its usual spelling
    /// ([titled_header_name_str], else the name as parsed). (gatehouse patch: the case map
    /// keeps only such names.)
    #[allow(clippy::type_complexity)]
    fn into_sparse_names(
        self,
    ) -> std::result::Result<(HeaderName, Option<CaseHeaderName>), header::InvalidHeaderName>
    where
        Self: Sized,
    {
        let (name, case) = self.into_names()?;
        let usual = titled_header_name_str(&name).unwrap_or(name.as_str());
        let own = (case.as_slice() != usual.as_bytes()).then_some(case);
        Ok((name, own))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_names(
        self,
    ) -> std::result::Result<(HeaderName, CaseHeaderName), header::InvalidHeaderName> {
        let case = CaseHeaderName(titled_header_name(&self));
        Ok((self, case))
    }

    fn into_sparse_names(
        self,
    ) -> std::result::Result<(HeaderName, Option<CaseHeaderName>), header::InvalidHeaderName> {
        Ok((self, None))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_names(
        self,
    ) -> std::result::Result<(HeaderName, CaseHeaderName), header::InvalidHeaderName> {
        Ok((self.clone(), CaseHeaderName(titled_header_name(self))))
    }

    fn into_sparse_names(
        self,
    ) -> std::result::Result<(HeaderName, Option<CaseHeaderName>), header::InvalidHeaderName> {
        Ok((self.clone(), None))
    }
}

/// A parsed name and the case to write it in (gatehouse patch: neither is allocated nor parsed
/// when both are static). A spelling that is not the name's is ignored.
impl IntoCaseHeaderName for (&HeaderName, &'static str) {
    fn into_case_header_name(self) -> CaseHeaderName {
        if self.1.eq_ignore_ascii_case(self.0.as_str()) {
            CaseHeaderName(Bytes::from_static(self.1.as_bytes()))
        } else {
            self.0.into_case_header_name()
        }
    }

    fn into_names(
        self,
    ) -> std::result::Result<(HeaderName, CaseHeaderName), header::InvalidHeaderName> {
        Ok((self.0.clone(), self.into_case_header_name()))
    }

    fn into_sparse_names(
        self,
    ) -> std::result::Result<(HeaderName, Option<CaseHeaderName>), header::InvalidHeaderName> {
        let (name, spelling) = self;
        let usual = titled_header_name_str(name).unwrap_or(name.as_str());
        let own = (spelling != usual && spelling.eq_ignore_ascii_case(usual))
            .then(|| CaseHeaderName(Bytes::from_static(spelling.as_bytes())));
        Ok((name.clone(), own))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

pub(crate) fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

/// The usual spelling of a well-known header name. (gatehouse patch: every name `http` knows,
/// and the common non-standard ones a proxy adds; the case map holds only names spelled
/// otherwise, so the longer this list, the emptier that map.)
pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT => "Accept",
        header::ACCEPT_CHARSET => "Accept-Charset",
        header::ACCEPT_ENCODING => "Accept-Encoding",
        header::ACCEPT_LANGUAGE => "Accept-Language",
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS => "Access-Control-Allow-Credentials",
        header::ACCESS_CONTROL_ALLOW_HEADERS => "Access-Control-Allow-Headers",
        header::ACCESS_CONTROL_ALLOW_METHODS => "Access-Control-Allow-Methods",
        header::ACCESS_CONTROL_ALLOW_ORIGIN => "Access-Control-Allow-Origin",
        header::ACCESS_CONTROL_EXPOSE_HEADERS => "Access-Control-Expose-Headers",
        header::ACCESS_CONTROL_MAX_AGE => "Access-Control-Max-Age",
        header::ACCESS_CONTROL_REQUEST_HEADERS => "Access-Control-Request-Headers",
        header::ACCESS_CONTROL_REQUEST_METHOD => "Access-Control-Request-Method",
        header::AGE => "Age",
        header::ALLOW => "Allow",
        header::ALT_SVC => "Alt-Svc",
        header::AUTHORIZATION => "Authorization",
        header::CACHE_CONTROL => "Cache-Control",
        header::CACHE_STATUS => "Cache-Status",
        header::CDN_CACHE_CONTROL => "CDN-Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_DISPOSITION => "Content-Disposition",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LANGUAGE => "Content-Language",
        header::CONTENT_LENGTH => "Content-Length",
        header::CONTENT_LOCATION => "Content-Location",
        header::CONTENT_RANGE => "Content-Range",
        header::CONTENT_SECURITY_POLICY => "Content-Security-Policy",
        header::CONTENT_SECURITY_POLICY_REPORT_ONLY => "Content-Security-Policy-Report-Only",
        header::CONTENT_TYPE => "Content-Type",
        header::COOKIE => "Cookie",
        header::DNT => "DNT",
        header::DATE => "Date",
        header::ETAG => "ETag",
        header::EXPECT => "Expect",
        header::EXPIRES => "Expires",
        header::FORWARDED => "Forwarded",
        header::FROM => "From",
        header::HOST => "Host",
        header::IF_MATCH => "If-Match",
        header::IF_MODIFIED_SINCE => "If-Modified-Since",
        header::IF_NONE_MATCH => "If-None-Match",
        header::IF_RANGE => "If-Range",
        header::IF_UNMODIFIED_SINCE => "If-Unmodified-Since",
        header::LAST_MODIFIED => "Last-Modified",
        header::LINK => "Link",
        header::LOCATION => "Location",
        header::MAX_FORWARDS => "Max-Forwards",
        header::ORIGIN => "Origin",
        header::PRAGMA => "Pragma",
        header::PROXY_AUTHENTICATE => "Proxy-Authenticate",
        header::PROXY_AUTHORIZATION => "Proxy-Authorization",
        header::PUBLIC_KEY_PINS => "Public-Key-Pins",
        header::PUBLIC_KEY_PINS_REPORT_ONLY => "Public-Key-Pins-Report-Only",
        header::RANGE => "Range",
        header::REFERER => "Referer",
        header::REFERRER_POLICY => "Referrer-Policy",
        header::REFRESH => "Refresh",
        header::RETRY_AFTER => "Retry-After",
        header::SEC_WEBSOCKET_ACCEPT => "Sec-WebSocket-Accept",
        header::SEC_WEBSOCKET_EXTENSIONS => "Sec-WebSocket-Extensions",
        header::SEC_WEBSOCKET_KEY => "Sec-WebSocket-Key",
        header::SEC_WEBSOCKET_PROTOCOL => "Sec-WebSocket-Protocol",
        header::SEC_WEBSOCKET_VERSION => "Sec-WebSocket-Version",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        header::STRICT_TRANSPORT_SECURITY => "Strict-Transport-Security",
        header::TE => "TE",
        header::TRAILER => "Trailer",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::USER_AGENT => "User-Agent",
        header::UPGRADE => "Upgrade",
        header::UPGRADE_INSECURE_REQUESTS => "Upgrade-Insecure-Requests",
        header::VARY => "Vary",
        header::VIA => "Via",
        header::WARNING => "Warning",
        header::WWW_AUTHENTICATE => "WWW-Authenticate",
        header::X_CONTENT_TYPE_OPTIONS => "X-Content-Type-Options",
        header::X_DNS_PREFETCH_CONTROL => "X-DNS-Prefetch-Control",
        header::X_FRAME_OPTIONS => "X-Frame-Options",
        header::X_XSS_PROTECTION => "X-XSS-Protection",
        _ => match header_name.as_str() {
            "x-forwarded-for" => "X-Forwarded-For",
            "x-forwarded-proto" => "X-Forwarded-Proto",
            "x-forwarded-host" => "X-Forwarded-Host",
            "x-forwarded-port" => "X-Forwarded-Port",
            "x-real-ip" => "X-Real-IP",
            "x-request-id" => "X-Request-Id",
            "keep-alive" => "Keep-Alive",
            "proxy-connection" => "Proxy-Connection",
            "x-powered-by" => "X-Powered-By",
            "x-requested-with" => "X-Requested-With",
            "ratelimit-limit" => "RateLimit-Limit",
            "ratelimit-remaining" => "RateLimit-Remaining",
            "ratelimit-reset" => "RateLimit-Reset",
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }
}
