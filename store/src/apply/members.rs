//! Cluster members' addresses, kept in `META` under `member/<id>` so that every node (and
//! snapshots, and the digest) carries them.

use super::{CommandResult, WriteTables};
use crate::command::{CommandOutcome, MemberRecord, Rejection};
use crate::tables::{encode, member_key};

/// Longest address accepted in a member record.
const MAX_ADDRESS_LEN: usize = 256;

pub(super) fn record_member(t: &mut WriteTables<'_>, record: &MemberRecord) -> CommandResult {
    for (field, value) in [("api", &record.api), ("peer", &record.peer)] {
        if value.is_empty() || value.len() > MAX_ADDRESS_LEN {
            return Err(Rejection::Invalid {
                field,
                message: format!("an address of 1 to {MAX_ADDRESS_LEN} bytes"),
            }
            .into());
        }
    }
    t.meta
        .insert(member_key(record.id).as_str(), encode(record)?.as_slice())?;
    Ok(CommandOutcome::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::tests::TestStore;
    use crate::command::{Command, CommandOutcome, MemberRecord};

    fn record(id: u64, api: &str) -> MemberRecord {
        MemberRecord {
            id,
            api: api.into(),
            peer: format!("127.0.0.1:{}", 9000 + id),
            read_only: false,
        }
    }

    #[test]
    fn members_are_recorded_by_id_and_replaced() {
        let s = TestStore::new();
        let results = s.apply_all(&[
            Command::RecordMember(record(12, "127.0.0.1:8012")),
            Command::RecordMember(record(3, "127.0.0.1:8003")),
            Command::RecordMember(record(12, "127.0.0.1:8112")),
        ]);
        assert!(results.iter().all(|r| *r == Ok(CommandOutcome::Done)));
        let members = s.store.read().unwrap().members().unwrap();
        assert_eq!(
            members,
            [record(3, "127.0.0.1:8003"), record(12, "127.0.0.1:8112")]
        );
    }

    #[test]
    fn an_empty_address_is_refused_and_changes_nothing() {
        let s = TestStore::new();
        let before = s.digest();
        assert!(s.apply(Command::RecordMember(record(4, ""))).is_err());
        assert_eq!(s.digest(), before);
        assert!(s.store.read().unwrap().members().unwrap().is_empty());
    }
}
