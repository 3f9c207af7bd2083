"""``python -m ops.linksim SPEC.json``: run a link simulator stand-alone."""

from ops.linksim.standalone import main

raise SystemExit(main())
