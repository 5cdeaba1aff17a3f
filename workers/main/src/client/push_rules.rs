//! Push rule changes: `/pushrules/global/{kind}/{ruleId}` with its `enabled` and `actions`. The
//! rules live in the user's `m.push_rules` account data, so every change reaches their clients
//! through sync; ruma's `Ruleset` enforces the spec's rules (server-default rules cannot be
//! removed or replaced, only enabled, disabled or given new actions).

use axum::Json;
use axum::extract::{Path, Query, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ruma::push::{
    Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule,
    PushCondition, RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::{OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::account_data::user_push_rules;
use crate::UserData;

fn scope(scope: &str) -> Result<(), MatrixError> {
    if scope != "global" {
        return Err(MatrixError::invalid_param(format!("Unknown push rule scope {scope}")));
    }
    Ok(())
}

fn kind(kind: &str) -> Result<RuleKind, MatrixError> {
    match kind {
        "override" => Ok(RuleKind::Override),
        "underride" => Ok(RuleKind::Underride),
        "sender" => Ok(RuleKind::Sender),
        "room" => Ok(RuleKind::Room),
        "content" => Ok(RuleKind::Content),
        other => Err(MatrixError::invalid_param(format!("Unknown push rule kind {other}"))),
    }
}

/// A user's rules: the typed ruleset, and room or sender rules whose IDs ruma cannot type
/// (`ganglion_core::push_rules::split_loose`), kept as JSON beside it.
struct Stored {
    rules: Ruleset,
    loose: Vec<(String, Value)>,
}

impl Stored {
    fn loose_index(&self, kind: RuleKind, rule_id: &str) -> Option<usize> {
        self.loose.iter().position(|(k, r)| k == kind.as_str() && r["rule_id"] == rule_id)
    }
}

async fn load(data: &UserData, user: &AuthUser) -> Result<Stored, MatrixError> {
    let (rules, loose) = user_push_rules(data, &user.user_id).await?;
    Ok(Stored { rules, loose })
}

async fn save(data: &UserData, user: &AuthUser, stored: &Stored) -> Result<(), MatrixError> {
    let mut global = serde_json::to_value(&stored.rules).map_err(MatrixError::internal)?;
    ganglion_core::push_rules::merge_loose(&mut global, &stored.loose);
    data.writer.put(&user.user_id, "", "m.push_rules", &json!({ "global": global })).await?;
    Ok(())
}

fn not_found() -> MatrixError {
    MatrixError::not_found("Push rule not found")
}

fn rule_json(stored: &Stored, kind: RuleKind, rule_id: &str) -> Result<Value, MatrixError> {
    if let Some(i) = stored.loose_index(kind.clone(), rule_id) {
        return Ok(stored.loose[i].1.clone());
    }
    let all = serde_json::to_value(&stored.rules).map_err(MatrixError::internal)?;
    all[kind.as_str()]
        .as_array()
        .and_then(|list| list.iter().find(|r| r["rule_id"] == rule_id))
        .cloned()
        .ok_or_else(not_found)
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`.
pub(crate) async fn get_rule(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let stored = load(&data, &user).await?;
    Ok(Json(rule_json(&stored, kind(&k)?, &rule_id)?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Placement {
    before: Option<String>,
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RuleBody {
    actions: Vec<Action>,
    #[serde(default)]
    conditions: Vec<PushCondition>,
    pattern: Option<String>,
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`: creates or replaces a user rule.
pub(crate) async fn put_rule(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id)): Path<(String, String, String)>,
    Query(place): Query<Placement>,
    MatrixJson(body): MatrixJson<RuleBody>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let kind = kind(&k)?;
    let new = match kind {
        RuleKind::Override => {
            NewPushRule::Override(NewConditionalPushRule::new(rule_id, body.conditions, body.actions))
        }
        RuleKind::Underride => {
            NewPushRule::Underride(NewConditionalPushRule::new(rule_id, body.conditions, body.actions))
        }
        RuleKind::Content => {
            let pattern = body.pattern.ok_or_else(|| MatrixError::bad_json("Content rules need a pattern"))?;
            NewPushRule::Content(NewPatternedPushRule::new(rule_id, pattern, body.actions))
        }
        RuleKind::Room | RuleKind::Sender => {
            let typed = match kind {
                RuleKind::Room => OwnedRoomId::try_from(rule_id.as_str())
                    .ok()
                    .map(|room| NewPushRule::Room(NewSimplePushRule::new(room, body.actions.clone()))),
                _ => OwnedUserId::try_from(rule_id.as_str())
                    .ok()
                    .map(|sender| NewPushRule::Sender(NewSimplePushRule::new(sender, body.actions.clone()))),
            };
            match typed {
                Some(rule) => rule,
                None => {
                    // Not a room (user) ID: accepted and kept as Synapse does, though it can
                    // never match (docs/compatibility.md).
                    let mut stored = load(&data, &user).await?;
                    let rule =
                        json!({ "rule_id": rule_id, "default": false, "enabled": true, "actions": body.actions });
                    match stored.loose_index(kind.clone(), &rule_id) {
                        Some(i) => stored.loose[i].1 = rule,
                        None => stored.loose.push((kind.as_str().to_owned(), rule)),
                    }
                    save(&data, &user, &stored).await?;
                    return Ok(Json(json!({})));
                }
            }
        }
        _ => return Err(MatrixError::invalid_param("Unsupported push rule kind")),
    };
    let mut stored = load(&data, &user).await?;
    stored.rules.insert(new, place.after.as_deref(), place.before.as_deref()).map_err(|e| match e {
        InsertPushRuleError::UnknownRuleId => MatrixError::not_found("The before or after rule does not exist"),
        other => MatrixError::invalid_param(other.to_string()),
    })?;
    save(&data, &user, &stored).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`.
pub(crate) async fn delete_rule(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let mut stored = load(&data, &user).await?;
    let kind = kind(&k)?;
    if let Some(i) = stored.loose_index(kind.clone(), &rule_id) {
        stored.loose.remove(i);
    } else {
        stored.rules.remove(kind, &rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => MatrixError::invalid_param("Server-default rules cannot be deleted"),
            _ => not_found(),
        })?;
    }
    save(&data, &user, &stored).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/{attr}` (`enabled` or `actions`).
pub(crate) async fn get_attr(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id, attr)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let stored = load(&data, &user).await?;
    let rule = rule_json(&stored, kind(&k)?, &rule_id)?;
    match attr.as_str() {
        "enabled" => Ok(Json(json!({ "enabled": rule["enabled"] }))),
        "actions" => Ok(Json(json!({ "actions": rule["actions"] }))),
        other => Err(MatrixError::unrecognized(format!("Unknown push rule attribute {other}"))),
    }
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/{attr}` (`enabled` or `actions`).
pub(crate) async fn put_attr(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id, attr)): Path<(String, String, String, String)>,
    MatrixJson(body): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let kind = kind(&k)?;
    let mut stored = load(&data, &user).await?;
    let loose = stored.loose_index(kind.clone(), &rule_id);
    match attr.as_str() {
        "enabled" => {
            let enabled = body
                .get("enabled")
                .and_then(Value::as_bool)
                .ok_or_else(|| MatrixError::bad_json("enabled must be a boolean"))?;
            match loose {
                Some(i) => stored.loose[i].1["enabled"] = json!(enabled),
                None => stored.rules.set_enabled(kind, &rule_id, enabled).map_err(|_| not_found())?,
            }
        }
        "actions" => {
            let actions: Vec<Action> = serde_json::from_value(body.get("actions").cloned().unwrap_or(Value::Null))
                .map_err(|e| MatrixError::bad_json(format!("actions: {e}")))?;
            match loose {
                Some(i) => {
                    stored.loose[i].1["actions"] = serde_json::to_value(actions).map_err(MatrixError::internal)?
                }
                None => stored.rules.set_actions(kind, &rule_id, actions).map_err(|_| not_found())?,
            }
        }
        other => return Err(MatrixError::unrecognized(format!("Unknown push rule attribute {other}"))),
    }
    save(&data, &user, &stored).await?;
    Ok(Json(json!({})))
}
