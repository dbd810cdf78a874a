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
use serde::Serialize;
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

/// The JSON body Seg receives. Borrowed from the event, so `traits` and `properties` are
/// serialised straight from the parsed input instead of being deep-copied first.
#[derive(Serialize, Default)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "messageId")]
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(rename = "anonymousId", skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<Page<'a>>,
    #[serde(rename = "previousId", skip_serializing_if = "Option::is_none")]
    previous_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Page<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a Value>,
}

static EMPTY_OBJECT: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::Object(Map::new()));

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

impl Destination for Seg {
    fn name(&self) -> &'static str {
        "seg"
    }

    fn integration_key(&self) -> &'static str {
        "Seg"
    }

    fn map(&self, event: &Event) -> MapOutcome {
        let email = event.email();
        let mut body = Body {
            kind: event.kind.as_str(),
            message_id: &event.message_id,
            timestamp: event.timestamp(),
            user_id: event.user_id.as_deref(),
            anonymous_id: event.anonymous_id.as_deref(),
            email,
            ..Default::default()
        };
        let props = present(event.raw.get("properties"));
        match event.kind {
            EventType::Identify => {
                if email.is_none() {
                    return MapOutcome::Skip("missing_email");
                }
                body.traits = Some(present(event.raw.get("traits")).unwrap_or(&*EMPTY_OBJECT));
            }
            EventType::Track => {
                let Some(name) = event.event_name().and_then(seg_event_name) else {
                    return MapOutcome::Skip("unmapped_event");
                };
                body.event = Some(name);
                body.properties = Some(props.unwrap_or(&*EMPTY_OBJECT));
                if let Some(page) = event.context_object("page") {
                    let (url, title) = (present(page.get("url")), present(page.get("title")));
                    if url.is_some() || title.is_some() {
                        body.page = Some(Page { url, title });
                    }
                }
            }
            EventType::Page => {
                body.name = present(event.raw.get("name"));
                let ctx_page = event.context_object("page");
                let from = |key: &str| {
                    present(props.and_then(|p| p.get(key)))
                        .or_else(|| present(ctx_page.and_then(|p| p.get(key))))
                };
                body.url = from("url");
                body.title = from("title");
                body.properties = Some(props.unwrap_or(&*EMPTY_OBJECT));
            }
            EventType::Alias => {
                let previous = event.str_field("previousId").unwrap_or_default();
                let user = event.user_id.as_deref().unwrap_or_default();
                if !(is_email(previous) && is_email(user)) {
                    return MapOutcome::Skip("alias_not_email");
                }
                body.previous_id = Some(previous);
            }
            EventType::Screen | EventType::Group => return MapOutcome::Skip("unsupported_type"),
        }
        match serde_json::to_vec(&body) {
            Ok(bytes) => MapOutcome::Deliver(vec![Payload::Seg(SegEvent { body: bytes })]),
            // Serialising borrowed JSON values cannot fail; keep the arm total anyway.
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
