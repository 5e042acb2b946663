//! Payload validation per doctype: the registered schemas, compiled once and kept in memory
//! as an immutable snapshot that is replaced whole when one changes (like the partner
//! [`crate::store::Directory`]), and the checks a payload goes through at intake.
//!
//! A schema applies to messages of its doctype whose version equals its own; `*` applies
//! to every version (and to messages without one) of the doctype, unless a schema for the
//! exact version exists. What it checks, in order:
//!
//! 1. the size (`max_bytes`);
//! 2. the content type: the listed types, or when none are listed, JSON types for a schema
//!    with only a JSON Schema and XML types for one with only an XML root;
//! 3. a JSON payload against the JSON Schema (draft 2020-12, `format` checked), an XML
//!    payload for well-formedness (no DTDs) and the name of its root element.
//!
//! With no schema for a message, validation is one map lookup.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use uuid::Uuid;

use crate::store::records::{clip, SchemaRec, ValidationErrorRec, VALIDATION_ERRORS_KEPT};
use crate::store::{Store, StoreError};

/// Largest JSON Schema accepted, in bytes: it is stored in one record.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Payloads at least this large are validated on a blocking thread.
const BLOCKING_BYTES: usize = 64 * 1024;

/// One compiled schema.
pub struct Compiled {
    pub rec: SchemaRec,
    json: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("rec", &self.rec).finish()
    }
}

/// Compiles a schema record; the error is the compiler's message.
pub fn compile(rec: SchemaRec) -> Result<Compiled, String> {
    let json = match &rec.json_schema {
        None => None,
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("the JSON Schema is not JSON: {e}"))?;
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&value)
                .map_err(|e| format!("the JSON Schema does not compile: {e}"))?;
            Some(validator)
        }
    };
    Ok(Compiled { rec, json })
}

/// Whether a `type/subtype` is JSON.
fn is_json(media: &str) -> bool {
    crate::api::is_json_media(media)
}

/// Whether a `type/subtype` is XML.
fn is_xml(media: &str) -> bool {
    media == "application/xml" || media == "text/xml" || media.ends_with("+xml")
}

fn error(pointer: &str, keyword: &str, message: impl Into<String>) -> ValidationErrorRec {
    ValidationErrorRec {
        pointer: clip(pointer.to_owned()),
        keyword: keyword.to_owned(),
        message: clip(message.into()),
    }
}

impl Compiled {
    /// The content types a payload may have: the listed ones, or those the checks imply.
    fn allows(&self, media: &str) -> bool {
        let r = &self.rec;
        if !r.content_types.is_empty() {
            return r.content_types.iter().any(|t| t == media);
        }
        match (r.json_schema.is_some(), r.xml_root.is_some()) {
            (true, false) => is_json(media),
            (false, true) => is_xml(media),
            _ => true,
        }
    }

    /// Why `payload` (of `content_type`) fails this schema; empty when it passes. At most
    /// [`VALIDATION_ERRORS_KEPT`] errors, in the order they were found.
    pub fn check(&self, content_type: &str, payload: &[u8]) -> Vec<ValidationErrorRec> {
        let media = crate::model::media_essence(content_type);
        let mut out = Vec::new();
        if let Some(max) = self.rec.max_bytes {
            if payload.len() as u64 > max {
                out.push(error(
                    "",
                    "maxBytes",
                    format!(
                        "the payload has {} bytes; at most {max} are allowed",
                        payload.len()
                    ),
                ));
            }
        }
        if !self.allows(&media) {
            out.push(error(
                "",
                "contentType",
                format!("content type {media} is not allowed for this doctype"),
            ));
            return out;
        }
        if is_json(&media) {
            if let Some(v) = &self.json {
                match serde_json::from_slice::<serde_json::Value>(payload) {
                    Err(e) => out.push(error("", "json", format!("the payload is not JSON: {e}"))),
                    Ok(instance) => {
                        let room = VALIDATION_ERRORS_KEPT.saturating_sub(out.len());
                        out.extend(v.iter_errors(&instance).take(room).map(|e| {
                            error(
                                e.instance_path().as_str(),
                                e.kind().keyword(),
                                e.to_string(),
                            )
                        }));
                    }
                }
            }
        } else if is_xml(&media) {
            check_xml(self.rec.xml_root.as_deref(), payload, &mut out);
        }
        out
    }
}

