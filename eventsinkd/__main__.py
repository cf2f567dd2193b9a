from eventsinkd.cli.main import main

raise SystemExit(main())
