//! Exit codes, from sysexits(3), so that scripts can tell a bad config from an unreachable
//! relay; and which a client error gets.

use sat_client::ClientError;
use sat_proto::stream::RejectCode;

pub const EXIT_USAGE: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_SOFTWARE: u8 = 70;
/// An access or admin token was refused.
pub const EXIT_NOPERM: u8 = 77;
pub const EXIT_FAILURE: u8 = 1;

/// The exit code for a client error: the user's setup, a refused token, or no relay.
pub fn client_exit(e: &ClientError) -> u8 {
    match e {
        // The user's setup: no retry mends it.
        ClientError::RelayAddr(_)
        | ClientError::NoSystemRoots { .. }
        | ClientError::Untrusted { .. }
        | ClientError::Transport(_) => EXIT_USAGE,
        ClientError::Refused {
            code: RejectCode::Unauthorized,
            ..
        } => EXIT_NOPERM,
        ClientError::Refused { .. }
        | ClientError::Unreachable { .. }
        | ClientError::Resolve { .. } => EXIT_UNAVAILABLE,
        _ => EXIT_FAILURE,
    }
}
