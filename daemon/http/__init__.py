"""HTTP: the data server (pulls), the status page, ``/v1`` JSON for operators, and Prometheus metrics."""
