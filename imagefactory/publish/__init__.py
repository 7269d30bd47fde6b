"""Publishing: gated images to a registry (immutable + floating tags), supported-tags and deploy docs."""
