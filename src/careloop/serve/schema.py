"""JSON Schemas written from the CDS Hooks 2.0 specification (cds-hooks.hl7.org/2.0, "CDS Service Response",
"Card Attributes", "Discovery"), strict for the objects careloop produces: every response the service sends is
validated against them in the tests."""

from __future__ import annotations

_NONEMPTY = {"type": "string", "minLength": 1}
_CODING = {
    "type": "object",
    "required": ["code"],
    "properties": {"system": _NONEMPTY, "code": _NONEMPTY, "display": _NONEMPTY},
    "additionalProperties": False,
}
_ACTION = {
    "type": "object",
    "required": ["type", "description"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["create", "update", "delete"]},
        "description": _NONEMPTY,
        "resource": {"type": "object", "required": ["resourceType"]},
        "resourceId": _NONEMPTY,
    },
    "allOf": [{"if": {"properties": {"type": {"enum": ["create", "update"]}}}, "then": {"required": ["resource"]}}],
}
_SUGGESTION = {
    "type": "object",
    "required": ["label"],
    "additionalProperties": False,
    "properties": {
        "label": _NONEMPTY,
        "uuid": _NONEMPTY,
        "isRecommended": {"type": "boolean"},
        "actions": {"type": "array", "minItems": 1, "items": _ACTION},
    },
}
_LINK = {
    "type": "object",
    "required": ["label", "url", "type"],
    "additionalProperties": False,
    "properties": {
        "label": _NONEMPTY,
        "url": {"type": "string", "pattern": "^https?://"},
        "type": {"enum": ["absolute", "smart"]},
        "appContext": _NONEMPTY,
        "autolaunchable": {"type": "boolean"},
    },
}
CARD = {
    "type": "object",
    "required": ["uuid", "summary", "indicator", "source"],
    "additionalProperties": False,
    "properties": {
        "uuid": {"type": "string", "pattern": "^[0-9a-f-]{36}$"},
        "summary": {"type": "string", "minLength": 1, "maxLength": 139},
        "detail": _NONEMPTY,
        "indicator": {"enum": ["info", "warning"]},  # the spec allows "critical"; careloop never sends it
        "source": {
            "type": "object",
            "required": ["label"],
            "additionalProperties": False,
            "properties": {
                "label": _NONEMPTY,
                "url": {"type": "string", "pattern": "^https?://"},
                "icon": _NONEMPTY,
                "topic": _CODING,
            },
        },
        "suggestions": {"type": "array", "minItems": 1, "items": _SUGGESTION},
        "selectionBehavior": {"enum": ["at-most-one", "any"]},
        "overrideReasons": {"type": "array", "minItems": 1, "items": {**_CODING, "required": ["code", "display"]}},
        "links": {"type": "array", "minItems": 1, "items": _LINK},
    },
    "dependentRequired": {"suggestions": ["selectionBehavior"]},
}
RESPONSE = {
    "type": "object",
    "required": ["cards"],
    "additionalProperties": False,
    "properties": {"cards": {"type": "array", "items": CARD}, "systemActions": {"type": "array", "items": _ACTION}},
}
DISCOVERY = {
    "type": "object",
    "required": ["services"],
    "additionalProperties": False,
    "properties": {
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["hook", "description", "id"],
                "properties": {
                    "hook": _NONEMPTY,
                    "title": _NONEMPTY,
                    "description": _NONEMPTY,
                    "id": _NONEMPTY,
                    "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
                    "usageRequirements": _NONEMPTY,
                },
            },
        }
    },
}
