//! Authentication message shapes (PROTOCOL.md §3.2, §4.3–4.5). The HMAC itself is computed in
//! the daemon (hmac + sha2 crates); this module only fixes the bytes both sides feed to it.

use crate::wire_enum::wire_enum;
use crate::Name;

/// Length of a challenge.
pub const AUTH_CHALLENGE_LEN_BYTES: usize = 64;
/// Length of a response: one HMAC-SHA256.
pub const AUTH_RESPONSE_LEN_BYTES: usize = 32;

/// 64 random bytes the receiver must answer with an HMAC (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthChallenge(pub [u8; AUTH_CHALLENGE_LEN_BYTES]);

impl AuthChallenge {
    /// The reflection rule (§3.2): a peer's challenge equal to our own is refused.
    pub fn is_reflection_of(&self, ours: &AuthChallenge) -> bool {
        self.0 == ours.0
    }

    /// The message to authenticate when answering this challenge (§3.2):
    /// `challenge (64 bytes) || responder's node name (its Hello bytes, without length)`.
    /// Binding the responder's name means an answer cannot be replayed on behalf of the other
    /// side, even across connections.
    pub fn hmac_message(&self, responder_node: &Name) -> Vec<u8> {
        let mut message =
            Vec::with_capacity(AUTH_CHALLENGE_LEN_BYTES + responder_node.as_str().len());
        message.extend_from_slice(&self.0);
        message.extend_from_slice(responder_node.as_str().as_bytes());
        message
    }
}

/// HMAC-SHA256(shared secret, [`AuthChallenge::hmac_message`]) (§4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthResponse(pub [u8; AUTH_RESPONSE_LEN_BYTES]);

wire_enum! {
    /// Verdict on the peer's response (§4.5). Zero is "denied" so that a zeroed buffer never
    /// reads as success.
    pub enum AuthResult: u8, kind = "auth result" {
        Denied = 0 => "denied",
        Accepted = 1 => "accepted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PROTOCOL.md §3.2: the HMAC input and the reflection rule.
    #[test]
    fn hmac_message_and_reflection() {
        let ours = AuthChallenge([7; 64]);
        let theirs = AuthChallenge([9; 64]);
        assert!(ours.is_reflection_of(&AuthChallenge([7; 64])));
        assert!(!theirs.is_reflection_of(&ours));
        let node = Name::new("beta").unwrap();
        let message = theirs.hmac_message(&node);
        assert_eq!(message.len(), 68);
        assert_eq!(&message[..64], &[9; 64]);
        assert_eq!(&message[64..], b"beta");
    }
}
