"""PURE: what the project asks of Prometheus: the PromQL behind `status.metrics`, the recording and
alert rules, the custom-metrics adapter rules and the dashboard. One source for the operator, the
Helm chart (`make manifests` renders charts/tgi-pool/files/ from here) and the local cluster."""
