"""JSON Schemas of the two RunPod REST v1 request bodies the docs generator writes (field names and types as
RunPod's OpenAPI for `POST /v1/templates` and `POST /v1/pods` declares them; only the fields used here are typed
further). additionalProperties is false: a misspelt field would be dropped silently by RunPod."""

CUDA_VERSIONS = ["11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0"]
_PORT = {"type": "string", "pattern": r"^[0-9]{1,5}/(http|tcp)$"}
_ENV = {"type": "object", "additionalProperties": {"type": "string"}}

_COMMON = {
    "name": {"type": "string", "minLength": 1},
    "imageName": {"type": "string", "minLength": 1},
    "containerDiskInGb": {"type": "integer", "minimum": 1},
    "volumeInGb": {"type": "integer", "minimum": 0},
    "volumeMountPath": {"type": "string", "pattern": "^/"},
    "ports": {"type": "array", "items": _PORT},
    "env": _ENV,
    "dockerEntrypoint": {"type": "array", "items": {"type": "string"}},
    "dockerStartCmd": {"type": "array", "items": {"type": "string"}},
    "containerRegistryAuthId": {"type": "string"},
}

TEMPLATE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name", "imageName"],
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "category": {"enum": ["NVIDIA", "AMD", "CPU"]},
        "isPublic": {"type": "boolean"},
        "isServerless": {"type": "boolean"},
        "readme": {"type": "string"},
    },
}

POD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["imageName"],
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "allowedCudaVersions": {"type": "array", "items": {"enum": CUDA_VERSIONS}, "uniqueItems": True},
        "gpuCount": {"type": "integer", "minimum": 1},
        "gpuTypeIds": {"type": "array", "items": {"type": "string"}},
        "cloudType": {"enum": ["SECURE", "COMMUNITY"]},
        "computeType": {"enum": ["GPU", "CPU"]},
        "templateId": {"type": "string"},
        "networkVolumeId": {"type": "string"},
        "interruptible": {"type": "boolean"},
        "supportPublicIp": {"type": "boolean"},
    },
}
