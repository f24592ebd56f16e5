"""CA rotation: the state machine (state) and the running hub's side of it (runtime)."""
