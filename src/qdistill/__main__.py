from qdistill.cli import main

raise SystemExit(main())
