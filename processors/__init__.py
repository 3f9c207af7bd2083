"""Science code run when files arrive: header checks and fixes, detector tables (pure, synchronous)."""
