from dive.cli import main

raise SystemExit(main())
