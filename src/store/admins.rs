//! Admin users, their sessions and the audit log of admin actions.
//!
//! Trees:
//! - `admin_users`: username → [`AdminUserRec`] (an argon2id hash, never the password);
//! - `admin_sessions`: SHA-256 of the session id → [`SessionRec`] (the id itself lives only in
//!   the browser's cookie; the CSRF token only as its hash);
//! - `audit`: time (u64 BE ms) ‖ uuid → [`AuditRec`], so a scan from the newest end pages
//!   back in time.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode, encode, Record};
use super::writer::Table;
use super::{Store, StoreError};

/// What an admin user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only: every state-changing call is refused.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// An admin user. Key: username.
#[derive(Clone, Serialize, Deserialize)]
pub struct AdminUserRec {
    pub username: String,
    pub role: Role,
    /// argon2id in PHC string form (parameters and salt included).
    pub password_hash: String,
    pub created_at: i64,
    pub password_changed_at: i64,
    pub last_login_at: Option<i64>,
}

impl std::fmt::Debug for AdminUserRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUserRec")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Record for AdminUserRec {}

/// A signed-in browser. Key: SHA-256 of the session id.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionRec {
    pub username: String,
    pub role: Role,
    /// SHA-256 of the CSRF token handed to the browser at login.
    pub csrf_hash: [u8; 32],
    pub created_at: i64,
    /// When the session was last used (kept to the minute).
    pub last_seen: i64,
    /// The absolute end, whatever the activity.
    pub expires_at: i64,
    pub source: Option<String>,
}

impl std::fmt::Debug for SessionRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRec")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Record for SessionRec {}

/// One admin action. Key: time ‖ id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRec {
    pub id: Uuid,
    pub at: i64,
    /// `token` (the admin token) or `user:NAME`; `anonymous` for failed logins.
    pub actor: String,
    /// Method and route, e.g. `POST /admin/api/partners`.
    pub action: String,
    /// What it was about: the path's own ids, or the username of a login.
    pub target: String,
    pub source: Option<String>,
    /// The answer's HTTP status.
    pub status: u16,
}

impl Record for AuditRec {}

/// The longest audit field kept, in characters.
const AUDIT_TEXT: usize = 300;

fn audit_key(at: i64, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&(at.max(0) as u64).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// Filters of an audit listing.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub actor: Option<String>,
    /// A prefix of the action, e.g. `POST` or `DELETE /admin/api/partners`.
    pub action: Option<String>,
    pub since: Option<i64>,
    /// Entries strictly older than this key (the cursor of the previous page).
    pub before: Option<(i64, Uuid)>,
    pub limit: usize,
}

