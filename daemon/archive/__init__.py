"""The archive: ingest, exposures and completeness, the notice log, quarantine, verify.

- :mod:`~daemon.archive.store` — header verified and fixed, the file placed (never over another);
- :mod:`~daemon.archive.ingest` — :class:`Archivist`: one transaction for catalog, notices and custody;
- :mod:`~daemon.archive.exposures` — completeness, late exposures, ``verify``;
- :mod:`~daemon.archive.quarantine` — quarantined files and their release;
- :mod:`~daemon.archive.notices` — pages of the notice log for ``GET /v1/notices``.

Notices are published from the journal by :class:`daemon.publisher.LogPublisher`.
"""
