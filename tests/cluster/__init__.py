"""Several nodes behind a load balancer on one bucket (deploy/cluster.py, issue 14)."""
