"""SQLite persistence of sandbox and snapshot records. This module alone owns the schema.

Records are stored as JSON next to the columns we look them up by; writes go through a worker
thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from emulator.model.file_systems import FileSystemRecord
from emulator.model.images import ImageRecord
from emulator.model.pools import PoolRecord
from emulator.model.records import SandboxRecord, SnapshotRecord

# 2: the pools table (added alone: the tables of version 1 are unchanged, so no data moves)
# 3: the images table (sandbox images built by the emulator; added alone likewise)
# 4: the file_systems table (added alone, as pools were)
SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT, status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, sandbox_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS file_systems (
    name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def load_sandboxes(self) -> list[SandboxRecord]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM sandboxes").fetchall()
        return [SandboxRecord.model_validate_json(r[0]) for r in rows]

    def load_snapshots(self) -> list[SnapshotRecord]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM snapshots").fetchall()
        return [SnapshotRecord.model_validate_json(r[0]) for r in rows]

    async def save_sandbox(self, rec: SandboxRecord) -> None:
        await asyncio.to_thread(
            self._exec,
            "INSERT OR REPLACE INTO sandboxes VALUES (?, ?, ?, ?, ?)",
            (rec.id, rec.namespace, rec.name, rec.status, rec.model_dump_json()),
        )

    async def save_snapshot(self, rec: SnapshotRecord) -> None:
        await asyncio.to_thread(
            self._exec,
            "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
            (rec.id, rec.namespace, rec.sandbox_id, rec.model_dump_json()),
        )

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    async def delete_sandbox(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await asyncio.to_thread(self._exec, "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def load_pools(self) -> list[PoolRecord]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM pools").fetchall()
        return [PoolRecord.model_validate_json(r[0]) for r in rows]

    async def save_pool(self, rec: PoolRecord) -> None:
        await asyncio.to_thread(
            self._exec, "INSERT OR REPLACE INTO pools VALUES (?, ?, ?)", (rec.id, rec.namespace, rec.model_dump_json()),
        )

    async def delete_pool(self, pool_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM pools WHERE id = ?", (pool_id,))

    def load_images(self) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM images").fetchall()
        return [ImageRecord.model_validate_json(r[0]) for r in rows]

    async def save_image(self, rec: ImageRecord) -> None:
        await asyncio.to_thread(
            self._exec, "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
            (rec.id, rec.namespace, rec.name, rec.model_dump_json()),
        )

    async def delete_image(self, image_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM images WHERE id = ?", (image_id,))
    def load_file_systems(self) -> list[FileSystemRecord]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM file_systems").fetchall()
        return [FileSystemRecord.model_validate_json(r[0]) for r in rows]

    async def save_file_system(self, rec: FileSystemRecord) -> None:
        await asyncio.to_thread(self._exec, "INSERT OR REPLACE INTO file_systems VALUES (?, ?)",
                                (rec.name, rec.model_dump_json()))

    async def delete_file_system(self, name: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM file_systems WHERE name = ?", (name,))
