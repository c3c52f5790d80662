//! Users and sessions: sign-up, the admin account, the JWT secret and used refresh tokens.

use redb::ReadableTable;

use super::{ChangeSet, CommandResult, WriteTables};
use crate::command::{CommandOutcome, NewUser, Rejection};
use crate::model::{Timestamp, User};
use crate::tables::META_JWT_SECRET;

/// Used refresh tokens forgotten per consume, once expired.
const REFRESH_PURGE_BATCH: usize = 64;

pub(super) fn create_user(
    t: &mut WriteTables<'_>,
    new: &NewUser,
    changes: &mut ChangeSet,
) -> CommandResult {
    let key = new.username.to_lowercase();
    if t.usernames.get(new.username.as_str())?.is_some()
        || t.username_keys.get(key.as_str())?.is_some()
    {
        return Err(Rejection::Duplicate {
            what: "user",
            field: "username",
        }
        .into());
    }
    let user = User {
        id: t.next_id("user")?,
        username: new.username.clone(),
        email: new.email.clone(),
        phone_number: new.phone_number.clone(),
        password_hash: new.password_hash.clone(),
        is_staff: new.is_staff,
        date_joined: new.date_joined,
    };
    t.put_user(&user)?;
    t.usernames.insert(user.username.as_str(), user.id)?;
    t.username_keys.insert(key.as_str(), user.id)?;
    changes.users.insert(user.id);
    Ok(CommandOutcome::User(user))
}

pub(super) fn ensure_admin(
    t: &mut WriteTables<'_>,
    username: &str,
    password_hash: &str,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    let existing = t.usernames.get(username)?.map(|v| v.value());
    match existing {
        Some(id) => {
            let Some(mut user) = t.user(id)? else {
                return Err(Rejection::NotFound.into());
            };
            // Someone may have signed up under the admin's name first: never hand them
            // staff rights (and their old tokens a staff session).
            if !user.is_staff {
                return Err(Rejection::WouldPromote.into());
            }
            if user.password_hash != password_hash {
                user.password_hash = password_hash.to_owned();
                t.put_user(&user)?;
                // Sessions begun with the old password end with it.
                t.credentials_changed.insert(id, at.div_euclid(1_000_000))?;
                changes.users.insert(id);
            }
            Ok(CommandOutcome::User(user))
        }
        None => create_user(
            t,
            &NewUser {
                username: username.to_owned(),
                email: String::new(),
                phone_number: String::new(),
                password_hash: password_hash.to_owned(),
                is_staff: true,
                date_joined: at,
            },
            changes,
        ),
    }
}

pub(super) fn init_jwt_secret(t: &mut WriteTables<'_>, secret: &[u8]) -> CommandResult {
    if let Some(existing) = t.meta.get(META_JWT_SECRET)? {
        return Ok(CommandOutcome::JwtSecret(existing.value().to_vec()));
    }
    t.meta.insert(META_JWT_SECRET, secret)?;
    Ok(CommandOutcome::JwtSecret(secret.to_vec()))
}

