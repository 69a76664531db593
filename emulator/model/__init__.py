"""The bottom layer: what a sandbox and a snapshot are, independent of HTTP, Docker and SQLite.

- `spec.SandboxSpec`: every create option once (the wire layer builds it, the manager resolves it);
- `records`: the sandbox and snapshot records the store persists and the manager moves;
- `pools`: the pool record and its warm containers;
- `states`: the status enum and the ONE table of legal transitions;
- `ids`: identifiers and name rules.

Everything imports down into this package; it imports nothing of the emulator but the leaf
`emulator.errors` (its typed errors).
"""