/// Well-formedness (DTDs refused) and the root element's local name.
fn check_xml(root: Option<&str>, payload: &[u8], out: &mut Vec<ValidationErrorRec>) {
    let Ok(text) = std::str::from_utf8(payload) else {
        out.push(error("", "wellFormed", "the XML payload is not UTF-8 text"));
        return;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match roxmltree::Document::parse(text) {
        Err(e) => out.push(error(
            "",
            "wellFormed",
            format!("the XML is not well-formed: {e}"),
        )),
        Ok(doc) => {
            let name = doc.root_element().tag_name().name();
            if let Some(want) = root.filter(|want| *want != name) {
                out.push(error(
                    &format!("/{name}"),
                    "rootElement",
                    format!("the root element is {name}; {want} is expected"),
                ));
            }
        }
    }
}

/// The compiled schemas by doctype, then version. Immutable; replaced whole on change.
/// Two levels, so a lookup borrows the message's strings and allocates nothing.
type ByDoctype = HashMap<String, HashMap<String, Arc<Compiled>>>;

#[derive(Debug, Default)]
struct Snapshot {
    by_doctype: ByDoctype,
}

fn insert(map: &mut ByDoctype, c: Arc<Compiled>) {
    let versions = map.entry(c.rec.doctype.clone()).or_default();
    versions.insert(c.rec.version.clone(), c);
}

/// The registered schemas, compiled, with the lock that orders their changes.
#[derive(Debug, Default)]
pub struct Schemas {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Held across a change's store write and snapshot swap, so the last write wins in
    /// memory as on disk.
    changes: tokio::sync::Mutex<()>,
}

/// Why a schema change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema does not compile: the compiler's message.
    #[error("{0}")]
    Compile(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Schemas {
    /// Compiles every stored schema. One that no longer compiles (stored by a build with
    /// another compiler) is logged and left out, and shows in no listing until it is
    /// registered again.
    pub fn load(store: &Store) -> Result<Schemas, StoreError> {
        let mut compiled = Vec::new();
        for rec in store.schemas()? {
            let (id, doctype) = (rec.id, rec.doctype.clone());
            match compile(rec) {
                Ok(c) => compiled.push(c),
                Err(why) => {
                    tracing::error!(schema = %id, %doctype, %why, "a stored schema does not compile; it is not applied")
                }
            }
        }
        Ok(Schemas::from_compiled(compiled))
    }

    /// Schemas already compiled (a later one of the same doctype and version wins).
    pub fn from_compiled(compiled: impl IntoIterator<Item = Compiled>) -> Schemas {
        let mut snap = Snapshot::default();
        for c in compiled {
            insert(&mut snap.by_doctype, Arc::new(c));
        }
        Schemas {
            snapshot: RwLock::new(Arc::new(snap)),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn swap(&self, f: impl FnOnce(&mut ByDoctype)) {
        let mut by_doctype = self.current().by_doctype.clone();
        f(&mut by_doctype);
        by_doctype.retain(|_, versions| !versions.is_empty());
        let snap = Arc::new(Snapshot { by_doctype });
        match self.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    /// The schema that applies to `doctype` at `version`: the exact version's, else `*`'s.
    pub fn lookup(&self, doctype: &str, version: Option<&str>) -> Option<Arc<Compiled>> {
        let snap = self.current();
        let versions = snap.by_doctype.get(doctype)?;
        version
            .and_then(|v| versions.get(v))
            .or_else(|| versions.get("*"))
            .cloned()
    }

    /// Every applied schema, oldest first.
    pub fn list(&self) -> Vec<SchemaRec> {
        let mut all: Vec<SchemaRec> = self
            .current()
            .by_doctype
            .values()
            .flat_map(HashMap::values)
            .map(|c| c.rec.clone())
            .collect();
        all.sort_by_key(|r| r.id);
        all
    }

    /// Compiles `rec` (on a blocking thread), stores it in place of the schema of the same
    /// doctype and version, and applies it to the next message. Returns the one replaced.
    pub async fn put(
        &self,
        store: &Store,
        rec: SchemaRec,
    ) -> Result<Option<SchemaRec>, SchemaError> {
        let compiled = tokio::task::spawn_blocking(move || compile(rec))
            .await
            .map_err(|_| SchemaError::Store(StoreError::Closed))?
            .map_err(SchemaError::Compile)?;
        let compiled = Arc::new(compiled);
        let _guard = self.changes.lock().await;
        let replaced = store.put_schema(compiled.rec.clone()).await?;
        self.swap(|m| insert(m, compiled));
        Ok(replaced)
    }

    /// Deletes a schema; `None` when there is none with that id.
    pub async fn delete(&self, store: &Store, id: Uuid) -> Result<Option<SchemaRec>, StoreError> {
        let _guard = self.changes.lock().await;
        let removed = store.delete_schema(id).await?;
        if removed.is_some() {
            self.swap(|m| {
                for versions in m.values_mut() {
                    versions.retain(|_, c| c.rec.id != id);
                }
            });
        }
        Ok(removed)
    }

    /// Validates payloads against the schemas of their doctypes and versions: for each,
    /// its errors, empty when it passes or no schema applies. When the payloads that have
    /// a schema come to 64 KiB or more, they are checked on a blocking thread.
    pub async fn validate(&self, items: &[Payload<'_>]) -> Vec<Vec<ValidationErrorRec>> {
        let mut out = vec![Vec::new(); items.len()];
        let mut jobs = Vec::new();
        let mut bytes = 0;
        for (i, p) in items.iter().enumerate() {
            if let Some(schema) = self.lookup(p.doctype, p.version) {
                bytes += p.payload.len();
                jobs.push((i, schema, p.content_type.to_owned(), p.payload.clone()));
            }
        }
        let run = move |jobs: Vec<(usize, Arc<Compiled>, String, Bytes)>| {
            jobs.into_iter()
                .map(|(i, schema, content_type, payload)| {
                    (i, schema.check(&content_type, &payload))
                })
                .collect::<Vec<_>>()
        };
        let checked = if bytes < BLOCKING_BYTES {
            run(jobs)
        } else {
            let indexes: Vec<usize> = jobs.iter().map(|j| j.0).collect();
            tokio::task::spawn_blocking(move || run(jobs))
                .await
                .unwrap_or_else(|_| {
                    let lost = error("", "internal", "the validation was interrupted");
                    indexes
                        .into_iter()
                        .map(|i| (i, vec![lost.clone()]))
                        .collect()
                })
        };
        for (i, errors) in checked {
            out[i] = errors;
        }
        out
    }
}

/// One payload to validate, with what selects its schema.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub doctype: &'a str,
    pub version: Option<&'a str>,
    pub content_type: &'a str,
    pub payload: &'a Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(json: Option<&str>, xml_root: Option<&str>) -> SchemaRec {
        SchemaRec {
            id: Uuid::now_v7(),
            doctype: "order".into(),
            version: "*".into(),
            json_schema: json.map(str::to_owned),
            xml_root: xml_root.map(str::to_owned),
            max_bytes: None,
            content_types: Vec::new(),
            created_at: 0,
        }
    }

    const ORDER: &str = r#"{"type": "object", "required": ["id"],
        "properties": {"id": {"type": "string"}, "lines": {"type": "array",
        "items": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}}}}"#;

    #[test]
    fn json_errors_carry_pointer_keyword_and_message() {
        let c = compile(rec(Some(ORDER), None)).unwrap();
        assert!(c.check("application/json", br#"{"id": "A"}"#).is_empty());
        let errors = c.check(
            "application/json; charset=utf-8",
            br#"{"lines": [{"qty": 1}, {"qty": 0}]}"#,
        );
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.keyword.as_str()))
            .collect();
        assert!(got.contains(&("", "required")), "{errors:?}");
        assert!(got.contains(&("/lines/1/qty", "minimum")), "{errors:?}");
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }

    #[test]
    fn errors_are_capped() {
        let schema = r#"{"type": "array", "items": {"type": "string"}}"#;
        let c = compile(rec(Some(schema), None)).unwrap();
        let many = serde_json::to_vec(&vec![1; 500]).unwrap();
        assert_eq!(
            c.check("application/json", &many).len(),
            VALIDATION_ERRORS_KEPT
        );
    }

    #[test]
    fn a_schema_that_does_not_compile_is_refused_with_the_reason() {
        for bad in [
            "{",
            r#"{"type": 12}"#,
            r#"{"$ref": "https://example.com/s.json"}"#,
        ] {
            let e = compile(rec(Some(bad), None)).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn xml_is_checked_for_form_and_root() {
        let c = compile(rec(None, Some("Order"))).unwrap();
        assert!(c
            .check("application/xml", b"<Order><Id>1</Id></Order>")
            .is_empty());
        let e = c.check("text/xml", b"<Order><Id>1</Order>");
        assert_eq!(e[0].keyword, "wellFormed");
        let e = c.check("application/xml", b"<Invoice/>");
        assert_eq!(
            (e[0].keyword.as_str(), e[0].pointer.as_str()),
            ("rootElement", "/Invoice")
        );
        let e = c.check("application/json", b"{}");
        assert_eq!(
            e[0].keyword, "contentType",
            "an XML-only schema refuses JSON"
        );
        let dtd = b"<!DOCTYPE x [<!ENTITY a \"b\">]><Order>&a;</Order>";
        assert_eq!(c.check("application/xml", dtd)[0].keyword, "wellFormed");
    }

    #[test]
    fn size_and_listed_content_types() {
        let mut r = rec(None, None);
        r.max_bytes = Some(4);
        r.content_types = vec!["text/csv".into()];
        let c = compile(r).unwrap();
        assert!(c.check("text/csv", b"a,b").is_empty());
        let e = c.check("text/plain", b"a,b,c,d");
        let kinds: Vec<&str> = e.iter().map(|e| e.keyword.as_str()).collect();
        assert_eq!(kinds, ["maxBytes", "contentType"]);
    }

    #[test]
    fn the_exact_version_wins_over_the_wildcard() {
        assert!(Schemas::default().lookup("order", Some("2")).is_none());
        let mut exact = rec(None, None);
        exact.version = "2".into();
        let (any, exact) = (compile(rec(None, None)).unwrap(), compile(exact).unwrap());
        let (any_id, exact_id) = (any.rec.id, exact.rec.id);
        let schemas = Schemas::from_compiled([any, exact]);
        let id = |v: Option<&str>| schemas.lookup("order", v).map(|c| c.rec.id);
        assert_eq!(id(Some("2")), Some(exact_id));
        assert_eq!(id(Some("1")), Some(any_id));
        assert_eq!(id(None), Some(any_id));
        assert!(schemas.lookup("invoice", None).is_none());
    }

    #[tokio::test]
    async fn a_call_s_payloads_are_validated_together_large_ones_off_the_async_threads() {
        let schemas = Schemas::from_compiled([compile(rec(Some(ORDER), None)).unwrap()]);
        let big = Bytes::from(format!(r#"{{"pad": "{}"}}"#, "x".repeat(100_000)));
        let small = Bytes::from_static(br#"{"id": "A"}"#);
        let p = |doctype, payload| Payload {
            doctype,
            version: None,
            content_type: "application/json",
            payload,
        };
        for items in [
            vec![p("order", &big), p("order", &small), p("invoice", &big)],
            vec![p("order", &small), p("order", &small)],
        ] {
            let got = schemas.validate(&items).await;
            assert_eq!(got.len(), items.len());
            for (item, errors) in items.iter().zip(&got) {
                let want = usize::from(item.doctype == "order" && item.payload.len() > 100);
                assert_eq!(errors.len(), want, "{}: {errors:?}", item.doctype);
            }
        }
    }
}
