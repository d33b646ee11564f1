//! Scrubs credential-shaped text out of what an upstream said, for the operator's
//! eyes (logs). Tenants never see an upstream's text at all (`UpstreamError`'s
//! `Display` is the hub's own words); this guards the operator's log, where an
//! upstream may echo the hub's key in part, upper-cased or base64-encoded.

use base64::Engine;

/// What replaces a redacted token.
const REDACTED: &str = "[redacted]";
/// Shortest run of a configured secret that counts as an echo of it: long enough
/// that ordinary words never match, short enough to catch a truncated echo
/// (`sk-proj-abc…`).
const SECRET_PIECE_MIN_CHARS: usize = 8;
/// A token at least this long mixing letters and digits is treated as a
/// credential (API keys, session tokens, base64 blobs), whoever it belongs to.
const OPAQUE_TOKEN_MIN_CHARS: usize = 20;
/// Longest error code passed on (codes are short identifiers).
const ERROR_CODE_MAX_CHARS: usize = 64;

/// `text` with every credential-shaped token replaced: any piece of a configured
/// secret (any case, or base64-encoded), `sk-…`-style keys, AWS access key ids,
/// the token after `Bearer`, and long opaque tokens.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let pieces = secret_pieces(secrets);
    let mut out = String::with_capacity(text.len());
    let mut after_bearer = false;
    let mut rest = text;
    while let Some(start) = rest.find(is_token_char) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail.find(|c| !is_token_char(c)).unwrap_or(tail.len());
        let token = &tail[..end];
        if after_bearer || is_credential(token, &pieces) {
            out.push_str(REDACTED);
        } else {
            out.push_str(token);
        }
        after_bearer = token.eq_ignore_ascii_case("bearer");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// An upstream's error code, from its error JSON (OpenAI `error.code` or
/// `error.type`, Anthropic `error.type`, Gemini `error.status`, Bedrock
/// `__type`): a short identifier, never free text.
pub(crate) fn error_code(body: &serde_json::Value) -> Option<String> {
    [
        "/error/code",
        "/error/type",
        "/error/status",
        "/__type",
        "/code",
        "/type",
    ]
    .iter()
    .filter_map(|p| body.pointer(p).and_then(serde_json::Value::as_str))
    .find(|code| !code.is_empty())
    .map(|code| {
        // Bedrock's `__type` may carry a namespace: `…#ValidationException`.
        let code = code.rsplit('#').next().unwrap_or(code);
        code.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(ERROR_CODE_MAX_CHARS)
            .collect::<String>()
    })
    .filter(|code| !code.is_empty() && redact(code, &[]) == *code)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=' | '.' | '~')
}

/// Every lower-cased run of `SECRET_PIECE_MIN_CHARS` characters of each secret.
fn secret_pieces(secrets: &[&str]) -> Vec<String> {
    let mut pieces = Vec::new();
    for secret in secrets {
        let chars: Vec<char> = secret.to_lowercase().chars().collect();
        for window in chars.windows(SECRET_PIECE_MIN_CHARS) {
            pieces.push(window.iter().collect());
        }
    }
    pieces
}

fn is_credential(token: &str, pieces: &[String]) -> bool {
    let lower = token.to_lowercase();
    if pieces.iter().any(|p| lower.contains(p.as_str())) {
        return true;
    }
    if let Some(decoded) = base64_text(token) {
        let decoded = decoded.to_lowercase();
        if pieces.iter().any(|p| decoded.contains(p.as_str())) {
            return true;
        }
    }
    looks_like_a_key(token)
}

/// `sk-…`/`sk_…` keys, AWS access key ids, and long tokens mixing letters and
/// digits (API keys, JWTs, base64).
fn looks_like_a_key(token: &str) -> bool {
    let lower = token.to_ascii_lowercase();
    let prefixed = ["sk-", "sk_", "aih_", "aho_", "akia", "asia", "aiza"]
        .iter()
        .any(|p| lower.starts_with(p) && token.len() >= p.len() + 8);
    let opaque = token.len() >= OPAQUE_TOKEN_MIN_CHARS
        && token.chars().any(|c| c.is_ascii_digit())
        && token.chars().any(|c| c.is_ascii_alphabetic());
    prefixed || opaque
}

/// The text a token base64-decodes to (standard or URL-safe, padded or not).
fn base64_text(token: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if token.len() < SECRET_PIECE_MIN_CHARS {
        return None;
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(token).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const KEY: &str = "sk-hub-3f9a8b7c6d5e4f3a2b1c";

    #[test]
    fn every_form_of_an_echoed_key_is_redacted() {
        let encoded = STANDARD.encode(KEY);
        let text = format!(
            "Incorrect API key provided: {}…. Key {} is invalid (b64 {encoded}); Authorization: Bearer abc",
            &KEY[..12],
            KEY.to_uppercase()
        );
        let clean = redact(&text, &[KEY]);
        for leaked in [&KEY[..12], &KEY.to_uppercase(), &encoded, "abc"] {
            assert!(!clean.contains(leaked), "{leaked} in {clean}");
        }
        assert!(
            clean.starts_with("Incorrect API key provided: [redacted]"),
            "{clean}"
        );
    }

    #[test]
    fn credential_shaped_tokens_are_redacted_whoever_they_belong_to() {
        let clean = redact(
            "keys sk-other-1234567890 AKIAIOSFODNN7EXAMPLE and eyJhbGciOiJIUzI1NiJ9x1 here",
            &[],
        );
        assert_eq!(clean, "keys [redacted] [redacted] and [redacted] here");
        assert_eq!(
            redact("The model is overloaded, try again.", &[KEY]),
            "The model is overloaded, try again."
        );
    }

    #[test]
    fn an_error_code_is_a_short_identifier() {
        let code = |v: serde_json::Value| error_code(&v);
        assert_eq!(
            code(
                serde_json::json!({"error": {"message": "x", "type": "invalid_request_error", "code": null}})
            ),
            Some("invalid_request_error".into())
        );
        assert_eq!(
            code(serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}})),
            Some("INVALID_ARGUMENT".into())
        );
        assert_eq!(
            code(serde_json::json!({"__type": "com.amazon#ValidationException"})),
            Some("ValidationException".into())
        );
        assert_eq!(code(serde_json::json!({"error": {"code": KEY}})), None);
        assert_eq!(code(serde_json::json!("nothing")), None);
    }
}
