//! Seg: identify (with an email), the four e-commerce tracks, page and email-to-email alias,
//! each as one JSON `POST {endpoint}/v1/{website_id}/events`.
//!
//! The body is fixed at map time and stored in the record, so the bytes the stub records equal
//! what `eventrelay map` prints; only the URL (endpoint, website id) is applied at send time.

use super::{
    common_headers, deny_unknown, endpoint, required_str, AnswerClass, BuildError, ConfigError,
    Destination, HttpRequest, MapOutcome,
};
use crate::event::{Ecommerce, Event, EventType};
use crate::record::{record::Payload, Record, SegEvent};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Default Seg tracker host.
pub const DEFAULT_ENDPOINT: &str = "https://tracker.segapp.com";

/// Seg settings (SPEC §3).
#[derive(Debug, Clone)]
pub struct Seg {
    /// Base URL, no trailing slash.
    pub endpoint: String,
    /// The website's GUID, lowercase hyphenated.
    pub website_id: String,
}

impl Seg {
    /// Build from the `[destinations.seg]` section; `website_id` must be a GUID.
    pub fn from_config(t: &toml::Table) -> Result<Arc<dyn Destination>, ConfigError> {
        deny_unknown(t, &["endpoint", "website_id"])?;
        let website_id = required_str(t, "website_id")?;
        let guid = uuid::Uuid::try_parse(&website_id)
            .ok()
            .filter(|_| website_id.len() == 36);
        let Some(guid) = guid else {
            return Err(ConfigError::new(
                "website_id",
                format!("{website_id:?} is not a GUID like abc8fb18-7559-4324-9921-a4b5015b4a1c"),
            ));
        };
        Ok(Arc::new(Seg {
            endpoint: endpoint(t, DEFAULT_ENDPOINT)?,
            website_id: guid.hyphenated().to_string(),
        }))
    }
}

/// The Seg event name for a Segment track event name, if Seg takes it.
pub fn seg_event_name(name: &str) -> Option<&'static str> {
    Some(match Ecommerce::from_name(name)? {
        Ecommerce::ProductListViewed => "RangeView",
        Ecommerce::ProductViewed => "ProductView",
        Ecommerce::ProductAdded => "AddedToBasket",
        Ecommerce::OrderCompleted => "OrderPlaced",
    })
}

/// A plausible email address: one `@`, something before it, a dotted domain after, no spaces.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
}

fn pick(obj: &mut Map<String, Value>, key: &str, value: Option<&Value>) {
    if let Some(v) = value.filter(|v| !v.is_null()) {
        obj.insert(key.to_string(), v.clone());
    }
}

impl Destination for Seg {
    fn name(&self) -> &'static str {
        "seg"
    }

    fn integration_key(&self) -> &'static str {
        "Seg"
    }

    fn map(&self, event: &Event) -> MapOutcome {
        let mut body = Map::new();
        body.insert("type".into(), Value::from(event.kind.as_str()));
        body.insert("messageId".into(), Value::from(event.message_id.as_str()));
        pick(
            &mut body,
            "timestamp",
            event.timestamp().map(Value::from).as_ref(),
        );
        pick(
            &mut body,
            "userId",
            event.user_id.as_deref().map(Value::from).as_ref(),
        );
        pick(
            &mut body,
            "anonymousId",
            event.anonymous_id.as_deref().map(Value::from).as_ref(),
        );
        let email = event.email();
        pick(&mut body, "email", email.map(Value::from).as_ref());
        let props = event.raw.get("properties");
        match event.kind {
            EventType::Identify => {
                if email.is_none() {
                    return MapOutcome::Skip("missing_email");
                }
                let traits = event
                    .raw
                    .get("traits")
                    .filter(|t| t.is_object())
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new()));
                body.insert("traits".into(), traits);
            }
            EventType::Track => {
                let Some(name) = event.event_name().and_then(seg_event_name) else {
                    return MapOutcome::Skip("unmapped_event");
                };
                body.insert("event".into(), Value::from(name));
                body.insert(
                    "properties".into(),
                    props.cloned().unwrap_or_else(|| Value::Object(Map::new())),
                );
                if let Some(page) = event.context_object("page") {
                    let mut p = Map::new();
                    pick(&mut p, "url", page.get("url"));
                    pick(&mut p, "title", page.get("title"));
                    if !p.is_empty() {
                        body.insert("page".into(), Value::Object(p));
                    }
                }
            }
            EventType::Page => {
                pick(&mut body, "name", event.raw.get("name"));
                let ctx_page = event.context_object("page");
                for key in ["url", "title"] {
                    let v = props
                        .and_then(|p| p.get(key))
                        .filter(|v| !v.is_null())
                        .or_else(|| ctx_page.and_then(|p| p.get(key)));
                    pick(&mut body, key, v);
                }
                body.insert(
                    "properties".into(),
                    props.cloned().unwrap_or_else(|| Value::Object(Map::new())),
                );
            }
            EventType::Alias => {
                let previous = event.str_field("previousId").unwrap_or_default();
                let user = event.user_id.as_deref().unwrap_or_default();
                if !(is_email(previous) && is_email(user)) {
                    return MapOutcome::Skip("alias_not_email");
                }
                body.insert("previousId".into(), Value::from(previous));
            }
            EventType::Screen | EventType::Group => return MapOutcome::Skip("unsupported_type"),
        }
        match serde_json::to_vec(&Value::Object(body)) {
            Ok(bytes) => MapOutcome::Deliver(vec![Payload::Seg(SegEvent { body: bytes })]),
            // Serialising a Value cannot fail; keep the arm total anyway.
            Err(_) => MapOutcome::Reject("unserializable"),
        }
    }

    fn build_request(&self, record: &Record) -> Result<HttpRequest, BuildError> {
        let Some(Payload::Seg(ev)) = &record.payload else {
            return Err(BuildError {
                reason: "wrong_payload",
                message: "record has no Seg payload".into(),
            });
        };
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        headers.extend(common_headers(record));
        Ok(HttpRequest {
            method: "POST",
            url: format!("{}/v1/{}/events", self.endpoint, self.website_id),
            headers,
            body: Some(ev.body.clone()),
        })
    }

    /// Seg documents 200, 201 and 202 as success; any other 2xx is unexpected and permanent.
    fn classify(&self, status: u16) -> AnswerClass {
        match status {
            200..=202 => AnswerClass::Success,
            203..=299 => AnswerClass::Permanent,
            s => super::classify_status(s),
        }
    }
}
