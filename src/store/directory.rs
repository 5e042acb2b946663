//! Partners, API keys and routes: the appliance's configuration, written by the admin API
//! and read on every request through the in-memory [`Directory`].

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::codec::{decode, encode};
use super::records::{ApiKeyRec, PartnerRec, RouteRec, SigningSecrets};
use super::writer::{Table, Tx};
use super::{now_ms, Store, StoreError};
use crate::model::Env;

/// The token signing key from `meta`, made and stored (durably) when there is none.
pub(super) fn ensure_token_key(
    t: &super::Trees,
    writer: &super::writer::Writer,
) -> Result<super::records::TokenKeyRec, StoreError> {
    const NAME: &[u8] = b"token_key";
    if let Some(raw) = t.meta.get(NAME)? {
        return decode(&raw);
    }
    let secret = crate::secrets::token_signing_key().map_err(|e| StoreError::Io(e.into()))?;
    let rec = super::records::TokenKeyRec {
        id: Uuid::now_v7(),
        secret,
        created_at: now_ms(),
    };
    let value = encode(&rec)?;
    writer.write_blocking(move |tx| tx.insert(Table::Meta, NAME, value))?;
    Ok(rec)
}

/// Who is calling: the partner and environment of a valid, unrevoked key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub partner: String,
    pub env: Env,
    pub key_id: Uuid,
}

/// A snapshot of partners, active keys and routes. Immutable; replaced whole on change,
/// so a request sees one consistent version.
#[derive(Debug, Default)]
pub struct Directory {
    partners: HashMap<String, PartnerRec>,
    /// Active keys by the SHA-256 of their secret.
    keys: HashMap<[u8; 32], ApiKeyRec>,
    /// The hash of each active key, by key id (tokens name the key that minted them).
    key_ids: HashMap<Uuid, [u8; 32]>,
    routes: Vec<RouteRec>,
}

impl Directory {
    /// The principal of an API key secret, if the key is active and its partner too.
    pub fn authenticate(&self, secret: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let key = self.keys.get(&hash)?;
        // The map lookup found a candidate by hash; compare the stored hash in constant
        // time as well so the check itself does not depend on where bytes differ.
        if !bool::from(key.hash.ct_eq(&hash)) {
            return None;
        }
        let partner = self.partners.get(&key.partner)?;
        partner.active.then(|| Principal {
            partner: key.partner.clone(),
            env: key.env,
            key_id: key.id,
        })
    }

    /// The principal of an active key given by its id, if its partner is active too: what
    /// a token minted with that key stands for.
    pub fn key_principal(&self, id: Uuid) -> Option<Principal> {
        let key = self.keys.get(self.key_ids.get(&id)?)?;
        let partner = self.partners.get(&key.partner)?;
        partner.active.then(|| Principal {
            partner: key.partner.clone(),
            env: key.env,
            key_id: key.id,
        })
    }

    /// One partner.
    pub fn partner(&self, code: &str) -> Option<&PartnerRec> {
        self.partners.get(code)
    }

    /// All partners, by code.
    pub fn partners(&self) -> Vec<&PartnerRec> {
        let mut all: Vec<_> = self.partners.values().collect();
        all.sort_by(|a, b| a.code.cmp(&b.code));
        all
    }

    /// All routes, oldest first.
    pub fn routes(&self) -> &[RouteRec] {
        &self.routes
    }

    /// The active receivers that routes allow `sender` to send `doctype` to.
    pub fn receivers(&self, env: Env, sender: &str, doctype: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.applies(env, sender, doctype))
            .filter(|r| self.partners.get(&r.receiver).is_some_and(|p| p.active))
            .map(|r| r.receiver.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether a route lets `sender` send `doctype` to `receiver` (and the receiver is active).
    pub fn allows(&self, env: Env, sender: &str, receiver: &str, doctype: &str) -> bool {
        self.partners.get(receiver).is_some_and(|p| p.active)
            && self
                .routes
                .iter()
                .any(|r| r.receiver == receiver && r.applies(env, sender, doctype))
    }
}

impl RouteRec {
    /// Whether this route carries `sender`'s `doctype` in `env`.
    fn applies(&self, env: Env, sender: &str, doctype: &str) -> bool {
        self.sender == sender
            && (self.doctype == "*" || self.doctype == doctype)
            && !(self.live_only && env == Env::Test)
    }
}

/// What went wrong with a configuration change.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for DirError {
    fn from(e: sled::Error) -> Self {
        DirError::Store(e.into())
    }
}

