//! The OpenAPI 3 document of the API, served at `/openapi.json` (schemathesis checks the live
//! server against it: every response must match).

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}, "description": "a task id (UUID)"})
}

/// A shardjob name of at most `max` bytes: `[A-Za-z0-9._-]` (queues 120, instances 128).
fn name_of(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "^[A-Za-z0-9._-]+$"})
}

fn name() -> Value {
    name_of(120)
}

/// The fields of one task, for the single and the batch form.
fn task_fields() -> serde_json::Map<String, Value> {
    let v = json!({
        "due_at": {"type": "string", "format": "date-time"},
        "delay_ms": {"type": "integer", "minimum": 0, "maximum": 31_622_400_000u64},
        "payload": {},
        "dedupe_key": {"type": "string", "minLength": 1, "maxLength": 512},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000}});
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A task object that has exactly one of `due_at` and `delay_ms`, plus `extra` properties.
fn task_schema(extra: &[(&str, Value)], required: &[&str]) -> Value {
    let mut props = task_fields();
    for (k, v) in extra {
        props.insert((*k).to_owned(), v.clone());
    }
    let with = |field: &str| {
        let mut req: Vec<&str> = required.to_vec();
        req.push(field);
        let mut p = props.clone();
        p.remove(if field == "due_at" {
            "delay_ms"
        } else {
            "due_at"
        });
        json!({"type": "object", "additionalProperties": false, "required": req, "properties": p})
    };
    json!({"oneOf": [with("due_at"), with("delay_ms")]})
}

fn common(mut responses: Value) -> Value {
    for (code, text) in [
        ("400", "malformed input"),
        ("401", "the bearer token is missing or wrong"),
        ("405", "the method is not allowed on this path"),
        ("503", "the store or etcd is unreachable"),
    ] {
        responses[code] = error_response(text);
    }
    responses
}

/// A cron job's execution, as the history stores it.
fn execution_schema() -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    json!({"type": "object",
        "required": ["job", "shard", "fire_time", "instance", "token", "started_at", "ended_at", "outcome"],
        "properties": {"job": {"type": "string"}, "shard": {"type": "integer"},
            "fire_time": time.clone(), "instance": {"type": "string"}, "token": {"type": "integer"},
            "started_at": time.clone(), "ended_at": time,
            "outcome": {"type": "string", "enum": ["ok", "failed", "timeout", "cancelled", "aborted"]}}})
}

