//! Bearer tokens between vflow's parts: the engine and a function runtime (one token
//! per workflow, from a Secret the operator makes), MinIO and the run webhook.

/// Where a function runtime reads its workflow's token (a mounted Secret's key).
pub const INVOKE_TOKEN_FILE: &str = "/var/run/secrets/vflow/invoke/token";
/// The key of the token in the workflow's token Secret.
pub const INVOKE_TOKEN_KEY: &str = "token";

/// The Secret holding workflow `workflow`'s invocation token.
pub fn invoke_token_secret(workflow: &str) -> String {
    format!("{workflow}-vflow-invoke")
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    header.trim().strip_prefix("Bearer ").map(str::trim)
}

/// Equal, in a time that depends on the lengths only: a caller cannot learn a token
/// byte by byte from how fast a wrong one is refused.
pub fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    if given.len() != secret.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(secret)
        .fold(0u8, |acc, (a, b)| acc | std::hint::black_box(a ^ b));
    diff == 0
}

/// Whether `header` (an Authorization value, if any) carries `token`.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(bearer)
        .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_authorized() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(authorized(Some("  Bearer s3cret \n"), "s3cret"));
        for bad in [
            None,
            Some(""),
            Some("s3cret"),
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
        ] {
            assert!(!authorized(bad, "s3cret"), "{bad:?}");
        }
    }
}
