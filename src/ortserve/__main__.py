from ortserve.cli import main

raise SystemExit(main())
