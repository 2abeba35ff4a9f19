from causalprune_fast.cli import main

raise SystemExit(main())