/// A partner to create.
#[derive(Debug, Clone)]
pub struct NewPartner {
    pub code: String,
    pub name: String,
    pub push_url: Option<String>,
    pub test_push_url: Option<String>,
    pub push_headers: Vec<(String, String)>,
    pub push_params: Vec<(String, String)>,
}

/// Changes to a partner; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PartnerPatch {
    pub name: Option<String>,
    pub active: Option<bool>,
    /// `Some(None)` removes the push URL.
    pub push_url: Option<Option<String>>,
    /// `Some(None)` removes the test push URL.
    pub test_push_url: Option<Option<String>>,
    pub push_paused: Option<bool>,
    /// Turns these environments' disabled push endpoints back on.
    pub enable_endpoints: Option<Vec<Env>>,
    pub push_headers: Option<Vec<(String, String)>>,
    pub push_params: Option<Vec<(String, String)>>,
    pub unique_references: Option<bool>,
    /// `Some(None)` removes the partner's own retention.
    pub retention_days: Option<Option<u32>>,
}

/// A freshly created key: its record and the secret, which is never stored.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub record: ApiKeyRec,
    pub secret: String,
}

impl Store {
    /// Rebuilds the in-memory directory from the trees.
    pub(super) fn reload_directory(&self) -> Result<(), StoreError> {
        let mut dir = Directory::default();
        for item in self.t.partners.iter() {
            let (_, v) = item?;
            let p: PartnerRec = decode(&v)?;
            dir.partners.insert(p.code.clone(), p);
        }
        for item in self.t.api_keys.iter() {
            let (_, v) = item?;
            let k: ApiKeyRec = decode(&v)?;
            if k.revoked_at.is_none() {
                dir.key_ids.insert(k.id, k.hash);
                dir.keys.insert(k.hash, k);
            }
        }
        for item in self.t.routes.iter() {
            let (_, v) = item?;
            dir.routes.push(decode(&v)?);
        }
        match self.directory.write() {
            Ok(mut d) => *d = Arc::new(dir),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(dir),
        }
        Ok(())
    }