pub(super) fn consume_refresh_token(
    t: &mut WriteTables<'_>,
    jti: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> CommandResult {
    if t.used_refresh.get(jti)?.is_some() {
        return Err(Rejection::RefreshTokenUsed.into());
    }
    let expired: Vec<(i64, String)> = t
        .used_refresh_by_expiry
        .range::<(i64, &str)>(..(now, ""))?
        .take(REFRESH_PURGE_BATCH)
        .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
        .collect::<Result<_, _>>()?;
    for (expiry, old) in expired {
        t.used_refresh.remove(old.as_str())?;
        t.used_refresh_by_expiry.remove((expiry, old.as_str()))?;
    }
    t.used_refresh.insert(jti, expires_at)?;
    t.used_refresh_by_expiry.insert((expires_at, jti), ())?;
    Ok(CommandOutcome::Done)
}

/// The unix second from which refresh tokens of a user whose credentials changed at `at`
/// are accepted again: the second after the change, so a token issued earlier in the same
/// second is refused too (tokens carry whole seconds). Tokens issued after a change carry at
/// least this second (see the API's token issuing).
pub(super) fn sessions_valid_from(at: Timestamp) -> i64 {
    at.div_euclid(1_000_000) + 1
}

pub(super) fn change_password(
    t: &mut WriteTables<'_>,
    id: crate::model::Id,
    password_hash: &str,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(mut user) = t.user(id)? else {
        return Err(Rejection::NotFound.into());
    };
    user.password_hash = password_hash.to_owned();
    t.put_user(&user)?;
    let from = sessions_valid_from(at);
    let earlier = t.credentials_changed.get(id)?.map_or(from, |v| v.value());
    t.credentials_changed.insert(id, from.max(earlier))?;
    changes.users.insert(id);
    Ok(CommandOutcome::User(user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::*;
    use crate::command::Command;

    #[test]
    fn ensure_admin_creates_or_updates_staff_but_never_promotes() {
        let s = shop();
        let ensure = |username: &str, hash: &str, at: Timestamp| Command::EnsureAdmin {
            username: username.into(),
            password_hash: hash.into(),
            at,
        };
        // bob signed up as a shopper: his account is not made staff.
        let before = s.digest();
        assert_eq!(
            s.apply(ensure("bob", "new-hash", 7)),
            Err(Rejection::WouldPromote)
        );
        assert_eq!(s.digest(), before, "nothing changed");

        // carol is staff: her password is replaced and her earlier sessions end.
        let Ok(CommandOutcome::User(carol)) = s.apply(ensure("carol", "new-hash", 9_500_000))
        else {
            panic!("carol updated");
        };
        assert_eq!(carol.id, CAROL);
        assert_eq!(carol.password_hash, "new-hash");
        let reader = s.store.read().unwrap();
        assert_eq!(reader.credentials_changed_at(CAROL).unwrap(), Some(9));
        assert_eq!(reader.credentials_changed_at(BOB).unwrap(), None);
        drop(reader);
        // The same password again changes nothing.
        let unchanged = s.digest();
        assert!(s.apply(ensure("carol", "new-hash", 20_000_000)).is_ok());
        assert_eq!(s.digest(), unchanged);

        let Ok(CommandOutcome::User(root)) = s.apply(ensure("root", "h", 7)) else {
            panic!("root created");
        };
        assert_eq!((root.id, root.is_staff, root.date_joined), (4, true, 7));
        assert_eq!(
            s.apply(user("root", false)),
            Err(Rejection::Duplicate {
                what: "user",
                field: "username"
            })
        );
        let reader = s.store.read().unwrap();
        assert_eq!(reader.user_by_username("root").unwrap(), Some(root));
        assert_eq!(reader.user_by_username("Root").unwrap(), None);
    }

    #[test]
    fn a_password_change_replaces_the_hash_and_ends_earlier_sessions() {
        let s = shop();
        let change = |user, at| Command::ChangePassword {
            user,
            password_hash: "changed-hash".into(),
            at,
        };
        let before = s.digest();
        assert_eq!(s.apply(change(99, 5_000_000)), Err(Rejection::NotFound));
        assert_eq!(s.digest(), before, "nothing changed");

        let Ok(CommandOutcome::User(bob)) = s.apply(change(BOB, 9_500_000)) else {
            panic!("bob's password changed");
        };
        assert_eq!(bob.password_hash, "changed-hash");
        let reader = s.store.read().unwrap();
        assert_eq!(reader.user(BOB).unwrap(), Some(bob));
        // Tokens of second 9 (issued before or after the change within it) are refused.
        assert_eq!(reader.credentials_changed_at(BOB).unwrap(), Some(10));
        assert_eq!(reader.credentials_changed_at(CAROL).unwrap(), None);
        drop(reader);
        // An older timestamp never moves the line back.
        assert!(s.apply(change(BOB, 1_000_000)).is_ok());
        assert_eq!(
            s.store.read().unwrap().credentials_changed_at(BOB).unwrap(),
            Some(10)
        );
    }

    #[test]
    fn jwt_secret_keeps_the_first_proposal() {
        let s = TestStore::new();
        let init = |secret: &[u8]| Command::InitJwtSecret {
            secret: secret.to_vec(),
        };
        assert_eq!(
            s.apply_all(&[init(b"first"), init(b"second")]),
            [
                Ok(CommandOutcome::JwtSecret(b"first".to_vec())),
                Ok(CommandOutcome::JwtSecret(b"first".to_vec()))
            ]
        );
        assert_eq!(
            s.store.read().unwrap().jwt_secret().unwrap(),
            Some(b"first".to_vec())
        );
    }

    #[test]
    fn refresh_token_is_consumed_once() {
        let s = TestStore::new();
        let consume = |jti: &str, expires_at, now| Command::ConsumeRefreshToken {
            jti: jti.into(),
            expires_at,
            now,
        };
        assert_eq!(s.apply(consume("a", 100, 0)), Ok(CommandOutcome::Done));
        let after = s.digest();
        assert_eq!(
            s.apply(consume("a", 100, 0)),
            Err(Rejection::RefreshTokenUsed)
        );
        assert_eq!(
            s.apply(consume("a", 500, 50)),
            Err(Rejection::RefreshTokenUsed)
        );
        assert_eq!(s.digest(), after);
        assert!(s.store.read().unwrap().refresh_token_used("a").unwrap());
        assert!(!s.store.read().unwrap().refresh_token_used("b").unwrap());

        // Tokens that expired before `now` are forgotten, but not those expiring at `now`.
        assert!(s.apply(consume("b", 200, 0)).is_ok());
        assert!(s.apply(consume("c", 300, 200)).is_ok());
        let reader = s.store.read().unwrap();
        assert!(!reader.refresh_token_used("a").unwrap());
        assert!(reader.refresh_token_used("b").unwrap());
        assert!(reader.refresh_token_used("c").unwrap());
    }

    #[test]
    fn refresh_token_purge_is_bounded() {
        let s = TestStore::new();
        let total = REFRESH_PURGE_BATCH + 10;
        let commands: Vec<Command> = (0..total)
            .map(|i| Command::ConsumeRefreshToken {
                jti: format!("old-{i:03}"),
                expires_at: i as i64,
                now: 0,
            })
            .collect();
        assert!(s.apply_all(&commands).iter().all(Result::is_ok));
        assert!(
            s.apply(Command::ConsumeRefreshToken {
                jti: "new".into(),
                expires_at: 10_000,
                now: 1_000,
            })
            .is_ok()
        );
        let reader = s.store.read().unwrap();
        let remembered: Vec<bool> = (0..total)
            .map(|i| reader.refresh_token_used(&format!("old-{i:03}")).unwrap())
            .collect();
        // The earliest-expiring ones are forgotten first.
        assert!(remembered[..REFRESH_PURGE_BATCH].iter().all(|used| !used));
        assert!(remembered[REFRESH_PURGE_BATCH..].iter().all(|used| *used));
    }
}
