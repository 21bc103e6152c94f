//! HMAC-SHA256 challenge–response (PROTOCOL.md §3.2).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use urbd_protocol::{AuthChallenge, AuthResponse, Name, AUTH_CHALLENGE_LEN_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// A fresh challenge from the operating system's CSPRNG.
pub(crate) fn new_challenge() -> Result<AuthChallenge, getrandom::Error> {
    let mut bytes = [0u8; AUTH_CHALLENGE_LEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(AuthChallenge(bytes))
}

fn mac(secret: &[u8], challenge: &AuthChallenge, responder: &Name) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(&challenge.hmac_message(responder));
    mac
}

/// Our answer to the peer's `challenge`: HMAC(secret, challenge ‖ our node name).
pub(crate) fn respond(secret: &[u8], challenge: &AuthChallenge, responder: &Name) -> AuthResponse {
    AuthResponse(
        mac(secret, challenge, responder)
            .finalize()
            .into_bytes()
            .into(),
    )
}

/// Checks the peer's answer to our `challenge` in constant time.
pub(crate) fn verify(
    secret: &[u8],
    challenge: &AuthChallenge,
    responder: &Name,
    response: &AuthResponse,
) -> bool {
    mac(secret, challenge, responder)
        .verify_slice(&response.0)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // PROTOCOL.md §3.2: the response binds secret, challenge and responder name.
    #[test]
    fn respond_and_verify() {
        let c = new_challenge().unwrap();
        assert_ne!(c, new_challenge().unwrap(), "fresh challenges differ");
        let beta = Name::new("beta").unwrap();
        let alpha = Name::new("alpha").unwrap();
        let r = respond(b"s3cret", &c, &beta);
        assert!(verify(b"s3cret", &c, &beta, &r));
        assert!(!verify(b"other", &c, &beta, &r), "wrong secret");
        assert!(!verify(b"s3cret", &c, &alpha, &r), "wrong responder name");
        let other = new_challenge().unwrap();
        assert!(!verify(b"s3cret", &other, &beta, &r), "wrong challenge");
    }
}
