"""Ray Serve over real HTTP on 127.0.0.1 (a package: its fixtures live as long as its tests)."""