/// The document; `secured`: every `/v1` route needs the bearer token (as the server is
/// configured — a document that claims auth the server does not check would be wrong).
pub fn document(secured: bool) -> Value {
    let task_ref = json!({"$ref": "#/components/schemas/Task"});
    let nullable_time = json!({"type": "string", "format": "date-time", "nullable": true});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "shardjob tasks", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Delayed tasks at volume, and read-only views of the cron side."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Execution": execution_schema(),
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "TaskIn": task_schema(&[], &[]),
                "Submit": {"oneOf": [
                    task_schema(&[("queue", name())], &["queue"]),
                    {"type": "object", "additionalProperties": false, "required": ["queue", "tasks"], "properties": {
                        "queue": name(),
                        "tasks": {"type": "array", "minItems": 1, "maxItems": 10_000,
                                  "items": {"$ref": "#/components/schemas/TaskIn"}}}}]},
                "Submitted": {"type": "object", "required": ["id", "duplicate"], "properties": {
                    "id": {"type": "string", "format": "uuid"}, "duplicate": {"type": "boolean"}}},
                "Task": {"type": "object", "required": ["id", "queue", "segment", "due_at", "status", "attempt", "created_at", "updated_at"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "queue": {"type": "string"},
                        "segment": {"type": "integer"},
                        "due_at": {"type": "string", "format": "date-time"},
                        "payload": {},
                        "status": {"type": "string", "enum": ["pending", "running", "done", "failed", "cancelled"]},
                        "attempt": {"type": "integer"},
                        "max_attempts": {"type": "integer", "nullable": true},
                        "dedupe_key": {"type": "string", "nullable": true},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "started_at": nullable_time.clone(),
                        "finished_at": nullable_time,
                        "last_error": {"type": "string", "nullable": true},
                        "token": {"type": "integer", "nullable": true},
                        "instance": {"type": "string", "nullable": true}}},
                "Attempt": {"type": "object", "required": ["task", "attempt", "instance", "token", "started_at", "ended_at", "outcome"],
                    "properties": {
                        "task": {"type": "string", "format": "uuid"},
                        "attempt": {"type": "integer"},
                        "instance": {"type": "string"},
                        "token": {"type": "integer"},
                        "started_at": {"type": "string", "format": "date-time"},
                        "ended_at": {"type": "string", "format": "date-time"},
                        "outcome": {"type": "string", "enum": ["ok", "failed", "timeout", "interrupted", "lost"]},
                        "error": {"type": "string", "nullable": true}}}
            }
        },
        "security": if secured { json!([{"bearer": []}]) } else { json!([]) },
        "paths": {
            "/v1/tasks": {
                "post": {"summary": "Submit one task or a batch", "requestBody": {"required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submit"}}}},
                    "responses": common(json!({
                        "201": ok("submitted (a batch answers {\"tasks\": [...]})", json!({"oneOf": [
                            {"$ref": "#/components/schemas/Submitted"},
                            {"type": "object", "required": ["tasks"], "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Submitted"}}}}]})),
                        "404": error_response("unknown queue"),
                        "413": error_response("the body is over the limit"),
                        "429": error_response("over this client's submission rate")}))},
                "get": {"summary": "List a queue's tasks in due order",
                    "parameters": [
                        {"name": "queue", "in": "query", "required": true, "schema": name()},
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["pending", "running", "done", "failed", "cancelled"]}},
                        {"name": "due_before", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,17}_[0-9a-f]{32}$"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": common(json!({
                        "200": ok("a page", json!({"type": "object", "required": ["tasks"], "properties": {
                            "tasks": {"type": "array", "items": task_ref.clone()},
                            "next": {"type": "string", "nullable": true}}})),
                        "404": error_response("unknown queue")}))}
            },
            "/v1/tasks/{id}": {
                "parameters": [id_param()],
                "get": {"summary": "One task", "responses": common(json!({
                    "200": ok("the task", task_ref), "404": error_response("no such task")}))},
                "delete": {"summary": "Cancel a pending task", "responses": common(json!({
                    "200": ok("what the cancel found", json!({"type": "object", "required": ["id", "outcome"], "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "outcome": {"type": "string", "enum": ["cancelled", "already_running", "already_finished"]}}})),
                    "404": error_response("no such task")}))}
            },
            "/v1/tasks/{id}/attempts": {
                "parameters": [id_param()],
                "get": {"summary": "Every attempt of a task", "responses": common(json!({
                    "200": ok("attempts in order", json!({"type": "object", "required": ["attempts"], "properties": {
                        "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}}}})),
                    "404": error_response("no such task")}))}
            },
            "/v1/executions": {
                "get": {"summary": "What one worker ran, newest first",
                    "parameters": [
                        {"name": "instance", "in": "query", "required": true, "schema": name_of(128)},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": common(json!({
                        "200": ok("attempts", json!({"type": "object", "required": ["executions"], "properties": {
                            "executions": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}}}}))}))}
            },
            "/v1/jobs": {"get": {"summary": "Every job: config, assignment, owners with tokens", "responses": common(json!({
                "200": ok("jobs", json!({"type": "object", "required": ["revision", "jobs"], "properties": {
                    "revision": {"type": "integer"}, "jobs": {"type": "object"}, "disabled": {"type": "array"}, "problems": {"type": "array"}}})),
                "404": error_response("no etcd connection configured")}))}},
            "/v1/instances": {"get": {"summary": "Live instances", "responses": common(json!({
                "200": ok("instances", json!({"type": "object", "required": ["revision", "instances"], "properties": {
                    "revision": {"type": "integer"}, "instances": {"type": "object"}}})),
                "404": error_response("no etcd connection configured")}))}},
            "/v1/leader": {"get": {"summary": "The current leader", "responses": common(json!({
                "200": ok("leader", json!({"type": "object", "required": ["revision", "leader"], "properties": {
                    "revision": {"type": "integer"}, "leader": {"type": "object", "nullable": true}}})),
                "404": error_response("no etcd connection configured")}))}},
            "/v1/history": {"get": {"summary": "A cron job's executions, newest first",
                "parameters": [
                    {"name": "job", "in": "query", "required": true, "schema": name_of(128)},
                    {"name": "shard", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 9999}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": common(json!({
                    "200": ok("executions", json!({"type": "object", "required": ["executions"], "properties": {
                        "executions": {"type": "array", "items": {"$ref": "#/components/schemas/Execution"}}}}))}))}},
            "/v1/queues": {"get": {"summary": "Every queue at a glance", "responses": common(json!({
                "200": ok("queues", json!({"type": "object", "required": ["queues"], "properties": {
                    "queues": {"type": "array", "items": {"type": "object", "required": ["queue", "segments", "by_status", "pending_due"],
                        "properties": {"queue": {"type": "string"}, "segments": {"type": "integer"},
                            "by_status": {"type": "object"}, "pending_due": {"type": "object"},
                            "lateness_p50_ms": {"type": "number"}, "lateness_p99_ms": {"type": "number"},
                            "throughput_per_s": {"type": "number"}}}}}}))}))}},
            "/": {"get": {"summary": "The read-only dashboard", "security": [],
                "responses": {"200": {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                "responses": {"200": {"description": "the document", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = super::document(true);
        for path in [
            "/v1/tasks",
            "/v1/tasks/{id}",
            "/v1/tasks/{id}/attempts",
            "/v1/executions",
            "/v1/jobs",
            "/v1/instances",
            "/v1/leader",
            "/v1/queues",
            "/v1/history",
            "/",
            "/openapi.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
        }
    }
}
