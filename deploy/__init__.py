"""Deployment tooling: the nginx.conf renderer and the local stack runner (``deploy.stack``)."""
