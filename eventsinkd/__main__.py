from eventsinkd.cli import main

raise SystemExit(main())
