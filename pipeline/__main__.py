"""`python -m pipeline` is the `wem-der` command."""

from pipeline.cli import main

raise SystemExit(main())
