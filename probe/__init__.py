"""imagefactory's probe: detect the GPU stack, decide training settings, verify it, warm Triton, smoke-train.

Runs inside every image as its acceptance gate and bare on any host (`python -m probe`). Everything imported at
package level is standard library only; torch, triton and bitsandbytes are imported lazily where needed.
"""

__version__ = "0.1.0"
# Bump when a field of the JSON document changes meaning or disappears (adding fields keeps the version).
SCHEMA_ID = "imagefactory.probe/1"
