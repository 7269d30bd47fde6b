"""Execution: OS bases, BuildKit builds, the gate in the image, local tags. Shells out only through imagefactory.run."""
