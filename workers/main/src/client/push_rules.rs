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

use super::account_data::push_rules_content;
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

async fn load(data: &UserData, user: &AuthUser) -> Result<Ruleset, MatrixError> {
    let content = push_rules_content(data, &user.user_id).await?;
    serde_json::from_value(content["global"].clone()).map_err(MatrixError::internal)
}

async fn save(data: &UserData, user: &AuthUser, rules: &Ruleset) -> Result<(), MatrixError> {
    data.writer.put(&user.user_id, "", "m.push_rules", &json!({ "global": rules })).await?;
    Ok(())
}

fn not_found() -> MatrixError {
    MatrixError::not_found("Push rule not found")
}

fn rule_json(rules: &Ruleset, kind: RuleKind, rule_id: &str) -> Result<Value, MatrixError> {
    let all = serde_json::to_value(rules).map_err(MatrixError::internal)?;
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
    let rules = load(&data, &user).await?;
    Ok(Json(rule_json(&rules, kind(&k)?, &rule_id)?))
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
        RuleKind::Room => {
            let room = OwnedRoomId::try_from(rule_id.as_str())
                .map_err(|_| MatrixError::invalid_param("Room rule IDs are room IDs"))?;
            NewPushRule::Room(NewSimplePushRule::new(room, body.actions))
        }
        RuleKind::Sender => {
            let sender = OwnedUserId::try_from(rule_id.as_str())
                .map_err(|_| MatrixError::invalid_param("Sender rule IDs are user IDs"))?;
            NewPushRule::Sender(NewSimplePushRule::new(sender, body.actions))
        }
        _ => return Err(MatrixError::invalid_param("Unsupported push rule kind")),
    };
    let mut rules = load(&data, &user).await?;
    rules.insert(new, place.after.as_deref(), place.before.as_deref()).map_err(|e| match e {
        InsertPushRuleError::UnknownRuleId => MatrixError::not_found("The before or after rule does not exist"),
        other => MatrixError::invalid_param(other.to_string()),
    })?;
    save(&data, &user, &rules).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`.
pub(crate) async fn delete_rule(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let mut rules = load(&data, &user).await?;
    rules.remove(kind(&k)?, &rule_id).map_err(|e| match e {
        RemovePushRuleError::ServerDefault => MatrixError::invalid_param("Server-default rules cannot be deleted"),
        _ => not_found(),
    })?;
    save(&data, &user, &rules).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/{attr}` (`enabled` or `actions`).
pub(crate) async fn get_attr(
    State(data): State<UserData>,
    user: AuthUser,
    Path((s, k, rule_id, attr)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    scope(&s)?;
    let rules = load(&data, &user).await?;
    let rule = rule_json(&rules, kind(&k)?, &rule_id)?;
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
    let mut rules = load(&data, &user).await?;
    match attr.as_str() {
        "enabled" => {
            let enabled = body
                .get("enabled")
                .and_then(Value::as_bool)
                .ok_or_else(|| MatrixError::bad_json("enabled must be a boolean"))?;
            rules.set_enabled(kind, &rule_id, enabled).map_err(|_| not_found())?;
        }
        "actions" => {
            let actions: Vec<Action> = serde_json::from_value(body.get("actions").cloned().unwrap_or(Value::Null))
                .map_err(|e| MatrixError::bad_json(format!("actions: {e}")))?;
            rules.set_actions(kind, &rule_id, actions).map_err(|_| not_found())?;
        }
        other => return Err(MatrixError::unrecognized(format!("Unknown push rule attribute {other}"))),
    }
    save(&data, &user, &rules).await?;
    Ok(Json(json!({})))
}
