"""What makes an image a pod: the entrypoint (sshd, JupyterLab, /workspace, the probe at start) and the layered
Triton cache manager. Installed into every image at /opt/imagefactory/pod; see docs/pod.md."""
