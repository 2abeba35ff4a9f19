from causalprune_fast.cli.command import main

raise SystemExit(main())
