"""The workbench's Pilot, snapshot and typing tests (a package, so its conftest and helpers
never shadow the top-level tests' modules of the same name)."""
