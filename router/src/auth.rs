//! Who a connection is: user-name rules and the `open` / `jwt` authenticators.
//! Pure functions, no I/O once constructed.

use crate::config::{AuthMode, Config};
use ringrouter_proto::Status;

/// Why a login or a name was refused; goes back to the client as (status, reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    /// Status code for the client.
    pub status: Status,
    /// Human-readable reason.
    pub reason: String,
}

impl AuthError {
    fn new(status: Status, reason: impl Into<String>) -> Self {
        AuthError {
            status,
            reason: reason.into(),
        }
    }
}

/// Checks a user name: 1..=max bytes of UTF-8 without whitespace or control characters.
pub fn validate_user(name: &str, max_bytes: usize) -> Result<(), AuthError> {
    if name.is_empty() {
        return Err(AuthError::new(Status::BadRequest, "user name is empty"));
    }
    if name.len() > max_bytes {
        return Err(AuthError::new(
            Status::BadRequest,
            format!("user name is {} bytes, longer than {max_bytes}", name.len()),
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(AuthError::new(
            Status::BadRequest,
            "user name contains whitespace or control characters",
        ));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// Decides who a Login is.
#[allow(clippy::large_enum_variant)] // built once at start-up
pub enum Authenticator {
    /// Any valid user name.
    Open,
    /// A registered user; the password is checked against the store by the caller.
    Accounts,
    /// HS256 JWT, `sub` = user, `exp` required and checked.
    Jwt {
        /// The verification key.
        key: jsonwebtoken::DecodingKey,
        /// Algorithm and claim checks.
        validation: jsonwebtoken::Validation,
    },
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Open => f.write_str("Open"),
            Authenticator::Accounts => f.write_str("Accounts"),
            Authenticator::Jwt { .. } => f.write_str("Jwt"),
        }
    }
}

impl Authenticator {
    /// Builds the authenticator for `cfg`, reading the JWT secret file if needed.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        match cfg.auth {
            AuthMode::Open => Ok(Authenticator::Open),
            AuthMode::Accounts => Ok(Authenticator::Accounts),
            AuthMode::Jwt => {
                let path = cfg
                    .jwt_secret_file
                    .as_ref()
                    .ok_or("--auth jwt needs --jwt-secret-file")?;
                let raw = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let secret = trim_ascii(&raw);
                if secret.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(Self::jwt_from_secret(secret))
            }
        }
    }

    /// An HS256 authenticator with this secret.
    pub fn jwt_from_secret(secret: &[u8]) -> Self {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator::Jwt {
            key: jsonwebtoken::DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Authenticates a Login; returns the user name the session will carry.
    /// Under jwt the token's `sub` is the user; a `user` field that disagrees is refused.
    pub fn login(
        &self,
        user: &str,
        token: &str,
        max_user_bytes: usize,
    ) -> Result<String, AuthError> {
        let name = match self {
            Authenticator::Open | Authenticator::Accounts => user.to_owned(),
            Authenticator::Jwt { key, validation } => {
                if token.is_empty() {
                    return Err(AuthError::new(
                        Status::Unauthorized,
                        "a token is required (--auth jwt)",
                    ));
                }
                let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
                    AuthError::new(Status::Unauthorized, format!("invalid token: {e}"))
                })?;
                let sub = data.claims.sub;
                if !user.is_empty() && user != sub {
                    return Err(AuthError::new(
                        Status::Unauthorized,
                        "user does not match the token's subject",
                    ));
                }
                sub
            }
        };
        validate_user(&name, max_user_bytes)?;
        Ok(name)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &[u8], sub: &str, exp_offset: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            exp: i64,
        }
        encode(
            &Header::default(),
            &C {
                sub,
                exp: now + exp_offset,
            },
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn names() {
        assert!(validate_user("alice", 64).is_ok());
        assert!(validate_user("zoë", 64).is_ok());
        assert_eq!(
            validate_user("", 64).unwrap_err().status,
            Status::BadRequest
        );
        assert!(validate_user("a b", 64).is_err());
        assert!(validate_user("a\u{0}", 64).is_err());
        assert!(validate_user(&"x".repeat(65), 64).is_err());
    }

    #[test]
    fn jwt_good_bad_expired() {
        let a = Authenticator::jwt_from_secret(b"s3cret");
        assert_eq!(
            a.login("", &token(b"s3cret", "alice", 60), 64).unwrap(),
            "alice"
        );
        assert_eq!(
            a.login("alice", &token(b"s3cret", "alice", 60), 64)
                .unwrap(),
            "alice"
        );
        assert_eq!(
            a.login("bob", &token(b"s3cret", "alice", 60), 64)
                .unwrap_err()
                .status,
            Status::Unauthorized
        );
        assert_eq!(
            a.login("", &token(b"other", "alice", 60), 64)
                .unwrap_err()
                .status,
            Status::Unauthorized
        );
        assert_eq!(
            a.login("", &token(b"s3cret", "alice", -60), 64)
                .unwrap_err()
                .status,
            Status::Unauthorized
        );
        assert_eq!(
            a.login("alice", "", 64).unwrap_err().status,
            Status::Unauthorized
        );
        assert_eq!(
            a.login("", "garbage", 64).unwrap_err().status,
            Status::Unauthorized
        );
    }

    #[test]
    fn open_takes_any_valid_name() {
        let a = Authenticator::Open;
        assert_eq!(a.login("bob", "", 64).unwrap(), "bob");
        assert!(a.login("", "", 64).is_err());
    }
}