impl Store {
    /// A user, if there is one by that name.
    pub fn admin_user(&self, username: &str) -> Result<Option<AdminUserRec>, StoreError> {
        self.t
            .admin_users
            .get(username.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Every user, by name.
    pub fn admin_users(&self) -> Result<Vec<AdminUserRec>, StoreError> {
        self.t
            .admin_users
            .iter()
            .values()
            .map(|v| v.map_err(StoreError::from).and_then(|v| decode(&v)))
            .collect()
    }

    /// Stores a new user; false if the name is taken.
    pub async fn create_admin_user(&self, user: AdminUserRec) -> Result<bool, StoreError> {
        let value = encode(&user)?;
        let key = user.username.into_bytes();
        self.writer
            .write_waiting(move |t| {
                if t.get(Table::AdminUsers, &key)?.is_some() {
                    return Ok(false);
                }
                t.insert(Table::AdminUsers, key, value)?;
                Ok(true)
            })
            .await
    }

    /// Replaces a user's record (password change, last login); false if it is gone.
    pub async fn put_admin_user(&self, user: AdminUserRec) -> Result<bool, StoreError> {
        let value = encode(&user)?;
        let key = user.username.into_bytes();
        self.writer
            .write_waiting(move |t| {
                if t.get(Table::AdminUsers, &key)?.is_none() {
                    return Ok(false);
                }
                t.insert(Table::AdminUsers, key, value)?;
                Ok(true)
            })
            .await
    }

    /// Deletes a user and ends every session of theirs; false if there was none.
    pub async fn delete_admin_user(&self, username: &str) -> Result<bool, StoreError> {
        let sessions = self.session_keys_of(username)?;
        let key = username.as_bytes().to_vec();
        self.writer
            .write_waiting(move |t| {
                if t.get(Table::AdminUsers, &key)?.is_none() {
                    return Ok(false);
                }
                t.remove(Table::AdminUsers, key)?;
                for s in sessions {
                    t.remove(Table::AdminSessions, s)?;
                }
                Ok(true)
            })
            .await
    }

    /// The session keys of one user (a scan: sessions are few).
    pub fn session_keys_of(&self, username: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for item in self.t.admin_sessions.iter() {
            let (k, v) = item?;
            if decode::<SessionRec>(&v).is_ok_and(|s| s.username == username) {
                keys.push(k.to_vec());
            }
        }
        Ok(keys)
    }

    /// A session by the hash of its id.
    pub fn session(&self, id_hash: &[u8; 32]) -> Result<Option<SessionRec>, StoreError> {
        self.t
            .admin_sessions
            .get(id_hash)?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Stores a session (new, or with a later `last_seen`).
    pub async fn put_session(&self, id_hash: [u8; 32], s: SessionRec) -> Result<(), StoreError> {
        let value = encode(&s)?;
        self.writer
            .write_waiting(move |t| t.insert(Table::AdminSessions, id_hash, value))
            .await
    }

    /// Ends a session.
    pub async fn delete_session(&self, id_hash: [u8; 32]) -> Result<(), StoreError> {
        self.writer
            .write_waiting(move |t| t.remove(Table::AdminSessions, id_hash))
            .await
    }

    /// Removes sessions past their end; returns how many.
    pub async fn prune_sessions(&self, now: i64, idle_ms: i64) -> Result<usize, StoreError> {
        let mut dead = Vec::new();
        // Bounded: a backlog beyond this goes in the next pass.
        for item in self.t.admin_sessions.iter().take(10_000) {
            let (k, v) = item?;
            let over = decode::<SessionRec>(&v)
                .map(|s| s.expires_at <= now || s.last_seen + idle_ms <= now)
                .unwrap_or(true);
            if over {
                dead.push(k.to_vec());
            }
        }
        let n = dead.len();
        if n > 0 {
            self.writer
                .write_waiting(move |t| {
                    for k in dead {
                        t.remove(Table::AdminSessions, k)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(n)
    }

    /// Records an admin action, durably.
    pub async fn audit(&self, mut rec: AuditRec) -> Result<(), StoreError> {
        let clip = |s: &mut String| {
            if s.chars().count() > AUDIT_TEXT {
                *s = s.chars().take(AUDIT_TEXT).collect();
            }
        };
        clip(&mut rec.actor);
        clip(&mut rec.action);
        clip(&mut rec.target);
        let key = audit_key(rec.at, rec.id);
        let value = encode(&rec)?;
        self.writer
            .write_waiting(move |t| t.insert(Table::Audit, key, value))
            .await
    }

    /// Audit entries, newest first, matching `q`; at most `q.limit`.
    pub fn audit_entries(&self, q: &AuditQuery) -> Result<Vec<AuditRec>, StoreError> {
        let end = match q.before {
            Some((at, id)) => audit_key(at, id),
            None => vec![0xFF; 25],
        };
        let start = audit_key(q.since.unwrap_or(0), Uuid::nil());
        let mut out = Vec::new();
        for item in self.t.audit.range(start..end).rev() {
            let (_, v) = item?;
            let rec: AuditRec = decode(&v)?;
            if q.actor.as_deref().is_some_and(|a| a != rec.actor) {
                continue;
            }
            if q.action
                .as_deref()
                .is_some_and(|a| !rec.action.starts_with(a))
            {
                continue;
            }
            out.push(rec);
            if out.len() >= q.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Deletes audit entries older than `before`; returns how many.
    pub async fn prune_audit(&self, before: i64) -> Result<usize, StoreError> {
        let mut keys = Vec::new();
        for k in self
            .t
            .audit
            .range(..audit_key(before, Uuid::nil()))
            .keys()
            .take(10_000)
        {
            keys.push(k?.to_vec());
        }
        let n = keys.len();
        if n > 0 {
            self.writer
                .write_waiting(move |t| {
                    for k in keys {
                        t.remove(Table::Audit, k)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, last_seen: i64, expires_at: i64) -> SessionRec {
        SessionRec {
            username: user.into(),
            role: Role::Admin,
            csrf_hash: [0; 32],
            created_at: 0,
            last_seen,
            expires_at,
            source: None,
        }
    }

    fn audit_at(at: i64) -> AuditRec {
        AuditRec {
            id: Uuid::now_v7(),
            at,
            actor: "token".into(),
            action: "POST /admin/api/partners".into(),
            target: "partners".into(),
            source: None,
            status: 201,
        }
    }

    #[tokio::test]
    async fn ended_sessions_and_old_audit_entries_are_pruned_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let (now, idle) = (10_000_000, 60_000);
        store
            .put_session([1; 32], session("live", now - 1_000, now + 1_000))
            .await
            .unwrap();
        store
            .put_session([2; 32], session("idle", now - idle, now + 1_000))
            .await
            .unwrap();
        store
            .put_session([3; 32], session("over", now, now))
            .await
            .unwrap();
        assert_eq!(store.prune_sessions(now, idle).await.unwrap(), 2);
        assert!(store.session(&[1; 32]).unwrap().is_some());
        assert!(store.session(&[2; 32]).unwrap().is_none());
        assert!(store.session(&[3; 32]).unwrap().is_none());

        store.audit(audit_at(now - 5)).await.unwrap();
        store.audit(audit_at(now + 5)).await.unwrap();
        assert_eq!(store.prune_audit(now).await.unwrap(), 1);
        let left = store
            .audit_entries(&AuditQuery {
                actor: None,
                action: None,
                since: None,
                before: None,
                limit: 10,
            })
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].at, now + 5);
        store.close();
    }
}
