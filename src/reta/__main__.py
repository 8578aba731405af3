from reta.cli import main

raise SystemExit(main())
