"""HTTP: the data server (pulls), credentials, the status page, ``/v1`` JSON (notices too), Prometheus metrics."""
