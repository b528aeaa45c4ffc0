"""`python -m wem_der` is the `wem-der` command."""

from wem_der.cli.main import main

raise SystemExit(main())
