//! User management by staff: making a user staff or not, deactivating and reactivating.
//! Only staff may, and never on their own account (a shop cannot lock out its last admin
//! by a slip). Either change ends the user's sessions: refresh tokens issued before it are
//! refused (`credentials_changed`).

use redb::ReadableTable;

use super::{ChangeSet, CommandResult, NotApplied, WriteTables};
use crate::command::{CommandOutcome, Rejection};
use crate::model::{Id, Timestamp, User};

/// The user `id` that staff member `actor` may manage.
fn managed_user(
    t: &WriteTables<'_>,
    actor: Id,
    id: Id,
    field: &'static str,
) -> Result<User, NotApplied> {
    if !t.user(actor)?.is_some_and(|u| u.is_staff) {
        return Err(Rejection::Forbidden.into());
    }
    let Some(user) = t.user(id)? else {
        return Err(Rejection::NotFound.into());
    };
    if actor == id {
        return Err(Rejection::Invalid {
            field,
            message: "You cannot change this on your own account.".into(),
        }
        .into());
    }
    Ok(user)
}

pub(super) fn set_user_staff(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    is_staff: bool,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    let mut user = managed_user(t, actor, id, "is_staff")?;
    if user.is_staff != is_staff {
        user.is_staff = is_staff;
        t.put_user(&user)?;
        t.credentials_changed.insert(id, at.div_euclid(1_000_000))?;
        changes.users.insert(id);
    }
    Ok(CommandOutcome::User(user))
}

pub(super) fn set_user_active(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    active: bool,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    let user = managed_user(t, actor, id, "is_active")?;
    let was_active = t.deactivated_users.get(id)?.is_none();
    if was_active != active {
        if active {
            t.deactivated_users.remove(id)?;
        } else {
            t.deactivated_users.insert(id, at)?;
            t.credentials_changed.insert(id, at.div_euclid(1_000_000))?;
        }
        changes.users.insert(id);
    }
    Ok(CommandOutcome::User(user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::*;
    use crate::command::Command;

    fn staff(actor: Id, id: Id, is_staff: bool) -> Command {
        Command::SetUserStaff {
            actor,
            id,
            is_staff,
            at: 5_000_000,
        }
    }

    fn active(actor: Id, id: Id, active: bool) -> Command {
        Command::SetUserActive {
            actor,
            id,
            active,
            at: 7_000_000,
        }
    }

    #[test]
    fn staff_make_others_staff_and_deactivate_them_but_not_themselves() {
        let s = shop();
        let before = s.digest();
        assert_eq!(s.apply(staff(ALICE, BOB, true)), Err(Rejection::Forbidden));
        assert_eq!(
            s.apply(active(ALICE, BOB, false)),
            Err(Rejection::Forbidden)
        );
        assert_invalid(s.apply(staff(CAROL, CAROL, false)), "is_staff");
        assert_invalid(s.apply(active(CAROL, CAROL, false)), "is_active");
        assert_eq!(s.apply(active(CAROL, 99, false)), Err(Rejection::NotFound));
        assert_eq!(s.digest(), before, "refusals write nothing");

        assert!(matches!(
            s.apply(staff(CAROL, ALICE, true)),
            Ok(CommandOutcome::User(ref u)) if u.is_staff
        ));
        let reader = s.store.read().unwrap();
        assert!(reader.user(ALICE).unwrap().unwrap().is_staff);
        assert_eq!(reader.credentials_changed_at(ALICE).unwrap(), Some(5));
        assert!(reader.user_is_active(BOB).unwrap());
        drop(reader);

        s.apply(active(ALICE, BOB, false)).unwrap();
        let reader = s.store.read().unwrap();
        assert!(!reader.user_is_active(BOB).unwrap());
        assert_eq!(reader.credentials_changed_at(BOB).unwrap(), Some(7));
        drop(reader);
        s.apply(active(CAROL, BOB, true)).unwrap();
        assert!(s.store.read().unwrap().user_is_active(BOB).unwrap());
    }
}
