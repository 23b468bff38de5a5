from search._cli import main

raise SystemExit(main())
