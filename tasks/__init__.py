"""The work of every stage as plain, testable functions (all I/O lives here)."""