    /// Runs one configuration change as a writer job (so it is durable when this returns),
    /// then refreshes the directory, so the change holds for the very next request.
    /// Changes are serialized by `admin_lock`, so each sees the one before it.
    async fn change<T, F>(&self, f: F) -> Result<T, DirError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, &Directory) -> Result<T, DirError> + Send + 'static,
    {
        let _guard = self.admin_lock.lock().await;
        let dir = self.directory();
        let out = self.writer.write_waiting(move |t| Ok(f(t, &dir))).await?;
        self.reload_directory()?;
        out
    }

    /// Creates a partner; 409 if the code exists.
    pub async fn create_partner(&self, new: NewPartner) -> Result<PartnerRec, DirError> {
        let secret = || {
            crate::secrets::signing_secret()
                .map(|current| SigningSecrets {
                    current,
                    previous: None,
                })
                .map_err(|e| StoreError::Io(e.into()))
        };
        let (signing, test_signing) = (secret()?, secret()?);
        self.change(move |t, _| {
            if t.get(Table::Partners, new.code.as_bytes())?.is_some() {
                return Err(DirError::Conflict(format!(
                    "partner {} already exists",
                    new.code
                )));
            }
            let now = now_ms();
            let rec = PartnerRec {
                code: new.code,
                name: new.name,
                active: true,
                push_url: new.push_url,
                test_push_url: new.test_push_url,
                push_headers: new.push_headers,
                push_params: new.push_params,
                signing,
                test_signing,
                push_paused: false,
                disabled_endpoints: Vec::new(),
                created_at: now,
                updated_at: now,
                unique_references: false,
                retention_days: None,
            };
            t.insert(Table::Partners, rec.code.as_bytes(), encode(&rec)?)?;
            Ok(rec)
        })
        .await
    }

    /// Loads a partner, lets `f` change it, stamps `updated_at` and stores it, as one
    /// configuration change.
    async fn modify_partner<F>(&self, code: &str, f: F) -> Result<PartnerRec, DirError>
    where
        F: FnOnce(&mut PartnerRec) + Send + 'static,
    {
        let code = code.to_owned();
        self.change(move |t, dir| {
            let mut rec = dir
                .partner(&code)
                .cloned()
                .ok_or(DirError::NotFound("partner"))?;
            f(&mut rec);
            rec.updated_at = now_ms();
            t.insert(Table::Partners, code.as_bytes(), encode(&rec)?)?;
            Ok(rec)
        })
        .await
    }

    /// Changes a partner.
    pub async fn update_partner(
        &self,
        code: &str,
        patch: PartnerPatch,
    ) -> Result<PartnerRec, DirError> {
        self.modify_partner(code, move |rec| {
            if let Some(name) = patch.name {
                rec.name = name;
            }
            if let Some(active) = patch.active {
                rec.active = active;
            }
            if let Some(url) = patch.push_url {
                rec.push_url = url;
            }
            if let Some(url) = patch.test_push_url {
                rec.test_push_url = url;
            }
            if let Some(h) = patch.push_headers {
                rec.push_headers = h;
            }
            if let Some(p) = patch.push_params {
                rec.push_params = p;
            }
            if let Some(paused) = patch.push_paused {
                rec.push_paused = paused;
            }
            if let Some(days) = patch.retention_days {
                rec.retention_days = days;
            }
            if let Some(unique) = patch.unique_references {
                rec.unique_references = unique;
            }
            if let Some(envs) = patch.enable_endpoints {
                rec.disabled_endpoints.retain(|(e, _, _)| !envs.contains(e));
            }
        })
        .await
        // Resuming or re-enabling releases held pushes: let the worker look now.
        .inspect(|_| self.outbox.rescan())
    }

    /// Replaces the signing secret of `env`'s push endpoint. The old secret keeps signing
    /// (beside the new one) for `overlap_ms`, so receivers can switch without a gap.
    pub async fn rotate_signing_secret(
        &self,
        code: &str,
        env: Env,
        overlap_ms: i64,
    ) -> Result<PartnerRec, DirError> {
        let fresh = crate::secrets::signing_secret().map_err(|e| StoreError::Io(e.into()))?;
        self.modify_partner(code, move |rec| {
            let secrets = match env {
                Env::Live => &mut rec.signing,
                Env::Test => &mut rec.test_signing,
            };
            let old = std::mem::replace(&mut secrets.current, fresh);
            secrets.previous = (overlap_ms > 0).then(|| (old, now_ms() + overlap_ms));
        })
        .await
    }

    /// Turns off `env`'s push endpoint of a partner (a 410 answer, or failing too long).
    pub async fn disable_endpoint(
        &self,
        code: &str,
        env: Env,
        reason: String,
    ) -> Result<(), DirError> {
        if self
            .directory()
            .partner(code)
            .is_some_and(|p| p.disabled_endpoints.iter().any(|(e, _, _)| *e == env))
        {
            return Ok(());
        }
        tracing::warn!(partner = %code, env = env.as_str(), %reason, "push endpoint disabled");
        self.modify_partner(code, move |rec| {
            if !rec.disabled_endpoints.iter().any(|(e, _, _)| *e == env) {
                rec.disabled_endpoints.push((env, now_ms(), reason));
            }
        })
        .await
        .map(|_| ())
    }

    /// Deletes a partner with its keys (revoked) and routes, in one transaction. Its
    /// messages and transmissions stay, for the record.
    pub async fn delete_partner(&self, code: &str) -> Result<(), DirError> {
        let code = code.to_owned();
        // Scans cannot run inside the writer's transaction; admin changes are serialized,
        // so the keys read here are still the partner's keys when the job runs.
        let keys = self.list_keys(&code)?;
        self.change(move |t, dir| {
            if dir.partner(&code).is_none() {
                return Err(DirError::NotFound("partner"));
            }
            let now = now_ms();
            for mut k in keys.into_iter().filter(|k| k.revoked_at.is_none()) {
                k.revoked_at = Some(now);
                t.insert(Table::ApiKeys, k.id.as_bytes(), encode(&k)?)?;
                t.remove(Table::ApiKeyHash, k.hash)?;
            }
            for r in dir
                .routes()
                .iter()
                .filter(|r| r.sender == code || r.receiver == code)
            {
                t.remove(Table::Routes, r.id.as_bytes())?;
            }
            t.remove(Table::Partners, code.as_bytes())?;
            Ok(())
        })
        .await
    }

    /// Creates an API key for a partner. The secret is returned once and never stored.
    pub async fn create_key(
        &self,
        partner: &str,
        env: Env,
        label: Option<String>,
    ) -> Result<CreatedKey, DirError> {
        let partner = partner.to_owned();
        let secret = format!(
            "wb_{}_{}",
            env.as_str(),
            crate::secrets::random_token(24).map_err(|e| StoreError::Io(e.into()))?
        );
        self.change(move |t, dir| {
            if dir.partner(&partner).is_none() {
                return Err(DirError::NotFound("partner"));
            }
            let record = ApiKeyRec {
                id: Uuid::now_v7(),
                partner,
                env,
                label,
                prefix: secret.chars().take(12).collect(),
                hash: Sha256::digest(secret.as_bytes()).into(),
                created_at: now_ms(),
                revoked_at: None,
            };
            t.insert(Table::ApiKeys, record.id.as_bytes(), encode(&record)?)?;
            t.insert(Table::ApiKeyHash, record.hash, record.id.as_bytes())?;
            Ok(CreatedKey { record, secret })
        })
        .await
    }

    /// The keys of a partner (revoked ones included), oldest first.
    pub fn list_keys(&self, partner: &str) -> Result<Vec<ApiKeyRec>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.api_keys.iter() {
            let (_, v) = item?;
            let k: ApiKeyRec = decode(&v)?;
            if k.partner == partner {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Revokes a key; it stops working for the next request. Revoking twice is fine.
    pub async fn revoke_key(&self, partner: &str, id: Uuid) -> Result<ApiKeyRec, DirError> {
        let partner = partner.to_owned();
        self.change(move |t, _| {
            let raw = t
                .get(Table::ApiKeys, id.as_bytes())?
                .ok_or(DirError::NotFound("key"))?;
            let mut k: ApiKeyRec = decode(&raw)?;
            if k.partner != partner {
                return Err(DirError::NotFound("key"));
            }
            if k.revoked_at.is_none() {
                k.revoked_at = Some(now_ms());
                t.insert(Table::ApiKeys, k.id.as_bytes(), encode(&k)?)?;
                t.remove(Table::ApiKeyHash, k.hash)?;
            }
            Ok(k)
        })
        .await
    }

    /// Creates a route between two existing partners; 409 if the same route exists.
    pub async fn create_route(
        &self,
        sender: &str,
        receiver: &str,
        doctype: &str,
        live_only: bool,
    ) -> Result<RouteRec, DirError> {
        let (sender, receiver, doctype) =
            (sender.to_owned(), receiver.to_owned(), doctype.to_owned());
        self.change(move |t, dir| {
            if dir.partner(&sender).is_none() {
                return Err(DirError::Invalid {
                    field: "sender",
                    message: format!("no partner {sender}"),
                });
            }
            if dir.partner(&receiver).is_none() {
                return Err(DirError::Invalid {
                    field: "receiver",
                    message: format!("no partner {receiver}"),
                });
            }
            if dir
                .routes()
                .iter()
                .any(|r| r.sender == sender && r.receiver == receiver && r.doctype == doctype)
            {
                return Err(DirError::Conflict(format!(
                    "a route {sender} -> {receiver} for {doctype} already exists"
                )));
            }
            let rec = RouteRec {
                id: Uuid::now_v7(),
                sender,
                receiver,
                doctype,
                live_only,
                created_at: now_ms(),
            };
            t.insert(Table::Routes, rec.id.as_bytes(), encode(&rec)?)?;
            Ok(rec)
        })
        .await
    }

    /// Deletes a route.
    pub async fn delete_route(&self, id: Uuid) -> Result<(), DirError> {
        self.change(move |t, _| {
            t.get(Table::Routes, id.as_bytes())?
                .ok_or(DirError::NotFound("route"))?;
            t.remove(Table::Routes, id.as_bytes())?;
            Ok(())
        })
        .await
    }
}
